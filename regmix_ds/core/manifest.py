"""`manifest.json`: what `prepare` produced, and the only way later stages find token shards.

Layout (paths relative to the manifest's directory, or absolute for shards outside it):

    {"format": "regmix-ds/manifest-2",
     "tokenizer": {"path": "...", "vocab_size": V, "eos_token_id": E},
     "seed": S,
     "domains": {"<name>": {"train": SPLIT, "valid": SPLIT, "inputs_hash": "..."}},
     "targets": {"<name>": {"valid": SPLIT, "inputs_hash": "..."}}}
    SPLIT = {"tokens": N, "documents": D, "prefixes": [SHARD, ...]}
    SHARD = {"prefix": "data/<name>_train", "tokens": n, "documents": d}

A split is one or more Megatron-core indexed datasets (`<prefix>.bin` + `<prefix>.idx`), read
one after the other as one stream. A SHARD covers the first `documents` documents of its prefix
(`tokens` tokens): all of them, unless `prepare` held the rest out for validation. A
"regmix-ds/manifest-1" file (one prefix per split: SPLIT = {"prefix", "tokens", "documents"})
still loads; either form of SPLIT is read under either format.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json, write_json_atomic
from regmix_ds.core.layout import DataDir
from regmix_ds.core.names import check_safe_name

FORMAT = "regmix-ds/manifest-2"
READABLE_FORMATS = ("regmix-ds/manifest-1", FORMAT)


@dataclass(frozen=True)
class Shard:
    """One Megatron prefix of a split: its first `documents` documents, `tokens` tokens long."""

    prefix: Path
    tokens: int
    documents: int

    def to_json(self, base: Path) -> dict:
        """The manifest's SHARD entry: `prefix` relative to `base` when inside it, else absolute."""
        return {"prefix": portable_path(self.prefix, base), "tokens": self.tokens, "documents": self.documents}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], base: Path) -> Shard:
        """A SHARD entry, `prefix` resolved against `base` (an absolute one stays as it is)."""
        return cls(base / str(entry["prefix"]), int(entry["tokens"]), int(entry["documents"]))


@dataclass(frozen=True, init=False)
class Split:
    """One split of one domain: the documents of its shards, read one after the other as one stream.

    `Split(prefix, tokens, documents)` is the one-prefix split `prepare` writes for raw text;
    `Split.of(shards)` any number of prefixes (existing Megatron shards, per-file shards).
    """

    shards: tuple[Shard, ...]

    def __init__(self, prefix: str | os.PathLike, tokens: int, documents: int):
        object.__setattr__(self, "shards", (Shard(Path(prefix), int(tokens), int(documents)),))

    @classmethod
    def of(cls, shards: Iterable[Shard]) -> Split:
        """A split of these shards, in this order (at least one)."""
        shards = tuple(shards)
        if not shards:
            raise ValueError("a split needs at least one shard")
        split = object.__new__(cls)
        object.__setattr__(split, "shards", shards)
        return split

    @property
    def prefix(self) -> Path:
        """The prefix of a one-prefix split (code that reads a split of several goes through `shards`)."""
        if len(self.shards) != 1:
            raise ValueError(f"this split has {len(self.shards)} prefixes; read its shards")
        return self.shards[0].prefix

    @property
    def tokens(self) -> int:
        return sum(shard.tokens for shard in self.shards)

    @property
    def documents(self) -> int:
        return sum(shard.documents for shard in self.shards)

    def to_json(self, base: Path) -> dict:
        """The manifest's SPLIT entry (totals, then every shard), prefixes as in `Shard.to_json`."""
        return {"tokens": self.tokens, "documents": self.documents,
                "prefixes": [shard.to_json(base) for shard in self.shards]}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], base: Path) -> Split:
        """A SPLIT entry of either layout: `{"prefixes": [...]}` or manifest-1's `{"prefix", ...}`."""
        if "prefixes" not in entry:
            return cls.of([Shard.from_json(entry, base)])
        split = cls.of(Shard.from_json(shard, base) for shard in entry["prefixes"])
        if (split.tokens, split.documents) != (int(entry["tokens"]), int(entry["documents"])):
            raise ValueError(f"totals {entry['tokens']} tokens, {entry['documents']} documents do not add up "
                             f"over its prefixes ({split.tokens}, {split.documents})")
        return split


def portable_path(path: Path, base: Path) -> str:
    """`path` relative to `base` when it lies inside it (the work dir may move), else absolute."""
    absolute, root = os.path.abspath(path), os.path.abspath(base)
    return os.path.relpath(absolute, root) if absolute.startswith(root + os.sep) else absolute


@dataclass(frozen=True)
class Manifest:
    """The prepared corpus: per-domain train/valid shards, target sets and the tokenizer."""

    path: Path
    tokenizer: Mapping[str, Any]
    seed: int
    train: Mapping[str, Split]
    """Domain -> its train split, in the order domains were configured."""
    valid: Mapping[str, Split]
    """Domain or target name -> its validation split (domains first, then targets)."""
    inputs_hash: Mapping[str, str]

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self.train)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(name for name in self.valid if name not in self.train)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def tokenizer_path(self) -> str:
        """A local directory (absolute) or a hub name, as `prepare` used it."""
        self.check_tokenizer()
        local = self.path.parent / str(self.tokenizer["path"])
        return str(local) if local.exists() else str(self.tokenizer["path"])

    def token_prior(self) -> dict[str, float]:
        """Each domain's share of all training tokens: RegMix's prior for the swarm."""
        total = sum(split.tokens for split in self.train.values())
        return {name: split.tokens / total for name, split in self.train.items()}

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Read and check a manifest.json; a wrong format, malformed entry or unsafe name is a RegmixError."""
        path = Path(path)
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
            raise RegmixError(path, f"not a regmix-ds manifest (expected format {FORMAT!r})")
        try:
            domains, targets = data["domains"], data.get("targets", {})
            base = path.parent
            train = {name: Split.from_json(entry["train"], base) for name, entry in domains.items()}
            valid = {name: Split.from_json(entry["valid"], base) for name, entry in {**domains, **targets}.items()}
            hashes = {name: str(entry.get("inputs_hash", "")) for name, entry in {**domains, **targets}.items()}
            tokenizer = dict(data["tokenizer"])
            int(tokenizer["vocab_size"])
            seed = int(data["seed"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RegmixError(path, f"malformed manifest ({type(err).__name__}: {err})") from None
        for name in valid:
            check_safe_name(name, path, "domain name")
        if not train:
            raise RegmixError(path, "manifest lists no domains")
        manifest = cls(path, tokenizer, seed, train, valid, hashes)
        manifest.check_against_stamps()
        return manifest

    def check_against_stamps(self) -> None:
        """Each domain's splits must be the ones `prepare` recorded in its stamp beside the manifest
        (when there is one): a hand edit that swapped two domains' shards would train each domain's
        weight on the other's tokens, silently."""
        data_dir = DataDir(self.path.parent)
        for name in self.valid:
            stamp_path = data_dir.stamp(name)
            if not stamp_path.is_file():
                continue
            try:
                recorded = {kind: Split.from_json(entry, data_dir.path)
                            for kind, entry in read_json(stamp_path)["splits"].items()}
            except (KeyError, TypeError, ValueError, AttributeError, RegmixError):
                continue  # not a stamp we can read: prepare rebuilds it; nothing to compare with
            listed = {"valid": self.valid[name], **({"train": self.train[name]} if name in self.train else {})}
            for kind, split in listed.items():
                if kind in recorded and recorded[kind] != split:
                    raise RegmixError(self.path, f"domain {name!r}: its {kind} shards are not the ones prepare "
                                                 f"recorded in {stamp_path.name} (edited by hand? run prepare again)")

    def check_tokenizer(self) -> None:
        """Refuse a tokenizer path that names a local directory (relative or absolute, as `prepare`
        writes one) that is not there; a hub name (`org/name`) is the hub's to answer."""
        path = str(self.tokenizer["path"])
        looks_local = path.startswith((".", "/")) or path.count("/") > 1
        if looks_local and not (self.path.parent / path).is_dir():
            raise RegmixError(self.path, f"tokenizer {path} not found (relative to the manifest)")

    def save(self) -> None:
        """Write the manifest to its `path` atomically; a file that already says the same is left untouched."""
        content = self.content()
        with contextlib.suppress(RegmixError):
            if self.path.exists() and read_json(self.path) == content:
                return
        write_json_atomic(self.path, content)

    def content(self) -> dict:
        """The manifest as its JSON file holds it (prefixes as in `Shard.to_json`)."""
        base = self.path.parent

        def entry(name: str) -> dict:
            return {"valid": self.valid[name].to_json(base), "inputs_hash": self.inputs_hash.get(name, "")}

        return {
            "format": FORMAT,
            "tokenizer": dict(self.tokenizer),
            "seed": self.seed,
            "domains": {n: {"train": self.train[n].to_json(base), **entry(n)} for n in self.domains},
            "targets": {n: entry(n) for n in self.targets},
        }
