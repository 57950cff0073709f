"""`regmix-ds prepare`: raw text per domain -> Megatron token shards + `manifest.json`.

A domain is raw text (`paths`) or existing Megatron shards (`prefixes`, registered in place from
their index headers: `data/register.py`). Raw text is tokenized per domain (`data.shard_by:
domain`, the default, described below) or per input file (`data.shard_by: file`: one task and one
shard per file or chunk, `data/parts.py`; `run_task` runs one, as a Slurm array task does, and
`merge` writes the manifest once every task is done; `prepare` runs every task in turn, then merges).

Order of work, chosen so a bad input never leaves anything behind:
  1. resolve every domain's files and the tokenizer (missing, empty or unknown files fail here);
  2. load every domain that needs (re)building into a temporary `datasets` cache and check it
     (text field present and textual, some non-empty documents, enough for the valid split);
  3. only then write: train the tokenizer if asked, tokenize with `datasets.map(batched,
     num_proc)`, and stage every changed domain's shards and stamp, and the manifest.

Everything one run changes (shards, stamps, manifest) is one `OutputSet`: killed at any instant,
the data directory holds the old corpus or the new one, whole, never a manifest that disagrees
with its shards. The price: a `shard_by: domain` run killed midway redoes all its domains; with
`shard_by: file` every finished task's part (its shards and stamp, one set each) is kept, and only
the merge is one set. One process writes a data directory's set at a time (`DataDir.lock`; a
second waits, then finds its work done).

With `shard_by: domain`, a domain is skipped when its stamp (`data/<name>.prepared.json`) records the same inputs hash
(input files' paths, sizes and mtimes, text field, split settings, tokenizer fingerprint) and
its shards open cleanly. Registered shards and finished parts are checked whole before anything
is written, and their stamps work the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regmix_ds.core import faults
from regmix_ds.core.config import DomainSource, ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import OutputSet, exclusive, read_json
from regmix_ds.core.layout import DataDir
from regmix_ds.core.manifest import Manifest, Shard, Split
from regmix_ds.core.progress import bar as progress_bar
from regmix_ds.core.settings import locate
from regmix_ds.data import parts as part_tasks
from regmix_ds.data import register
from regmix_ds.data import tokenizer as tok
from regmix_ds.data.indexed import IndexedDataset, IndexedWriter, dtype_for_vocab, paths_of, read_header
from regmix_ds.data.parts import Task
from regmix_ds.data.register import Registration, ShardSource

# `datasets` must never reach for the hub: set before it is first imported (lazily, below).
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

STAMP_FORMAT = "regmix-ds/prepared-1"
BUILDERS = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json", ".parquet": "parquet",
            ".txt": "text"}
MAP_BATCH_DOCUMENTS = 1000
# A worker pool costs ~0.4 s to start, while one process already tokenizes on every core (the
# Rust tokenizer's own threads): only a source big enough to give each worker this many
# batches gets a pool.
MIN_BATCHES_PER_WORKER = 8
WRITE_BLOCK_TOKENS = 1 << 24


@dataclass(frozen=True)
class Source:
    """One domain (or target set) resolved to concrete input files."""

    name: str
    is_target: bool
    files: tuple[Path, ...]
    builder: str
    """A `datasets` builder (json, parquet, text) or `disk` for a `save_to_disk` directory."""
    text_field: str
    config: str
    """The exp.yaml it was configured in."""
    label: str = ""
    """How errors name it when it is one task's input (a file, or a byte range of one)."""

    @property
    def where(self) -> str:
        """What an error about the whole source names: its file when it has one, else its config key."""
        section = "targets" if self.is_target else "domains"
        if self.label:
            return self.label
        return str(self.files[0]) if len(self.files) == 1 else locate(self.config, f"data.{section}.{self.name}")


def prepare(config: ExperimentConfig, *, train_tokenizer: bool = False, force: bool = False) -> Manifest:
    """Tokenize every configured raw-text domain and target set, register the existing shards, and
    return the written manifest."""
    data = config.data
    data_dir = config.work.data
    sources = resolve_sources(config)
    text = [s for s in sources if isinstance(s, Source)]
    _refuse_training_beside_shards(sources, train_tokenizer)
    tokenizer_dir, tokenizer_key = config.resolve(data.tokenizer), locate(config.path, "data.tokenizer")
    if train_tokenizer:
        tok.check_can_train_into(tokenizer_dir, tokenizer_key)
    corpus_hash = _corpus_hash(text, config)
    must_train = train_tokenizer and (
        force or not tok.trained_tokenizer_is_current(tokenizer_dir, corpus_hash, data.vocab_size))
    tokenizer = None if must_train else tok.load_tokenizer(data.tokenizer, tokenizer_dir, tokenizer_key)
    registered = [] if tokenizer is None else inspect_registered(sources, config, tokenizer)
    with tempfile.TemporaryDirectory(prefix="regmix-prepare-") as cache:
        if data.shard_by == "file":
            if must_train:
                raw = {s.name: load_raw(s, Path(cache), None) for s in text}
                tokenizer = _train_tokenizer(raw, text, config, corpus_hash)
            for task in progress_bar(part_tasks.plan_tasks(config, text), desc="tokenize tasks", unit="task"):
                run_task(task, config, tokenizer, Path(cache), force=force)
            return _merged_or_fail(config, sources, tokenizer, force=force)
        pending = [s for s in text if must_train or force or not _is_current(s, data_dir, config, tokenizer)]
        raw = {s.name: load_raw(s, Path(cache), None if s.is_target else data.valid_documents) for s in pending}
        with exclusive([data_dir.lock], wait=True):
            if must_train:
                tokenizer = _train_tokenizer(raw, text, config, corpus_hash)
                pending = [s for s in pending if force or not _is_current(s, data_dir, config, tokenizer)]
            stale = [r for r in registered if force or not _registration_is_current(r, data_dir)]
            built = {s.name: functools.partial(build_source, s, raw[s.name], tokenizer, config, Path(cache))
                     for s in pending}
            return write_data_set(sources, config, tokenizer, {**built, **_registering(stale, data_dir)})


def _train_tokenizer(raw: Mapping[str, Any], text: list[Source], config: ExperimentConfig, corpus_hash: str) -> Any:
    data = config.data
    tokenizer_dir = config.resolve(data.tokenizer)
    tok.train_tokenizer(training_texts(raw, text), data.vocab_size, tokenizer_dir, corpus_hash)
    return tok.load_tokenizer(data.tokenizer, tokenizer_dir, locate(config.path, "data.tokenizer"))


def _refuse_training_beside_shards(sources: list[Source | ShardSource], train_tokenizer: bool) -> None:
    shards = [s for s in sources if isinstance(s, ShardSource)]
    if train_tokenizer and shards:
        raise RegmixError(shards[0].where, "existing shards need the tokenizer they were made with: name it in "
                                           "data.tokenizer and leave out --train-tokenizer")


def resolve_sources(config: ExperimentConfig) -> list[Source | ShardSource]:
    """Every domain, then every target set: raw text with its files checked to exist and be readable
    kinds, or existing shards with their globs expanded."""
    data = config.data
    entries = [(name, spec, False) for name, spec in data.domains.items()]
    entries += [(name, spec, True) for name, spec in data.targets.items()]
    return [register.resolve_shard_source(name, spec, is_target, config) if spec.prefixes
            else _resolve_source(name, spec, is_target, config) for name, spec, is_target in entries]


def _resolve_source(name: str, spec: DomainSource, is_target: bool, config: ExperimentConfig) -> Source:
    where = locate(config.path, f"data.{'targets' if is_target else 'domains'}.{name}.paths")
    if not spec.paths:
        raise RegmixError(where, "no input files listed")
    files = tuple(config.resolve(path) for path in spec.paths)
    builders = {_builder_of(path) for path in files}
    if len(builders) > 1:
        raise RegmixError(where, f"mixes input kinds ({', '.join(sorted(builders))}); use one kind per domain")
    (builder,) = builders
    if builder == "disk" and len(files) > 1:
        raise RegmixError(where, "a saved dataset directory must be the domain's only input")
    return Source(name, is_target, files, builder, "text" if builder == "text" else spec.text_field, config.path)


def _builder_of(path: Path) -> str:
    if path.is_dir():
        if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
            raise RegmixError(path, "directory is not a saved Hugging Face dataset (no dataset_info.json)")
        return "disk"
    if not path.exists():
        raise RegmixError(path, "input file not found")
    suffix = next((s for s in BUILDERS if path.name.endswith(s)), None)
    if suffix is None:
        raise RegmixError(path, f"unknown input kind; expected one of {', '.join(BUILDERS)} "
                                "or a saved dataset directory")
    if path.stat().st_size == 0:
        raise RegmixError(path, "empty file: no documents")
    return BUILDERS[suffix]


def load_raw(source: Source, cache: Path, valid_documents: int | None, allow_empty: bool = False) -> Any:
    """The source as a `datasets.Dataset`, checked: text field present and textual, enough documents
    (with `allow_empty`, as for one task's file or chunk, none is enough)."""
    dataset = _load_dataset(source, cache)
    if source.text_field not in dataset.column_names:
        fields = ", ".join(dataset.column_names) or "none"
        raise RegmixError(source.where, f"no text field {source.text_field!r} (fields: {fields})")
    feature = dataset.features[source.text_field]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise RegmixError(source.where, f"field {source.text_field!r} holds {feature}, not text")
    documents = _count_nonempty(dataset, source.text_field)
    if documents == 0 and not allow_empty:
        raise RegmixError(source.where,
                          f"no text: all {len(dataset)} documents are empty" if len(dataset) else "no documents")
    if valid_documents is not None and documents <= valid_documents:
        raise RegmixError(
            source.where,
            f"{documents} non-empty documents leave none for training after data.valid_documents={valid_documents}",
        )
    return dataset


def _load_dataset(source: Source, cache: Path) -> Any:
    import datasets

    try:
        if source.builder == "disk":
            loaded = datasets.load_from_disk(str(source.files[0]))
            return _single_split(loaded, source)
        files = [str(path) for path in source.files]
        return datasets.load_dataset(source.builder, data_files=files, split="train", cache_dir=str(cache))
    except Exception as err:  # datasets raises many kinds; the user needs the file and the cause
        raise RegmixError(source.where, f"cannot read ({_root_cause(err)})") from None


def _single_split(loaded: Any, source: Source) -> Any:
    if not hasattr(loaded, "keys"):
        return loaded
    if "train" in loaded:
        return loaded["train"]
    raise RegmixError(source.where, f"saved DatasetDict has no 'train' split (splits: {', '.join(loaded)})")


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    message = str(err).strip().splitlines()
    return f"{type(err).__name__}: {message[0]}" if message else type(err).__name__


def _nonempty_mask(texts: Any) -> Any:
    """Documents with any non-whitespace text; nulls count as empty. One rule for counting and tokenizing."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0), False)


def _count_nonempty(dataset: Any, field: str) -> int:
    import pyarrow.compute as pc

    column = dataset.data.column(field)
    return int(pc.sum(_nonempty_mask(column)).as_py() or 0)


def training_texts(raw: Mapping[str, Any], sources: list[Source]) -> Iterator[str]:
    """Every non-empty document of the training domains (not the targets), for tokenizer training."""
    for source in sources:
        if not source.is_target:
            for batch in raw[source.name].data.column(source.text_field).chunks:
                yield from batch.filter(_nonempty_mask(batch)).to_pylist()


class TokenizeBatch:
    """`datasets.map` function: a batch of documents -> token ids with EOS appended, as Arrow.

    It calls the fast tokenizer's batch API once per batch and builds the Arrow list column
    from one flat numpy array: pyarrow's own conversion of nested Python lists is ~30x slower
    than `np.fromiter` and would cost more than the tokenizer itself.
    """

    def __init__(self, tokenizer: Any, field: str, dtype: np.dtype):
        self.tokenizer = tokenizer
        self.field = field
        self.dtype = dtype
        self.eos = int(tokenizer.eos_token_id)

    def __call__(self, batch: Any) -> Any:
        """The batch's non-empty documents as token ids, EOS appended, in an Arrow `input_ids` list column."""
        import itertools

        import pyarrow as pa

        column = batch.column(self.field)
        texts = column.filter(_nonempty_mask(column)).to_pylist()
        ids = self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        for document in ids:
            document.append(self.eos)
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(document) for document in ids], out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(offsets[-1]))
        return pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))})


def tokenize(dataset: Any, source: Source, tokenizer: Any, num_proc: int, cache: Path) -> Any:
    """Tokenize one source with `datasets.map(batched=True, num_proc=...)`; empty documents are dropped."""
    dtype = dtype_for_vocab(len(tokenizer))
    workers = map_workers(len(dataset), num_proc)
    with _tokenizer_threads(workers):
        return dataset.with_format("arrow").map(
            TokenizeBatch(tokenizer, source.text_field, dtype),
            batched=True,
            batch_size=MAP_BATCH_DOCUMENTS,
            num_proc=workers if workers > 1 else None,
            remove_columns=dataset.column_names,
            cache_file_name=str(cache / f"{source.name}.tokens.arrow"),
            load_from_cache_file=False,
            new_fingerprint=f"regmix-tokenize-{source.name}",
            desc=f"tokenize {source.name}",
        )


def map_workers(documents: int, num_proc: int) -> int:
    """Up to `num_proc` map processes, each with at least MIN_BATCHES_PER_WORKER batches."""
    return max(1, min(num_proc, documents // (MIN_BATCHES_PER_WORKER * MAP_BATCH_DOCUMENTS)))


@contextlib.contextmanager
def _tokenizer_threads(workers: int) -> Iterator[None]:
    """With several map workers, each tokenizes on one thread: they already fill the cores."""
    if workers == 1:
        yield
        return
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def build_source(source: Source, raw: Any, tokenizer: Any, config: ExperimentConfig, cache: Path,
                 out: OutputSet) -> dict:
    """Tokenize one source and stage its shards (train+valid, or valid only for a target) in `out`;
    returns its stamp."""
    data_dir = config.work.data
    tokens = tokenize(raw, source, tokenizer, config.data.num_proc, cache)
    dtype = dtype_for_vocab(len(tokenizer))
    documents = len(tokens)
    is_valid = _valid_mask(source, documents, config.data)
    splits = {}
    for split, wanted in (("train", ~is_valid), ("valid", is_valid)):
        if wanted.any():
            prefix = data_dir.prefix(source.name, split)
            splits[split] = write_split(tokens, wanted, prefix, dtype, f"write {source.name}_{split}", out)
    return _stamp(_inputs_hash(source, config, tokenizer), splits, data_dir)


def _stamp(inputs_hash: str, splits: Mapping[str, Split], data_dir: DataDir) -> dict:
    """A source's stamp: what its shards were built from, and its splits."""
    return {"format": STAMP_FORMAT, "inputs_hash": inputs_hash,
            "splits": {kind: split.to_json(data_dir.path) for kind, split in splits.items()}}


def _valid_mask(source: Source, documents: int, data: Any) -> np.ndarray:
    """Which documents are held out: all of a target set; a seeded draw of `valid_documents` of a domain."""
    if source.is_target:
        return np.ones(documents, dtype=bool)
    rng = np.random.default_rng([data.seed, zlib.crc32(source.name.encode())])
    mask = np.zeros(documents, dtype=bool)
    mask[rng.choice(documents, size=data.valid_documents, replace=False)] = True
    return mask


def write_split(tokens: Any, wanted: np.ndarray, prefix: Path, dtype: np.dtype, desc: str, out: OutputSet) -> Split:
    """Stream the `wanted` documents (in input order) from the tokenized Arrow column into one shard
    staged in `out`."""
    first_document = 0
    with IndexedWriter(prefix, dtype, into=out) as writer:
        for chunk in progress_bar(tokens.data.column("input_ids").chunks, desc=desc, unit="chunk"):
            keep = wanted[first_document : first_document + len(chunk)]
            first_document += len(chunk)
            offsets = chunk.offsets.to_numpy()
            lengths = np.diff(offsets)
            values = chunk.values.to_numpy()[offsets[0] : offsets[-1]]
            writer.add_documents(values[np.repeat(keep, lengths)], lengths[keep])
            faults.reached("shard")
    return Split(prefix, writer.num_tokens, writer.num_documents)


def _is_current(source: Source, data_dir: DataDir, config: ExperimentConfig, tokenizer: Any) -> bool:
    """Whether the source's stamp matches its inputs now and its shards open with the recorded sizes."""
    stamp_path = data_dir.stamp(source.name)
    if not stamp_path.exists():
        return False
    stamp = read_json(stamp_path)
    if stamp.get("format") != STAMP_FORMAT or stamp.get("inputs_hash") != _inputs_hash(source, config, tokenizer):
        return False
    return all(_split_matches(data_dir, entry) for entry in stamp.get("splits", {}).values())


def _split_matches(data_dir: DataDir, entry: Mapping[str, Any]) -> bool:
    try:
        shards = Split.from_json(entry, data_dir.path).shards
        opened = [IndexedDataset(shard.prefix) for shard in shards]
    except (RegmixError, KeyError, TypeError, ValueError):
        return False
    return all((d.num_tokens, len(d)) == (s.tokens, s.documents) for d, s in zip(opened, shards))


def _file_stats(source: Source, base: Path) -> list[list]:
    """Path (relative to the config, so a moved experiment stays current), size and mtime of each input."""
    files = [p for f in source.files for p in (sorted(f.rglob("*")) if f.is_dir() else [f]) if p.is_file()]
    return [[os.path.relpath(p, base), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _inputs_hash(source: Source, config: ExperimentConfig, tokenizer: Any) -> str:
    """Everything that decides a source's shards; a change to any of it means rebuild."""
    split = None if source.is_target else [config.data.valid_documents, config.data.seed]
    stats = _file_stats(source, config.resolve("."))
    return _hash([STAMP_FORMAT, stats, source.text_field, source.is_target, split, tok.fingerprint(tokenizer)])


def _corpus_hash(sources: list[Source], config: ExperimentConfig) -> str:
    """What a trained tokenizer depends on: the training domains' files and the vocabulary size."""
    base = config.resolve(".")
    domains = [[s.name, s.text_field, _file_stats(s, base)] for s in sources if not s.is_target]
    return _hash([domains, config.data.vocab_size])


StageSource = Callable[[OutputSet], dict]
"""Stages one source's shards in the set it is given and returns the source's stamp."""


def write_data_set(sources: list[Source | ShardSource], config: ExperimentConfig, tokenizer: Any,
                   changed: Mapping[str, StageSource]) -> Manifest:
    """Stage every changed source's shards and stamp, and the manifest, and commit them as one set
    (nothing changed: only the manifest is brought up to date). Returns the manifest."""
    data_dir = config.work.data
    if not changed:
        manifest = manifest_of(sources, data_dir, config, tokenizer, {})
        manifest.save()
        return manifest
    with OutputSet(_set_outputs(data_dir, list(changed))) as out:
        stamps = {}
        for name, stage in changed.items():
            stamps[name] = stage(out)
            out.write_json(data_dir.stamp(name), stamps[name])
        manifest = manifest_of(sources, data_dir, config, tokenizer, stamps)
        out.write_json(manifest.path, manifest.content())
    return manifest


def _set_outputs(data_dir: DataDir, names: list[str]) -> list[Path]:
    """Every file a run may write for sources `names`: their shards and stamps, and the manifest."""
    shards = [path for name in names for path in _shard_files(functools.partial(data_dir.prefix, name))]
    return [*shards, *(data_dir.stamp(name) for name in names), data_dir.manifest]


def _shard_files(prefix_of: Callable[[str], Path]) -> list[Path]:
    """The .bin and .idx of both splits, `prefix_of(split)` giving each split's prefix."""
    return [path for split in ("train", "valid") for path in paths_of(prefix_of(split))]


def manifest_of(sources: list[Source | ShardSource], data_dir: DataDir, config: ExperimentConfig,
                tokenizer: Any, new_stamps: Mapping[str, dict]) -> Manifest:
    """The manifest of the domains' stamps (`new_stamps`, else the one on disk): train splits for
    domains, valid for all."""
    stamps = {s.name: new_stamps.get(s.name) or read_json(data_dir.stamp(s.name)) for s in sources}

    def split(name: str, kind: str) -> Split:
        return Split.from_json(stamps[name]["splits"][kind], data_dir.path)

    return Manifest(
        path=data_dir.manifest,
        tokenizer=tok.info(tokenizer, config.data.tokenizer, config.resolve(config.data.tokenizer), data_dir.path),
        seed=config.data.seed,
        train={s.name: split(s.name, "train") for s in sources if not s.is_target},
        valid={s.name: split(s.name, "valid") for s in sources},
        inputs_hash={s.name: stamps[s.name]["inputs_hash"] for s in sources},
    )


# ---- existing shards --------------------------------------------------------------------------------


def inspect_registered(sources: list[Source | ShardSource], config: ExperimentConfig,
                       tokenizer: Any) -> list[Registration]:
    """Every existing-shards source checked (headers, sampled token ids) and its splits decided; writes nothing."""
    data = config.data
    return [register.inspect_source(s, len(tokenizer), data.valid_documents, data.seed)
            for s in sources if isinstance(s, ShardSource)]


def _registering(registrations: list[Registration], data_dir: DataDir) -> dict[str, StageSource]:
    return {r.name: functools.partial(write_registration, r, data_dir) for r in registrations}


def write_registration(registration: Registration, data_dir: DataDir, out: OutputSet) -> dict:
    """Stage a registered source's held-out validation shard (if any) in `out`; returns its stamp."""
    valid = registration.valid or register.write_holdout(registration, data_dir.prefix(registration.name, "valid"), out)
    splits = {"valid": valid} if registration.train is None else {"train": registration.train, "valid": valid}
    return _stamp(registration.inputs_hash, splits, data_dir)


def _registration_is_current(registration: Registration, data_dir: DataDir) -> bool:
    """Its stamp records the same inputs and every shard it names still reads as recorded (O(1) each)."""
    path = data_dir.stamp(registration.name)
    if not path.exists():
        return False
    try:
        stamp = read_json(path)
        if stamp.get("format") != STAMP_FORMAT or stamp.get("inputs_hash") != registration.inputs_hash:
            return False
        splits = [Split.from_json(entry, data_dir.path) for entry in stamp["splits"].values()]
    except (RegmixError, KeyError, TypeError, ValueError, AttributeError):
        return False
    return all(register.shard_matches(shard) for split in splits for shard in split.shards)


# ---- one task per input file (data.shard_by: file) ---------------------------------------------------


def plan(config: ExperimentConfig, *, train_tokenizer: bool = False, force: bool = False) -> list[Task]:
    """The tokenize tasks of a `shard_by: file` config, in Slurm array order; trains the tokenizer
    first when asked (every task needs it), and writes nothing else."""
    _require_tasks(config, "--plan")
    sources = resolve_sources(config)
    text = [s for s in sources if isinstance(s, Source)]
    _refuse_training_beside_shards(sources, train_tokenizer)
    if train_tokenizer:
        data = config.data
        tokenizer_dir = config.resolve(data.tokenizer)
        tok.check_can_train_into(tokenizer_dir, locate(config.path, "data.tokenizer"))
        corpus_hash = _corpus_hash(text, config)
        if force or not tok.trained_tokenizer_is_current(tokenizer_dir, corpus_hash, data.vocab_size):
            with tempfile.TemporaryDirectory(prefix="regmix-prepare-") as cache:
                raw = {s.name: load_raw(s, Path(cache), None) for s in text}
                _train_tokenizer(raw, text, config, corpus_hash)
    return part_tasks.plan_tasks(config, text)


@dataclass(frozen=True)
class TaskReport:
    """What one array task did: its task, its part's shards by split, whether it wrote them now, and
    the manifest when this task found every part done (None: others are still to finish)."""

    task: Task
    tasks: int
    shards: dict[str, Shard]
    wrote: bool
    manifest: Manifest | None


def run_array_task(config: ExperimentConfig, index: int) -> TaskReport:
    """Slurm array task `index` (1-based): tokenize its file or chunk unless done, then merge if every
    part is done (whichever task finishes last writes the manifest; later ones find it current)."""
    _require_tasks(config, "--task")
    sources = resolve_sources(config)
    tasks = part_tasks.plan_tasks(config, [s for s in sources if isinstance(s, Source)])
    task = part_tasks.pick_task(tasks, index)
    spec = config.data.tokenizer
    tokenizer = tok.load_tokenizer(spec, config.resolve(spec), locate(config.path, "data.tokenizer"))
    with tempfile.TemporaryDirectory(prefix="regmix-prepare-") as cache:
        shard, wrote = run_task(task, config, tokenizer, Path(cache))
    return TaskReport(task, len(tasks), shard, wrote, merge(config, tokenizer, sources=sources))


def _require_tasks(config: ExperimentConfig, flag: str) -> None:
    if config.data.shard_by != "file":
        raise RegmixError(flag, f"tokenize tasks need data.shard_by: file in {config.path} (it is "
                                f"{config.data.shard_by!r}: one process per domain)")


def run_task(task: Task, config: ExperimentConfig, tokenizer: Any, cache: Path, *,
             force: bool = False) -> tuple[dict[str, Shard], bool]:
    """Tokenize one task's file or chunk into its part's shards, then write the part's stamp. A part
    whose stamp matches is left alone. Returns its shards by split and whether they were written now."""
    data_dir = config.work.data
    digest = part_tasks.task_hash(task, config.resolve("."), config.data.seed, tok.fingerprint(tokenizer))
    done = None if force else part_tasks.part_is_done(task, data_dir, digest)
    if done is not None:
        return done, False
    name, part = task.source.name, task.part
    scratch = cache / f"task-{task.index}"
    part_tasks.clear(scratch)
    shards_of_part = _shard_files(functools.partial(data_dir.part, name, part))
    try:
        with OutputSet([*shards_of_part, data_dir.part_stamp(name, part)]) as out:
            shards = _tokenize_part(task, config, tokenizer, scratch, out)
            out.write_json(data_dir.part_stamp(name, part), {
                "format": part_tasks.PART_FORMAT, "input": task.label, "inputs_hash": digest,
                "splits": {split: shard.to_json(data_dir.path) for split, shard in shards.items()},
            })
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return shards, True


def _tokenize_part(task: Task, config: ExperimentConfig, tokenizer: Any, scratch: Path,
                   out: OutputSet) -> dict[str, Shard]:
    """A domain task's train shard and (when it holds any out) valid shard, or a target task's valid
    shard, staged in `out`."""
    data_dir, name = config.work.data, task.source.name
    dtype = dtype_for_vocab(len(tokenizer))
    file = part_tasks.task_input(task, scratch)
    tokens = None
    if file is not None:  # None: no line starts inside this chunk
        source = dataclasses.replace(task.source, files=(file,), label=task.label)
        tokens = tokenize(load_raw(source, scratch, None, allow_empty=True), source, tokenizer,
                          config.data.num_proc, scratch)
    is_valid = part_tasks.valid_mask(task, 0 if tokens is None else len(tokens), config.data.seed)
    wanted = {"valid": is_valid} if task.valid is None else {"train": ~is_valid, "valid": is_valid}
    shards = {}
    for split, mask in wanted.items():
        if split == "valid" and task.valid is not None and not mask.any():
            continue
        prefix = data_dir.part(name, task.part, split)
        if tokens is None:
            with IndexedWriter(prefix, dtype, into=out):
                pass
            shards[split] = Shard(prefix, 0, 0)
        else:
            shards[split] = write_split(tokens, mask, prefix, dtype, f"write {name} {split} part {task.part}",
                                        out).shards[0]
    return shards


def merge(config: ExperimentConfig, tokenizer: Any, *, force: bool = False,
          sources: list[Source | ShardSource] | None = None) -> Manifest | None:
    """Once every part is done: each raw-text domain trains on its parts' train shards and validates on
    their held-out documents (copied into one `<name>_valid` shard), a target set validates on its
    parts, the existing shards are registered, and the stamps and the manifest are written. While a
    part is missing: None, and nothing written."""
    data_dir = config.work.data
    sources = sources if sources is not None else resolve_sources(config)
    text = [s for s in sources if isinstance(s, Source)]
    tasks = part_tasks.plan_tasks(config, text)
    if not part_tasks.stamps_present(tasks, data_dir):
        return None
    fingerprint, base = tok.fingerprint(tokenizer), config.resolve(".")
    digests = {task.index: part_tasks.task_hash(task, base, config.data.seed, fingerprint) for task in tasks}
    done = {task.index: part_tasks.part_is_done(task, data_dir, digests[task.index]) for task in tasks}
    if any(shards is None for shards in done.values()):
        return None
    registrations = []
    for source in text:
        mine = part_tasks.parts_of(tasks, source.name)
        digest = _hash([STAMP_FORMAT, "parts", [digests[task.index] for task in mine]])
        registrations.append(_parts_registration(source, [done[task.index] for task in mine], digest, config))
    registrations += inspect_registered(sources, config, tokenizer)
    with exclusive([data_dir.lock], wait=True):  # array tasks finishing together: one merges, the others wait
        stale = [r for r in registrations if force or not _registration_is_current(r, data_dir)]
        return write_data_set(sources, config, tokenizer, _registering(stale, data_dir))


def _parts_registration(source: Source, parts: list[dict[str, Shard]], digest: str,
                        config: ExperimentConfig) -> Registration:
    train = [part["train"] for part in parts if "train" in part and part["train"].documents]
    valid = [part["valid"] for part in parts if "valid" in part and part["valid"].documents]
    if not valid and not train:
        raise RegmixError(source.where, "no text: every document is empty")
    if source.is_target:
        return Registration(source.name, None, Split.of(valid), (), digest)
    if not train or not valid:
        documents = sum(shard.documents for shard in train + valid)
        problem = "leave none for training after" if not train else "gave no validation document for"
        raise RegmixError(source.where, f"{documents} non-empty documents {problem} "
                                        f"data.valid_documents={config.data.valid_documents}")
    holdout = tuple(register.Holdout(read_header(shard.prefix), 0) for shard in valid)
    return Registration(source.name, Split.of(train), None, holdout, digest)


def _merged_or_fail(config: ExperimentConfig, sources: list[Source | ShardSource], tokenizer: Any, *,
                    force: bool) -> Manifest:
    manifest = merge(config, tokenizer, force=force, sources=sources)
    if manifest is None:
        raise RegmixError(config.path, "an input file changed while prepare ran; run it again")
    return manifest
