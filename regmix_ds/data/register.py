"""Existing Megatron shards as a domain's splits: registered from their index headers, never re-tokenized.

A domain given as `prefixes` (Megatron prefixes or globs of them) trains on those shards in place,
read one after the other as one stream; the manifest records each prefix with the tokens and
documents it contributes. Its validation set is `valid_prefixes` when given, else
`data.valid_documents` documents held out of the train shards: the last documents of each shard,
spread over the shards in proportion to their documents, copied into `data/<name>_valid` (the
train split then covers each shard's first documents only). The same holding-out serves the
per-file shards of `data.shard_by: file` (`prepare.merge`).

What is checked, and when, so that the cost stays bounded on a terabyte corpus:

- up front, per prefix, a few dozen bytes read (`indexed.read_header`): magic, version, dtype, that
  the .idx is exactly as long as its header promises (a multimodal index is named as unsupported),
  that the .bin ends where the last sequence's pointer and length say; then a sample of token ids,
  the first and last WINDOW_TOKENS and SAMPLE_WINDOWS windows at seeded offsets (at most 73,728
  tokens per prefix), every id below the configured tokenizer's vocabulary;
- as data is read: a training run opens each prefix's whole index (pointers tile the .bin, the
  document counts the manifest recorded), and the blended sampler checks the ids of every sample
  it reads, naming the .bin a bad id came from (`blend.check_token_ids`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from regmix_ds.core.config import DomainSource, ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import OutputSet
from regmix_ds.core.manifest import Shard, Split
from regmix_ds.core.settings import locate
from regmix_ds.data.indexed import IndexedWriter, ShardHeader, read_header

REGISTER_FORMAT = "regmix-ds/registered-1"
SAMPLE_WINDOWS = 16
WINDOW_TOKENS = 4096
GLOB_CHARACTERS = "*?["


@dataclass(frozen=True)
class ShardSource:
    """A domain (or target set) given as existing Megatron shards."""

    name: str
    is_target: bool
    train: tuple[Path, ...]
    """Its prefixes, in order (a target's: its validation set)."""
    valid: tuple[Path, ...]
    """A domain's own validation prefixes; empty: `valid_documents` are held out of `train`."""
    config: str

    @property
    def where(self) -> str:
        """The config key an error about the whole source names."""
        return locate(self.config, f"data.{'targets' if self.is_target else 'domains'}.{self.name}.prefixes")


@dataclass(frozen=True)
class Holdout:
    """Validation documents held out of one shard: its documents [first, header.documents)."""

    header: ShardHeader
    first: int


@dataclass(frozen=True)
class Registration:
    """A source's splits, decided (and checked) before anything is written."""

    name: str
    train: Split | None
    """None for a target set."""
    valid: Split | None
    """None when the validation split is to be written from `holdout`."""
    holdout: tuple[Holdout, ...]
    inputs_hash: str


def resolve_shard_source(name: str, spec: DomainSource, is_target: bool, config: ExperimentConfig) -> ShardSource:
    """A source's prefixes and globs expanded (relative ones against the config file), each prefix once."""
    key = f"data.{'targets' if is_target else 'domains'}.{name}"
    train = expand_prefixes(spec.prefixes, config, locate(config.path, f"{key}.prefixes"))
    valid = expand_prefixes(spec.valid_prefixes, config, locate(config.path, f"{key}.valid_prefixes"))
    both = sorted(set(train) & set(valid))
    if both:
        raise RegmixError(locate(config.path, f"{key}.valid_prefixes"),
                          f"{both[0]} is also a train prefix: validation documents must not be trained on")
    return ShardSource(name, is_target, train, valid, config.path)


def expand_prefixes(patterns: Sequence[str], config: ExperimentConfig, where: str) -> tuple[Path, ...]:
    """Prefixes in the order given, a glob's matches sorted; `.bin`/`.idx` endings are taken off.

    A glob matches prefixes through their .idx files (`web/*_text_document` finds
    `web/a_text_document.idx`, ...); a plain prefix must exist (`read_header` says so otherwise).
    """
    prefixes: list[Path] = []
    for pattern in patterns:
        path = str(config.resolve(pattern)).removesuffix(".idx").removesuffix(".bin")
        if any(c in path for c in GLOB_CHARACTERS):
            matches = sorted(glob.glob(path + ".idx"))
            if not matches:
                raise RegmixError(where, f"no Megatron shards match {pattern!r} (no {path}.idx)")
            prefixes += [Path(match.removesuffix(".idx")) for match in matches]
        else:
            prefixes.append(Path(path))
    seen: set[Path] = set()
    for prefix in prefixes:
        if prefix in seen:
            raise RegmixError(where, f"{prefix} is listed twice: each shard may appear once")
        seen.add(prefix)
    return tuple(prefixes)


def inspect_source(source: ShardSource, vocab_size: int, valid_documents: int, seed: int) -> Registration:
    """Read every prefix's header, sample its token ids, and decide the splits; writes nothing."""
    headers = [checked_header(prefix, vocab_size, seed) for prefix in source.train]
    valid = [checked_header(prefix, vocab_size, seed) for prefix in source.valid]
    digest = _hash([REGISTER_FORMAT, [_file_stats(h) for h in headers + valid], source.is_target,
                    None if source.is_target or valid else valid_documents, vocab_size])
    if source.is_target:
        return Registration(source.name, None, whole(headers), (), digest)
    if valid:
        return Registration(source.name, whole(headers), whole(valid), (), digest)
    return hold_out(source.name, headers, valid_documents, source.where, digest)


def checked_header(prefix: Path, vocab_size: int, seed: int) -> ShardHeader:
    """`read_header` plus the up-front sample of token ids against the vocabulary."""
    header = read_header(prefix)
    check_token_sample(header, vocab_size, seed)
    return header


def check_token_sample(header: ShardHeader, vocab_size: int, seed: int) -> None:
    """The first and last WINDOW_TOKENS tokens and SAMPLE_WINDOWS windows at offsets drawn from
    (seed, prefix name): every id in [0, vocab_size). Bounded: at most 18 windows per prefix."""
    if header.dtype.kind not in "iu":
        raise RegmixError(header.bin_path, f"holds {header.dtype} values, not token ids")
    if header.tokens == 0:
        return
    width = min(WINDOW_TOKENS, header.tokens)
    rng = np.random.default_rng([seed, zlib.crc32(header.prefix.name.encode())])
    starts = {0, header.tokens - width, *rng.integers(0, header.tokens - width + 1, size=SAMPLE_WINDOWS).tolist()}
    for start in sorted(starts):
        window = np.asarray(header.tokens_at(start, start + width))
        bad = np.flatnonzero((window < 0) | (window >= vocab_size))
        if bad.size:
            raise RegmixError(header.bin_path, f"token id {int(window[bad[0]])} (token {start + int(bad[0]):,}) "
                                               f"is outside the vocabulary [0, {vocab_size}) of data.tokenizer: "
                                               "these shards were made with another tokenizer")


def whole(headers: Sequence[ShardHeader]) -> Split:
    """Every document of every shard, in order."""
    return Split.of(Shard(h.prefix, h.tokens, h.documents) for h in headers)


def hold_out(name: str, headers: Sequence[ShardHeader], valid_documents: int, where: str, digest: str) -> Registration:
    """Train on each shard's first documents; hold out its last ones, in proportion to its documents."""
    total = sum(h.documents for h in headers)
    if total <= valid_documents:
        raise RegmixError(where, f"{total} documents leave none for training after "
                                 f"data.valid_documents={valid_documents}")
    counts = holdout_counts([h.documents for h in headers], valid_documents)
    train, holdout = [], []
    for header, count in zip(headers, counts):
        first = header.documents - count
        tokens = int(header.document_starts(first, first)[0]) if count else header.tokens
        if first:
            train.append(Shard(header.prefix, tokens, first))
        if count:
            holdout.append(Holdout(header, first))
    return Registration(name, Split.of(train), None, tuple(holdout), digest)


def holdout_counts(documents: Sequence[int], total: int) -> list[int]:
    """`total` split over shards in proportion to their documents (largest remainders, ties to the
    earlier shard); never more than a shard holds."""
    whole_documents = sum(documents)
    exact = [total * d / whole_documents for d in documents]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(documents)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def write_holdout(registration: Registration, prefix: Path, out: OutputSet) -> Split:
    """Copy the held-out documents, shard by shard, into one validation shard at `prefix`, staged in `out`."""
    dtype = np.result_type(*(h.header.dtype for h in registration.holdout))
    with IndexedWriter(prefix, dtype, into=out) as writer:
        for held in registration.holdout:
            starts = held.header.document_starts(held.first, held.header.documents)
            tokens = np.asarray(held.header.tokens_at(int(starts[0]), int(starts[-1])))
            writer.add_documents(tokens, np.diff(starts))
    return Split(prefix, writer.num_tokens, writer.num_documents)


def shard_matches(shard: Shard) -> bool:
    """Whether a shard still holds what a stamp recorded: its header reads and its first
    `documents` documents still end at token `tokens` (O(1) reads)."""
    try:
        header = read_header(shard.prefix)
        return header.documents >= shard.documents and \
            int(header.document_starts(shard.documents, shard.documents)[0]) == shard.tokens
    except (RegmixError, OSError, IndexError):
        return False


def _file_stats(header: ShardHeader) -> list:
    """Absolute prefix, then size and mtime of its .idx and .bin: a change to any means re-register."""
    stats = [os.stat(header.idx_path), os.stat(header.bin_path)]
    return [str(header.prefix.absolute()), *[[s.st_size, s.st_mtime_ns] for s in stats]]


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
