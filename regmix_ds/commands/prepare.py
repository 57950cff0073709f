"""`regmix-ds prepare`: tokenize every domain into Megatron shards and write the manifest."""
from __future__ import annotations

import argparse

ORDER = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="raw text per domain -> token shards (.bin/.idx) + manifest.json",
        description="Read each domain's jsonl/parquet/txt files (or saved HF dataset), tokenize, split "
        "train/valid, and write <work_dir>/data/<domain>_{train,valid}.bin/.idx and manifest.json. "
        "Domains whose inputs have not changed since the last run are skipped.",
    )
    parser.add_argument("--config", required=True, help="experiment config (exp.yaml)")
    parser.add_argument(
        "--train-tokenizer",
        action="store_true",
        help="train a byte-level BPE (data.vocab_size) on the domains and save it at data.tokenizer "
        "instead of loading one; reused when the corpus has not changed",
    )
    parser.add_argument("--force", action="store_true",
                        help="rebuild every domain (and retrain the tokenizer) even if current")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.data.prepare import prepare

    manifest = prepare(ExperimentConfig.load(args.config), train_tokenizer=args.train_tokenizer, force=args.force)
    total = sum(split.tokens for split in manifest.train.values())
    print(f"{manifest.path}: {len(manifest.domains)} domains, {total:,} training tokens, "
          f"vocabulary {manifest.vocab_size}")
