"""Experiment configuration (`exp.yaml`): frozen dataclasses of simple types that validate themselves.

One YAML file drives every stage. Each stage owns one section; a section is parsed by
`section_from_dict`, which rejects unknown keys and wrong types with a one-line error naming
the file and the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from regmix_ds.errors import RegmixError
from regmix_ds.files import check_safe_name, read_mapping

T = TypeVar("T")


def section_from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking key names and scalar types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RegmixError(where, "expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RegmixError(where, f"unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise RegmixError(where, str(err)) from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(h for h in options if h is not type(None))
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, float):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RegmixError(where, f"expected {hint.__name__}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise RegmixError(where, f"expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return section_from_dict(hint, value, where)
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise RegmixError(where, f"expected a mapping, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2:
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    return value


@dataclass(frozen=True)
class DomainSource:
    """Where one domain's raw text lives."""

    paths: tuple[str, ...]
    """jsonl / json / parquet / txt files, or one local HF dataset directory (`save_to_disk`)."""
    text_field: str = "text"
    """The column holding the document text (ignored for .txt: one document per line)."""


@dataclass(frozen=True)
class DataConfig:
    """The `data:` section, read by `regmix-ds prepare`."""

    domains: dict[str, DomainSource]
    """Domain name -> its raw text. Names become file names and mixture keys."""
    tokenizer: str = "tokenizer"
    """A local tokenizer directory (relative to the config file) or a hub name."""
    targets: dict[str, DomainSource] = field(default_factory=dict)
    """Extra validation-only sets (for example the target you optimise the mixture for)."""
    valid_documents: int = 200
    """Documents per domain held out (from the end of a seeded shuffle) for validation."""
    seed: int = 0
    """Seed of the train/valid split shuffle."""
    num_proc: int = 2
    """Processes for `datasets.map` tokenisation."""
    vocab_size: int = 4096
    """Vocabulary of the tokenizer trained by `prepare --train-tokenizer`."""

    def __post_init__(self) -> None:
        if not self.domains:
            raise RegmixError("data.domains", "no domains configured")
        for name in [*self.domains, *self.targets]:
            check_safe_name(name, "data.domains", "domain name")
        clash = sorted(set(self.domains) & set(self.targets))
        if clash:
            raise RegmixError("data.targets", f"name(s) also used as a domain: {', '.join(clash)}")
        if self.valid_documents < 1:
            raise RegmixError("data.valid_documents", "must be >= 1")
        if self.num_proc < 1:
            raise RegmixError("data.num_proc", "must be >= 1")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment. Every relative path in it resolves against the config file's directory."""

    work_dir: str
    """Where every stage writes: data/, swarm/, proxies/, fit/, best.json."""
    data: DataConfig
    path: str = ""
    """The file it was read from (set by `load`, used in error messages)."""

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExperimentConfig":
        raw = read_mapping(path)
        where = str(path)
        if "work_dir" not in raw:
            raise RegmixError(where, "missing key work_dir")
        work_dir = Path(path).parent / str(raw["work_dir"])
        config = section_from_dict(cls, {**raw, "work_dir": str(work_dir)}, where)
        return dataclasses.replace(config, path=where)

    @property
    def root(self) -> Path:
        return Path(self.work_dir)

    def resolve(self, relative: str) -> Path:
        """A path from the config, taken relative to the config file's directory."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.path).parent / p
