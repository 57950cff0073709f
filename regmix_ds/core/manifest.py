"""`manifest.json`: what `prepare` produced, and the only way later stages find token shards.

Layout (paths relative to the manifest's directory):

    {"format": "regmix-ds/manifest-1",
     "tokenizer": {"path": "...", "vocab_size": V, "eos_token_id": E},
     "seed": S,
     "domains": {"<name>": {"train": SPLIT, "valid": SPLIT, "inputs_hash": "..."}},
     "targets": {"<name>": {"valid": SPLIT, "inputs_hash": "..."}}}
    SPLIT = {"prefix": "data/<name>_train", "tokens": N, "documents": D}

`prefix` names a Megatron-core indexed dataset: `<prefix>.bin` + `<prefix>.idx`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json, write_json_atomic
from regmix_ds.core.names import check_safe_name

FORMAT = "regmix-ds/manifest-1"


@dataclass(frozen=True)
class Split:
    """One tokenized split of one domain."""

    prefix: Path
    tokens: int
    documents: int

    def to_json(self, base: Path) -> dict:
        """The manifest's SPLIT entry, `prefix` relative to `base`."""
        return {"prefix": os.path.relpath(self.prefix, base), "tokens": self.tokens, "documents": self.documents}


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
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RegmixError(path, f"not a regmix-ds manifest (expected format {FORMAT!r})")
        try:
            domains, targets = data["domains"], data.get("targets", {})
            base = path.parent
            train = {name: _split(entry["train"], base) for name, entry in domains.items()}
            valid = {name: _split(entry["valid"], base) for name, entry in {**domains, **targets}.items()}
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
        return cls(path, tokenizer, seed, train, valid, hashes)

    def save(self) -> None:
        """Write the manifest to its `path` atomically, split prefixes relative to its directory."""
        base = self.path.parent

        def entry(name: str) -> dict:
            return {"valid": self.valid[name].to_json(base), "inputs_hash": self.inputs_hash.get(name, "")}

        write_json_atomic(
            self.path,
            {
                "format": FORMAT,
                "tokenizer": dict(self.tokenizer),
                "seed": self.seed,
                "domains": {n: {"train": self.train[n].to_json(base), **entry(n)} for n in self.domains},
                "targets": {n: entry(n) for n in self.targets},
            },
        )


def _split(entry: Mapping[str, Any], base: Path) -> Split:
    return Split(prefix=base / str(entry["prefix"]), tokens=int(entry["tokens"]), documents=int(entry["documents"]))
