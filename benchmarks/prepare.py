"""How close `prepare` runs to the tokenizer's own speed.

Builds a synthetic corpus, trains a BPE on it, then on the same text measures
  raw:       `tokenizer(batch)` over batches of documents, in this process (Rust threads on);
  pipeline:  what `prepare` does per domain once the text is loaded: `datasets.map(batched,
             num_proc)` tokenization + EOS + train/valid split + writing Megatron shards;
  end_to_end: a whole fresh `prepare()` run, also reading the jsonl files.
Each is timed `--repeats` times (raw and pipeline interleaved) and the best kept. The last line is one JSON object.

    python benchmarks/prepare.py [--docs-per-domain 2000] [--vocab-size 4096] [--num-proc 2] [--repeats 3]

With fewer than MIN_BATCHES_PER_WORKER batches per worker a domain is tokenized in one
process (the tokenizer's Rust threads still use every core); --docs-per-domain 20000 makes
the map use its worker pool.
"""
from __future__ import annotations

import argparse
import dataclasses
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

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.data import prepare as stage
from regmix_ds.data import tokenizer as tok
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

        def pipeline() -> None:
            for source in sources:
                stage.build_source(source, raw[source.name], tokenizer, config, root / "cache")

        # Interleaved, best of each: on a shared machine the load drifts between runs.
        raw_times, pipeline_times = [], []
        for _ in range(args.repeats):
            raw_times.append(timed(lambda: raw_tokenize(tokenizer, texts)))
            pipeline_times.append(timed(pipeline))
        raw_s, pipeline_s = min(raw_times), min(pipeline_times)
        manifest = stage.save_manifest(sources, config.work.data, config, tokenizer)
        splits = [*manifest.train.values(), *manifest.valid.values()]
        pipeline_tokens = sum(s.tokens - s.documents for s in splits)  # EOS excluded, as in raw
        assert pipeline_tokens == raw_tokens, (pipeline_tokens, raw_tokens)

        def end_to_end() -> None:
            shutil.rmtree(config.work.data.path, ignore_errors=True)
            stage.prepare(config)

        end_to_end_s = min(timed(end_to_end) for _ in range(args.repeats))

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
    }
    print(f"raw tokenizer(batch):            {raw_s:7.2f} s  {figures['raw_tokens_per_s']:>10,} tokens/s")
    print(f"pipeline (map+EOS+split+write):  {pipeline_s:7.2f} s  {figures['pipeline_tokens_per_s']:>10,} tokens/s")
    print(f"end to end (with jsonl loading): {end_to_end_s:7.2f} s  {figures['end_to_end_tokens_per_s']:>10,} tokens/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
