"""`regmix-ds prepare`: tokenize each domain into Megatron shards (or register existing ones); write the manifest."""
from __future__ import annotations

import argparse

ORDER = 20
SCRIPT = "slurm/prepare.sh"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="raw text per domain -> token shards (.bin/.idx), or existing shards registered -> manifest.json",
        description="Read each domain's jsonl/parquet/txt files (or saved HF dataset), tokenize, split "
        "train/valid, and write <work_dir>/data/<domain>_{train,valid}.bin/.idx and manifest.json; a domain "
        "given as Megatron prefixes is registered from its index headers, never re-tokenized. Domains whose "
        "inputs have not changed since the last run are skipped. With data.shard_by: file the work is one task "
        "per input file (or chunk): --plan lists them and prints the sbatch line, --task I runs one "
        "(slurm/prepare.sh does), and the last task to finish writes the manifest; without --task every task "
        "runs here in turn.",
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
    parser.add_argument("--plan", action="store_true",
                        help="data.shard_by: file: list the tokenize tasks and print the sbatch line (with "
                             "--train-tokenizer, train the tokenizer the tasks need first); nothing else is written")
    parser.add_argument("--task", type=int, metavar="I",
                        help="data.shard_by: file: run tokenize task I (1-based, a Slurm array index) only, "
                             "then write the manifest if every task is done")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.core.errors import RegmixError
    from regmix_ds.data import prepare as stage

    config = ExperimentConfig.load(args.config)
    if args.task is not None and (args.plan or args.train_tokenizer or args.force):
        raise RegmixError("--task", "runs one task as it is: train the tokenizer first (--plan --train-tokenizer), "
                                    "and to redo a task delete its part-<k>.json")
    if args.plan:
        print_plan(stage.plan(config, train_tokenizer=args.train_tokenizer, force=args.force), config.path)
        return
    if args.task is not None:
        report = stage.run_array_task(config, args.task)
        print(task_line(report))
        if report.manifest is None:
            print("other tasks are not done yet; the last one to finish writes the manifest")
            return
        manifest = report.manifest
    else:
        manifest = stage.prepare(config, train_tokenizer=args.train_tokenizer, force=args.force)
    total = sum(split.tokens for split in manifest.train.values())
    print(f"{manifest.path}: {len(manifest.domains)} domains, {total:,} training tokens, "
          f"vocabulary {manifest.vocab_size}")


def print_plan(tasks: list, config_path: str) -> None:
    """The first tasks, and the line that submits them all."""
    for task in tasks[:20]:
        print(f"{task.index:>6}  {task.source.name}  {task.label}")
    if len(tasks) > 20:
        print(f"   ...  ({len(tasks) - 20} more)")
    print(f"{len(tasks)} tasks; on Slurm: sbatch --array=1-{len(tasks)} {SCRIPT} {config_path}" if tasks
          else "no raw text to tokenize: `regmix-ds prepare --config` registers the shards")


def task_line(report) -> str:
    """What one array task did, in one line."""
    shards = ", ".join(f"{split} {s.documents:,} documents / {s.tokens:,} tokens" for split, s in report.shards.items())
    what = f"wrote {shards}" if report.wrote else "already done, nothing to do"
    return f"task {report.task.index} of {report.tasks} ({report.task.source.name}: {report.task.label}): {what}"
