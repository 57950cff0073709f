"""Tokenizing as independent tasks: one per input file, or per chunk of a large line-oriented one.

With `data.shard_by: file`, every raw-text domain and target set is cut into tasks, numbered from
1 as Slurm numbers array tasks: domains in config order, then target sets, each source's files in
the order listed, and a .jsonl or .txt file larger than `data.chunk_bytes` in chunks of that many
bytes. A chunk holds the lines that start inside its byte range, so every line belongs to exactly
one chunk whatever the chunk size.

A domain's `data.valid_documents` are split over its tasks in proportion to their input bytes
(known before anything is read), and each task draws its share of its own documents with
`data.seed`: task k writes `data/<name>/train-<k>` and, when it holds any out,
`data/<name>/valid-<k>`, then its stamp `part-<k>.json` (what it was built from). Train shards
thus never hold a validation document, for us or for Megatron. A target set's tasks write
validation shards only. A task whose stamp matches its input now and whose shards still read is
done; running it again does nothing.

This module plans tasks and reads their input; `prepare.run_task` tokenizes one, `prepare.merge`
turns finished parts into the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import entries, read_json
from regmix_ds.core.layout import DataDir
from regmix_ds.core.manifest import Shard
from regmix_ds.data.register import holdout_counts, shard_matches

if TYPE_CHECKING:
    from regmix_ds.data.prepare import Source

PART_FORMAT = "regmix-ds/part-1"
CHUNKABLE = (".jsonl", ".txt")
COPY_BLOCK = 1 << 24


@dataclass(frozen=True)
class Task:
    """One tokenize task: one input file, or the lines starting in bytes [start, stop) of one."""

    index: int
    """1-based, as Slurm numbers array tasks."""
    source: Source
    part: int
    """Which of its source's shards it writes (0-based)."""
    file: Path
    start: int = 0
    stop: int | None = None
    """None: the whole file."""
    valid: int | None = None
    """Documents it holds out for validation; None for a target set's task (all of them)."""

    @property
    def label(self) -> str:
        """The input as an error or a log line names it."""
        return str(self.file) if self.stop is None else f"{self.file} bytes {self.start}-{self.stop}"


def plan_tasks(config: ExperimentConfig, sources: Sequence[Source]) -> list[Task]:
    """Every task of the raw-text sources, in Slurm array order (1..N)."""
    chunk = config.data.chunk_bytes
    tasks: list[Task] = []
    for source in sources:
        pieces: list[tuple[Path, int, int | None, int]] = []
        for file in source.files:
            size = _size(file)
            if chunk is not None and file.name.endswith(CHUNKABLE) and size > chunk:
                pieces += [(file, start, min(start + chunk, size), min(chunk, size - start))
                           for start in range(0, size, chunk)]
            else:
                pieces.append((file, 0, None, size))
        shares = [None] * len(pieces) if source.is_target else \
            holdout_counts([max(size, 1) for *_, size in pieces], config.data.valid_documents)
        for part, ((file, start, stop, _), valid) in enumerate(zip(pieces, shares)):
            tasks.append(Task(len(tasks) + 1, source, part, file, start, stop, valid))
    return tasks


def _size(path: Path) -> int:
    """A file's size, or a saved dataset directory's total."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def pick_task(tasks: Sequence[Task], index: int) -> Task:
    """Task `index` (1-based), or a one-line error listing the valid range."""
    if not 1 <= index <= len(tasks):
        valid = f"tasks: 1-{len(tasks)}" if tasks else "this config has no raw text to tokenize"
        raise RegmixError("--task", f"no task {index} ({valid})")
    return tasks[index - 1]


def parts_of(tasks: Sequence[Task], name: str) -> list[Task]:
    """A source's tasks, in part order."""
    return [task for task in tasks if task.source.name == name]


def task_hash(task: Task, base: Path, seed: int, tokenizer_fingerprint: str) -> str:
    """Everything that decides a part's shards: the input file (path relative to the config, size,
    mtime), the byte range, how it is read, the validation draw, and the tokenizer."""
    files = sorted(p for p in task.file.rglob("*") if p.is_file()) if task.file.is_dir() else [task.file]
    stats = [[os.path.relpath(p, base), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    source = task.source
    return _hash([PART_FORMAT, stats, task.start, task.stop, source.builder, source.text_field, source.name,
                  task.part, task.valid, seed, tokenizer_fingerprint])


def part_is_done(task: Task, data_dir: DataDir, digest: str) -> dict[str, Shard] | None:
    """The part's shards by split if its stamp matches `digest` and they still read as recorded, else None."""
    stamp_path = data_dir.part_stamp(task.source.name, task.part)
    try:
        stamp = read_json(stamp_path)
        shards = {split: Shard.from_json(entry, data_dir.path) for split, entry in stamp["splits"].items()}
    except (RegmixError, KeyError, TypeError, ValueError, AttributeError):
        return None
    if stamp.get("format") != PART_FORMAT or stamp.get("inputs_hash") != digest:
        return None
    return shards if all(shard_matches(shard) for shard in shards.values()) else None


def valid_mask(task: Task, documents: int, seed: int) -> np.ndarray:
    """Which of the task's documents are held out: all of a target's; a seeded draw of `task.valid`
    (or all, if it has fewer) of a domain's."""
    if task.valid is None:
        return np.ones(documents, dtype=bool)
    rng = np.random.default_rng([seed, zlib.crc32(task.source.name.encode()), task.part])
    mask = np.zeros(documents, dtype=bool)
    mask[rng.choice(documents, size=min(task.valid, documents), replace=False)] = True
    return mask


def stamps_present(tasks: Sequence[Task], data_dir: DataDir) -> bool:
    """Whether every task's stamp file exists: one directory listing per source, so the tasks of a
    large array can each ask cheaply before the full check."""
    by_source: dict[str, set[str]] = {}
    for task in tasks:
        name = task.source.name
        if name not in by_source:
            by_source[name] = {p.name for p in entries(data_dir.part_stamp(name, 0).parent)}
        if data_dir.part_stamp(name, task.part).name not in by_source[name]:
            return False
    return True


def task_input(task: Task, directory: Path) -> Path | None:
    """The file to read: the input itself, or its chunk copied into `directory` (None: no line
    starts inside the chunk)."""
    if task.stop is None:
        return task.file
    with open(task.file, "rb") as handle:
        begin, end = _line_start(handle, task.start), _line_start(handle, task.stop)
        if end <= begin:
            return None
        out = directory / f"chunk-{task.index}{_suffix(task.file)}"
        handle.seek(begin)
        with open(out, "wb") as chunk:
            left = end - begin
            while left:
                block = handle.read(min(COPY_BLOCK, left))
                chunk.write(block)
                left -= len(block)
    return out


def _line_start(handle: Any, offset: int) -> int:
    """The offset of the first line that starts at or after `offset` (the file's size if none)."""
    if offset == 0:
        return 0
    handle.seek(offset - 1)
    handle.readline()
    return handle.tell()


def _suffix(path: Path) -> str:
    return next(s for s in CHUNKABLE if path.name.endswith(s))


def clear(directory: Path) -> None:
    """Empty a task's scratch directory (its chunk copy and `datasets` caches can be gigabytes)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
