"""Export: the chosen mixture in the forms Megatron-LM (and Megatron-DeepSpeed) takes.

Megatron blends per file prefix, not per domain, so a domain's weight is split over its train
prefixes in proportion to the tokens each contributes: every token of a domain is then equally
likely to be drawn, and the weights of a domain's prefixes add up to its weight in the mixture.
Prefixes are absolute, whatever the current directory. Zero-weight domains (and empty prefixes)
are left out (Megatron would still build their indices); weights keep full float precision and
Megatron normalises them itself. The forms, each parsed by Megatron's `get_blend_from_list`:

- the inline `--data-path` list, `weight prefix weight prefix ...` (`megatron_data_path`);
- the same words in a file, for `--data-args-path` (`data_args.txt`);
- `--per-split-data-args-path` JSON (`per_split_data_args.json`): `{"train": [...], "valid":
  [...], "test": null}`, the valid blend the same domain weights over the domains' validation
  prefixes (Megatron reads all three keys; null is no blend).

`--split`: given `--data-path` without `--split`, Megatron uses its legacy 969,30,1 and carves
validation and test out of every train prefix; `--data-args-path` needs `--split` given; a
per-split file must come without one. `notes` says so, with how many epochs of each domain
a run of `target_tokens` reads.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import write_text_atomic
from regmix_ds.core.layout import MegatronDir
from regmix_ds.core.manifest import Manifest, Split
from regmix_ds.core.mixture import Mixture
from regmix_ds.data.indexed import read_header

FORMATS = ("megatron",)
TRAIN_ONLY_SPLIT = "100,0,0"


@dataclass(frozen=True)
class BlendEntry:
    """One prefix of a Megatron blend and its weight, with the domain it belongs to."""

    domain: str
    weight: float
    prefix: str


def megatron_blend(mixture: Mixture, manifest: Manifest, kind: str = "train") -> list[BlendEntry]:
    """Every prefix of the mixture's domains (train or valid splits, manifest order) with weight
    domain weight x prefix tokens / domain tokens; zero weights left out."""
    mixture.check_domains(manifest.domains, mixture.source)
    splits = manifest.train if kind == "train" else manifest.valid
    entries: list[BlendEntry] = []
    for domain in manifest.domains:
        weight, split = mixture.weights[domain], splits[domain]
        if weight > 0 and split.tokens == 0:
            raise RegmixError(manifest.path, f"domain {domain!r} has weight {weight:g} but no {kind} tokens")
        for shard in split.shards if weight > 0 else ():
            prefix = os.path.abspath(shard.prefix)
            if any(c.isspace() for c in prefix):
                raise RegmixError(manifest.path,
                                  f"prefix of {domain!r} contains whitespace: it cannot be one --data-path word")
            if shard.tokens:
                entries.append(BlendEntry(domain, weight * (shard.tokens / split.tokens), prefix))
    return entries


def words(entries: list[BlendEntry]) -> list[str]:
    """`[w1, prefix1, w2, prefix2, ...]`, weights in full precision."""
    return [word for entry in entries for word in (repr(entry.weight), entry.prefix)]


def megatron_data_path(mixture: Mixture, manifest: Manifest) -> list[str]:
    """The `--data-path` words: every train prefix of every domain with a positive weight."""
    return words(megatron_blend(mixture, manifest))


def write_megatron_files(mixture: Mixture, manifest: Manifest, out: MegatronDir) -> list[Path]:
    """`data_args.txt` (for --data-args-path) and `per_split_data_args.json` (for
    --per-split-data-args-path), each written atomically; returns their paths."""
    train = megatron_data_path(mixture, manifest)
    valid = words(megatron_blend(mixture, manifest, "valid"))
    write_text_atomic(out.data_args, " ".join(train) + "\n")
    write_text_atomic(out.per_split_data_args,
                      json.dumps({"train": train, "valid": valid, "test": None}, indent=2) + "\n")
    return [out.data_args, out.per_split_data_args]


def epochs(mixture: Mixture, manifest: Manifest, target_tokens: int) -> dict[str, float]:
    """Passes over each domain's train tokens (from the manifest) in a run of `target_tokens`."""
    return {d: mixture.weights[d] * target_tokens / manifest.train[d].tokens if manifest.train[d].tokens else 0.0
            for d in manifest.domains}


def notes(mixture: Mixture, manifest: Manifest, target_tokens: int | None, files: list[Path]) -> list[str]:
    """What a Megatron user needs to know beside the list: --split for each form, each domain's
    epochs at `target_tokens`, and validation documents Megatron would train on."""
    lines = [f"--data-path: add --split {TRAIN_ONLY_SPLIT} to train on the whole blend (without it Megatron "
             "uses 969,30,1 and holds 3.1% of every prefix out for validation and test)"]
    if files:
        data_args, per_split = files
        lines += [f"--data-args-path {data_args} --split {TRAIN_ONLY_SPLIT} (Megatron needs --split with it)",
                  f"--per-split-data-args-path {per_split} (train and valid blends; no --split with it)"]
    if target_tokens is not None:
        for domain, passes in epochs(mixture, manifest, target_tokens).items():
            split = manifest.train[domain]
            lines.append(f"{domain}: weight {mixture.weights[domain]:.6g}, {split.tokens:,} train tokens in "
                         f"{len(split.shards)} prefix(es): {passes:.3g} epochs at {target_tokens:,} tokens")
    for domain in manifest.domains:
        shared = _documents_inside_train_prefixes(manifest.train[domain])
        if mixture.weights[domain] > 0 and shared:
            lines.append(f"{domain}: its {shared:,} validation documents are the ends of train prefixes, which "
                         "Megatron reads whole, so it trains on them (valid_prefixes keep them apart)")
    return lines


def _documents_inside_train_prefixes(split: Split) -> int:
    """Documents of the split's prefixes that the split leaves out (held out for validation); 0 when
    the prefixes cannot be read here (an export made away from the data)."""
    try:
        return sum(read_header(shard.prefix).documents - shard.documents for shard in split.shards)
    except RegmixError:
        return 0


def export(fmt: str, mixture_path: str | os.PathLike, manifest_path: str | os.PathLike,
           out: MegatronDir | None = None, target_tokens: int | None = None) -> tuple[str, list[str]]:
    """The inline list for `fmt` (one line) and the notes; with `out`, also the two files."""
    if fmt not in FORMATS:
        raise RegmixError("--format", f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if target_tokens is not None and target_tokens < 1:
        raise RegmixError("--target-tokens", f"must be >= 1, got {target_tokens}")
    mixture, manifest = Mixture.load(mixture_path), Manifest.load(manifest_path)
    line = " ".join(megatron_data_path(mixture, manifest))
    files = write_megatron_files(mixture, manifest, out) if out is not None else []
    return line, notes(mixture, manifest, target_tokens, files)
