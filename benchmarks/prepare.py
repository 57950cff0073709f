"""How close `prepare` runs to the tokenizer's own speed.

Builds a synthetic corpus, trains a BPE on it, then on the same text measures
  raw:       `tokenizer(batch)` over batches of documents, in this process (Rust threads on);
  pipeline:  what `prepare` does per domain once the text is loaded: `datasets.map(batched,
             num_proc)` tokenization + EOS + train/valid split + writing Megatron shards;
  end_to_end: a whole fresh `prepare()` run, also reading the jsonl files;
  per_file:  the same with `data.shard_by: file` and `--chunk-bytes`: every tokenize task in turn in
             this process (what `slurm/prepare.sh` spreads over an array), then the merge.
Each is timed `--repeats` times (raw and pipeline interleaved) and the best kept.
Then registration of existing shards: `--register-prefixes` Megatron prefixes holding `--register-gb`
GB of uint16 tokens in documents of ~1,000 tokens, written here and dropped from the page cache
(posix_fadvise DONTNEED), registered by a fresh `prepare()` (header reads, sampled token ids, 200
held-out documents copied per domain). The last line is one JSON object.

    python benchmarks/prepare.py [--docs-per-domain 2000] [--vocab-size 4096] [--num-proc 2] [--repeats 3]
                                 [--chunk-bytes 262144] [--register-gb 2] [--register-prefixes 16]

With fewer than MIN_BATCHES_PER_WORKER batches per worker a domain is tokenized in one
process (the tokenizer's Rust threads still use every core); --docs-per-domain 20000 makes
the map use its worker pool.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.data import prepare as stage
from regmix_ds.data import tokenizer as tok
from regmix_ds.data.indexed import IndexedWriter, paths_of
from regmix_ds.data.synth import SynthSettings, synthesize


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def raw_tokenize(tokenizer, texts: list[str]) -> int:
    tokens = 0
    for start in range(0, len(texts), stage.MAP_BATCH_DOCUMENTS):
        batch = tokenizer(texts[start : start + stage.MAP_BATCH_DOCUMENTS], add_special_tokens=False)
        tokens += sum(len(ids) for ids in batch["input_ids"])
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs-per-domain", type=int, default=2000, help="synthetic documents per domain")
    parser.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary")
    parser.add_argument("--num-proc", type=int, default=2, help="datasets.map processes")
    parser.add_argument("--repeats", type=int, default=3, help="timings per method (best kept)")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 18, help="data.chunk_bytes of the per-file run")
    parser.add_argument("--register-gb", type=float, default=2.0, help="GB of token shards to register")
    parser.add_argument("--register-prefixes", type=int, default=16, help="prefixes they are spread over")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="regmix-bench-prepare-") as tmp:
        root = Path(tmp)
        settings = SynthSettings(seed=0, docs_per_domain=args.docs_per_domain, target_docs=300,
                                 vocab_size=args.vocab_size)
        config = ExperimentConfig.load(synthesize(root, settings)["config"])
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_proc=args.num_proc))
        sources = stage.resolve_sources(config)
        raw = {s.name: stage.load_raw(s, root / "cache", None if s.is_target else config.data.valid_documents)
               for s in sources}
        tokenizer_dir = config.resolve(config.data.tokenizer)
        tok.train_tokenizer(stage.training_texts(raw, sources), args.vocab_size, tokenizer_dir, "benchmark")
        tokenizer = tok.load_tokenizer(config.data.tokenizer, tokenizer_dir, "data.tokenizer")
        texts = [t for s in sources for t in raw[s.name][s.text_field] if t and not t.isspace()]
        characters = sum(map(len, texts))

        raw_tokens = raw_tokenize(tokenizer, texts)

        manifests = []

        def pipeline() -> None:
            stages = {s.name: functools.partial(stage.build_source, s, raw[s.name], tokenizer, config, root / "cache")
                      for s in sources}
            manifests.append(stage.write_data_set(sources, config, tokenizer, stages))

        # Interleaved, best of each: on a shared machine the load drifts between runs.
        raw_times, pipeline_times = [], []
        for _ in range(args.repeats):
            raw_times.append(timed(lambda: raw_tokenize(tokenizer, texts)))
            pipeline_times.append(timed(pipeline))
        raw_s, pipeline_s = min(raw_times), min(pipeline_times)
        manifest = manifests[-1]
        splits = [*manifest.train.values(), *manifest.valid.values()]
        pipeline_tokens = sum(s.tokens - s.documents for s in splits)  # EOS excluded, as in raw
        assert pipeline_tokens == raw_tokens, (pipeline_tokens, raw_tokens)

        def end_to_end() -> None:
            shutil.rmtree(config.work.data.path, ignore_errors=True)
            stage.prepare(config)

        end_to_end_s = min(timed(end_to_end) for _ in range(args.repeats))
        per_file_config = dataclasses.replace(config, work_dir=str(root / "work_per_file"), data=dataclasses.replace(
            config.data, shard_by="file", chunk_bytes=args.chunk_bytes))
        tasks = len(stage.part_tasks.plan_tasks(per_file_config, stage.resolve_sources(per_file_config)))

        def per_file() -> None:
            shutil.rmtree(per_file_config.work_dir, ignore_errors=True)
            stage.prepare(per_file_config)

        per_file_s = min(timed(per_file) for _ in range(args.repeats))
        registration = register_existing(root / "megatron", tokenizer_dir, args.register_gb, args.register_prefixes)

    figures = {
        "documents": len(texts),
        "characters": characters,
        "tokens": raw_tokens,
        "vocab_size": len(tokenizer),
        "num_proc": args.num_proc,
        "map_workers_largest_domain": max(stage.map_workers(len(d), args.num_proc) for d in raw.values()),
        "cpus": os.cpu_count(),
        "raw_tokens_per_s": round(raw_tokens / raw_s),
        "pipeline_tokens_per_s": round(raw_tokens / pipeline_s),
        "end_to_end_tokens_per_s": round(raw_tokens / end_to_end_s),
        "ratio": round(raw_s / pipeline_s, 3),
        "per_file_tasks": tasks,
        "per_file_tokens_per_s": round(raw_tokens / per_file_s),
        **registration,
    }
    print(f"raw tokenizer(batch):            {raw_s:7.2f} s  {figures['raw_tokens_per_s']:>10,} tokens/s")
    print(f"pipeline (map+EOS+split+write):  {pipeline_s:7.2f} s  {figures['pipeline_tokens_per_s']:>10,} tokens/s")
    print(f"end to end (with jsonl loading): {end_to_end_s:7.2f} s  {figures['end_to_end_tokens_per_s']:>10,} tokens/s")
    print(f"per file ({tasks} tasks + merge):  {per_file_s:7.2f} s  {figures['per_file_tokens_per_s']:>10,} tokens/s")
    print(f"register {figures['register_gb']:.2f} GB in {args.register_prefixes} prefixes: "
          f"{figures['register_seconds']:.3f} s ({figures['register_seconds_per_gb']:.3f} s/GB)")
    print(json.dumps(figures))


def register_existing(directory: Path, tokenizer_dir: Path, gigabytes: float, prefixes: int) -> dict:
    """Write `prefixes` Megatron shards of `gigabytes` GB of uint16 tokens over two domains, drop them
    from the page cache, and time a fresh `prepare()` that registers them (held-out valid copied)."""
    rng = np.random.default_rng(0)
    tokens_per_prefix = int(gigabytes * 1e9 / 2 / prefixes)
    block = 1 << 24
    for k in range(prefixes):
        prefix = directory / f"d{k % 2}" / f"d{k % 2}_{k:03d}_text_document"
        with IndexedWriter(prefix, np.uint16) as writer:
            for start in range(0, tokens_per_prefix, block):
                size = min(block, tokens_per_prefix - start)
                lengths = np.full(size // 1000, 1000, dtype=np.int64)
                lengths[-1] += size - lengths.sum()
                writer.add_documents(rng.integers(0, 256, size=size, dtype=np.uint16), lengths)
        for path in paths_of(prefix):
            drop_from_page_cache(path)
    config_path = directory / "exp.yaml"
    domains = {f"d{d}": {"prefixes": [str(directory / f"d{d}" / "*_text_document")]} for d in range(2)}
    config_path.write_text(json.dumps({"work_dir": "work", "data": {"tokenizer": str(tokenizer_dir),
                                                                     "domains": domains}}))
    config = ExperimentConfig.load(config_path)
    seconds = timed(lambda: stage.prepare(config))
    total_gb = sum(p.stat().st_size for p in directory.rglob("*.bin")) / 1e9
    return {"register_gb": round(total_gb, 3), "register_prefixes": prefixes,
            "register_seconds": round(seconds, 3), "register_seconds_per_gb": round(seconds / total_gb, 4)}


def drop_from_page_cache(path: Path) -> None:
    """Make a later read come from the disk: flush the file and tell the kernel its pages are not needed."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
