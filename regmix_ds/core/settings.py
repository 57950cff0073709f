"""Settings: each one declared once, as a dataclass field, and everything else derived from it.

A setting is a field of a frozen dataclass that subclasses `Settings`: its type (a `Literal`
for a choice), its default, and the docstring written under it. From that one declaration come

* its YAML key: `load_section` reads a mapping strictly (unknown keys, wrong types and unknown
  choices are one-line errors naming the file and the key);
* its command-line flag: `add_flags` adds `--min-weight` for `min_weight`, with the docstring
  as help; `flags_given` reads back the flags a user gave and `apply_flags` lays them over
  a section (so a flag overrides the YAML value, which overrides the default);
* its row of the README's reference table: `reference_rows` (`regmix-ds reference` prints it,
  and a test keeps the README equal to it).

Checks live in each class's `validate`, through `require(condition, field, problem)`. A failed
check raises `Invalid`, which carries the field's name, so the code that built the settings
names the place the way the user wrote it: `exp.yaml: swarm.n` for a YAML key, `--n` for a
flag. Every float setting must be finite and every integer must fit in 64 bits, whatever the
class checks besides.

Why not tyro or jsonargparse (torchtitan's and litgpt's choices): both are built around the
command line and format errors their own way, over several lines; we need the same dataclass
read strictly from a YAML section and overridden by flags, with our one-line `file: key:
problem` errors and exit code 2 everywhere. That is about two hundred lines, written here once.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import inspect
import itertools
import math
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal, TypeVar

from regmix_ds.core.errors import RegmixError

T = TypeVar("T")
INT64 = 2**63


class Invalid(RegmixError):
    """A setting with a value its class refuses; `field` names it for whoever built the settings."""

    def __init__(self, owner: type, field: str, problem: str):
        self.owner, self.field = owner, field
        super().__init__(owner.name_of(field), problem)


class Settings:
    """Base of every settings dataclass: the choice, range and cross-field checks, and field naming.

    `SECTION` is the exp.yaml section the class is read from (`swarm`); a class without one is
    a command line's (`train.py`), whose fields are named by their flags.
    """

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            self._check_kind(field.name, getattr(self, field.name), hints_of(type(self))[field.name], field)
        self.validate()

    def validate(self) -> None:
        """Range and cross-field checks of the subclass; raise through `require`."""

    def require(self, condition: bool, field: str, problem: str) -> None:
        """Raise `Invalid` for `field` unless `condition` holds."""
        if not condition:
            raise Invalid(type(self), field, problem)

    @classmethod
    def name_of(cls, field: str) -> str:
        """How a user refers to `field`: `swarm.n` in exp.yaml, `--n` on a command line."""
        return f"{cls.SECTION}.{field}" if cls.SECTION else flag_names(cls, field)[0]

    def _check_kind(self, name: str, value: Any, hint: Any, field: dataclasses.Field) -> None:
        hint = unwrap_optional(hint)[0]
        if value is None:
            return
        choices = literal_choices(hint)
        if choices is not None:
            self.require(value in choices, name,
                         f"unknown {name.replace('_', ' ')} {value!r} (known: {', '.join(choices)})")
        elif hint is float and isinstance(value, float) and not field.metadata.get("infinite"):
            self.require(math.isfinite(value), name, f"must be a finite number, got {value!r}")
        elif hint is int and isinstance(value, int) and not isinstance(value, bool):
            self.require(-INT64 <= value < INT64, name, f"{value} does not fit in 64 bits")
            if name == "seed" or name.endswith("_seed"):  # numpy refuses negative seeds, with a traceback
                self.require(value >= 0, name, f"a seed must be >= 0, got {value}")


# ---- type hints ------------------------------------------------------------------------------------


@functools.cache
def hints_of(cls: type) -> dict[str, Any]:
    """The resolved type hint of every field of `cls` (cached: classes do not change)."""
    return typing.get_type_hints(cls)


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if len(options) == 1:
            return options[0], True
    return hint, False


def literal_choices(hint: Any) -> tuple[str, ...] | None:
    """The allowed values of a `Literal[...]` hint, else None."""
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else None


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    for name, hint in hints_of(cls).items():
        choices = literal_choices(unwrap_optional(hint)[0])
        if choices and name in docs:
            docs[name] += f" One of: {', '.join(choices)}."
    return docs


def is_internal(field: dataclasses.Field) -> bool:
    """Fields set by the program, not by the user (no YAML key, no flag)."""
    return bool(field.metadata.get("internal"))


# ---- YAML sections ---------------------------------------------------------------------------------


def locate(file: object, key: str) -> str:
    """`exp.yaml: swarm.n`, or just the key when there is no file."""
    return f"{file}: {key}" if file else key


def load_section(cls: type[T], data: Any, file: object = "", key: str = "") -> T:
    """Build settings class `cls` from a YAML/JSON mapping at `key` of `file`, strictly."""
    where = locate(file, key) if key else str(file)
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RegmixError(where, "expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls) if not is_internal(f)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise RegmixError(where, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = hints_of(cls)
    prefix = f"{key}." if key else ""
    kwargs = {name: _coerce(value, hints[name], file, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except Invalid as err:
        raise RegmixError(locate(file, prefix + err.field), err.problem) from None
    except TypeError as err:  # a required key is missing
        missing = str(err).split(": ", 1)[-1].replace("'", "")
        raise RegmixError(where, f"missing key(s) {missing}") from None


def _coerce(value: Any, hint: Any, file: object, key: str) -> Any:
    """`value` as type `hint`: checked, never silently converted (but int -> float)."""
    hint, optional = unwrap_optional(hint)
    where = locate(file, key)
    if value is None:
        if optional:
            return None
        raise RegmixError(where, "must be set (got an empty value)")
    if literal_choices(hint) is not None:
        return value  # checked by Settings, with the list of known choices
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, float):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RegmixError(where, f"expected {hint.__name__}, got {value!r}")
        return value
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)):
            raise RegmixError(where, f"expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(v, item, file, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return load_section(hint, value, file, key)
    if origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise RegmixError(where, f"expected a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {str(k): _coerce(v, item, file, f"{key}.{k}") for k, v in value.items()}
    return value


# ---- command-line flags -----------------------------------------------------------------------------


def bounded(kind: type, low: float | None = None, high: float | None = None, above: float | None = None
            ) -> Callable[[str], Any]:
    """An argparse `type` for a flag outside any settings section: an int or finite float with
    `low <= value <= high` (and `value > above`), else argparse's one-line error naming the flag."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text[:40]!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:,}, got {text}")
        return value

    return parse


def flag_names(cls: type, field: str) -> tuple[str, ...]:
    """`--min-weight` for `min_weight`, or the field's own `flags` (e.g. `--deepspeed_config`)."""
    declared = {f.name: f for f in dataclasses.fields(cls)}[field].metadata.get("flags")
    return tuple(declared) if declared else (f"--{field.replace('_', '-')}",)


def _flag_kind(hint: Any) -> Any:
    """The argparse `type` for a field, "bool", "pairs" (dict[str, float]) or None (YAML only)."""
    hint, _ = unwrap_optional(hint)
    if literal_choices(hint) is not None or hint is str:
        return str
    if hint in (int, float):
        return hint
    if hint is bool:
        return "bool"
    if typing.get_origin(hint) in (dict, Mapping, typing.Mapping) and typing.get_args(hint)[1] is float:
        return "pairs"
    return None


def default_text(field: dataclasses.Field) -> str:
    """A field's default as the reference and --help show it."""
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        return "(required)"
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if value is None or value in ({}, ()):
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:,}" if isinstance(value, int) and abs(value) >= 10_000 else str(value)


def add_flags(parser: argparse.ArgumentParser, cls: type, *, overrides: bool, skip: tuple[str, ...] = ()) -> None:
    """One flag per flag-able field of `cls`, help from its docstring.

    With `overrides` every flag is optional (an unset one leaves the section's value alone);
    otherwise a field without a default is a required flag.
    """
    docs, hints = field_docs(cls), hints_of(cls)
    for field in dataclasses.fields(cls):
        kind = _flag_kind(hints[field.name])
        if kind is None or is_internal(field) or field.name in skip:
            continue
        choices = literal_choices(unwrap_optional(hints[field.name])[0])
        required = not overrides and default_text(field) == "(required)"
        help_text = docs.get(field.name, "") + ("" if required else f" (default: {default_text(field)})")
        options: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text.replace("%", "%%")}
        if kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=str if kind == "pairs" else kind, required=required,
                           metavar="{" + ",".join(choices) + "}" if choices
                           else ("D=W,..." if kind == "pairs" else None))
        parser.add_argument(*flag_names(cls, field.name), **options)


def flags_given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of `cls` the user gave as flags, typed (`--max-weight a=0.5` -> {"a": 0.5})."""
    given = {}
    for field in dataclasses.fields(cls):
        value = getattr(args, field.name, None)
        if value is None or is_internal(field):
            continue
        if _flag_kind(hints_of(cls)[field.name]) == "pairs":
            value = dict(parse_pairs(value, flag_names(cls, field.name)[0]))
        given[field.name] = value
    return given


def apply_flags(cls: type[T], given: Mapping[str, Any], base: T | None = None, file: object = "") -> T:
    """`cls(**given)`, or `base` (a section read from `file`) with `given` laid over it."""
    with named_by_flags(cls, given, file):
        return dataclasses.replace(base, **given) if base is not None else cls(**given)


@contextlib.contextmanager
def named_by_flags(cls: type, given: Mapping[str, Any], file: object = "") -> Iterator[None]:
    """A setting of `cls` refused inside (when built, or later by the stage using it) is named by
    its flag when the user gave it as one, else by its YAML key in `file`."""
    try:
        yield
    except Invalid as err:
        if err.owner is not cls:
            raise
        if err.field in given:
            raise RegmixError(flag_names(cls, err.field)[0], err.problem) from None
        raise RegmixError(locate(file, cls.name_of(err.field)), err.problem) from None


def parse_pairs(text: str, where: object, default: float | None = None) -> list[tuple[str, float]]:
    """`a=0.7,b=0.3` -> [(a, 0.7), (b, 0.3)]; a bare name gets `default` (an error without one)."""
    pairs: list[tuple[str, float]] = []
    for part in str(text).split(","):
        name, sep, number = (piece.strip() for piece in part.partition("="))
        if not name:
            raise RegmixError(where, f"empty name in {text!r}")
        if not sep and default is None:
            raise RegmixError(where, f"{name!r} needs a value ({name}=NUMBER)")
        try:
            value = float(number) if sep else float(default)
        except ValueError:
            raise RegmixError(where, f"value of {name!r} is not a number: {number!r}") from None
        if not math.isfinite(value):
            raise RegmixError(where, f"value of {name!r} is not finite")
        pairs.append((name, value))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise RegmixError(where, f"a name appears twice in {text!r}")
    return pairs


# ---- the reference table ------------------------------------------------------------------------------


def reference_rows(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, meaning) for every setting of `cls`, nested sections expanded."""
    rows: list[tuple[str, str, str]] = []
    docs, hints = field_docs(cls), hints_of(cls)
    for field in dataclasses.fields(cls):
        if is_internal(field):
            continue
        key, hint = f"{prefix}{field.name}", unwrap_optional(hints[field.name])[0]
        value_type = typing.get_args(hint)[1] if typing.get_origin(hint) in (dict, Mapping) else None
        if dataclasses.is_dataclass(hint):
            rows += reference_rows(hint, key + ".")
            continue
        rows.append((f"`{key}`", default_text(field), docs.get(field.name, "")))
        if dataclasses.is_dataclass(value_type):
            rows += reference_rows(value_type, key + ".<name>.")
    return rows


def flag_rows(cls: type, skip: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(flags, default, meaning) for every flag `add_flags` gives `cls`."""
    docs, hints = field_docs(cls), hints_of(cls)
    return [
        (" ".join(f"`{name}`" for name in flag_names(cls, f.name)), default_text(f), docs.get(f.name, ""))
        for f in dataclasses.fields(cls)
        if _flag_kind(hints[f.name]) is not None and not is_internal(f) and f.name not in skip
    ]


def markdown_table(header: tuple[str, str, str], rows: list[tuple[str, str, str]]) -> str:
    """Rows as a markdown table (pipes inside cells escaped)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|---|---|---|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)
