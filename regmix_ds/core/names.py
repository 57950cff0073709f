"""Names that become file names, CSV headers and mixture keys, and how table columns map to them.

A domain name ends up in paths (`data/<name>_train.bin`), CSV headers (`w:<name>`) and JSON
keys, so it is checked once, here, against one rule. Result tables from RegMix and from us
spell the same domain differently (`train_the_pile_pile_cc`, `metric/the_pile_pile_cc_val_loss`,
`w:pile_cc`, `loss:pile_cc`); `weight_name` and `loss_name` reduce each spelling to one short
name, the same way everywhere (weight columns, loss columns, prior keys, `--target` names):

* weight column or prior key: `w:<name>` -> `<name>`; otherwise strip a leading `train_`,
  then a leading `the_pile_unzip_` or `the_pile_`;
* loss column: `loss:<name>` -> `<name>`; otherwise strip a leading `metric/`, a trailing
  `_val_loss`, a leading `valid_`, then a leading `the_pile_unzip_` or `the_pile_`.
"""
from __future__ import annotations

import re

from regmix_ds.core.errors import RegmixError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""Matched in full (`fullmatch`): `$` would also accept a name ending in a newline."""
WEIGHT_PREFIX = "w:"
LOSS_PREFIX = "loss:"
CORPUS_PREFIXES = ("the_pile_unzip_", "the_pile_")


def unsafe_name_problem(name: object, what: str = "name") -> str | None:
    """Why `name` cannot be used as a file name or key, or None when it can."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        return f"invalid {what} {name!r}: use letters, digits, '_', '.', '-'"
    return None


def check_safe_name(name: object, where: object, what: str = "name") -> str:
    """Reject names that could leave the work directory or break file names (`../x`, `a/b`, `a\\n`)."""
    problem = unsafe_name_problem(name, what)
    if problem:
        raise RegmixError(where, problem)
    return name


def _strip_corpus(name: str) -> str:
    for prefix in CORPUS_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def weight_name(column: str) -> str:
    """The domain a weight column (or prior key) belongs to, by the module's name rule."""
    if column.startswith(WEIGHT_PREFIX):
        return column[len(WEIGHT_PREFIX):]
    return _strip_corpus(column.removeprefix("train_"))


def loss_name(column: str) -> str:
    """The validation set a loss column belongs to, by the module's name rule."""
    if column.startswith(LOSS_PREFIX):
        return column[len(LOSS_PREFIX):]
    name = column.removeprefix("metric/").removesuffix("_val_loss").removeprefix("valid_")
    return _strip_corpus(name)
