"""`regmix-ds export`: the chosen mixture as Megatron-LM's data arguments (work in `data.export`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regmix_ds.core.errors import RegmixError

ORDER = 75


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="print the mixture as Megatron-LM/Megatron-DeepSpeed --data-path arguments (and write the files)",
        description="Prints `weight prefix weight prefix ...` over the domains' train .bin/.idx prefixes from the "
        "manifest, each domain's weight split over its prefixes by their tokens (zero-weight domains left out), "
        "for `--data-path $(regmix-ds export ...)`. With --out (or --config) it also writes data_args.txt "
        "(--data-args-path) and per_split_data_args.json (--per-split-data-args-path, train and valid blends). "
        "Notes on stderr: the --split each form needs, and with --target-tokens each domain's epochs.",
    )
    parser.add_argument("--format", default="megatron", choices=["megatron"], help="output format (default megatron)")
    parser.add_argument("--mixture", metavar="JSON",
                        help="mixture file, e.g. best.json (default with --config: <work_dir>/best.json)")
    parser.add_argument("--manifest", metavar="JSON",
                        help="manifest.json (default with --config: <work_dir>/data/manifest.json)")
    parser.add_argument("--out", metavar="DIR",
                        help="write data_args.txt and per_split_data_args.json here "
                             "(default with --config: <work_dir>/megatron)")
    parser.add_argument("--target-tokens", type=int, metavar="N",
                        help="tokens the Megatron run trains on: print how many epochs of each domain that reads "
                             "(default with --config: simulate.target_tokens)")
    parser.add_argument("--config", metavar="EXP_YAML", help="experiment config supplying the defaults above")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.core.layout import MegatronDir
    from regmix_ds.data.export import export

    experiment = ExperimentConfig.load(args.config) if args.config else None
    mixture = args.mixture or (experiment.work.best if experiment else None)
    manifest = args.manifest or (experiment.work.manifest if experiment else None)
    for flag, value in (("--mixture", mixture), ("--manifest", manifest)):
        if value is None:
            raise RegmixError(flag, "required without --config")
    out = MegatronDir(Path(args.out).absolute()) if args.out else (experiment.work.megatron if experiment else None)
    target_tokens = args.target_tokens
    if target_tokens is None and experiment is not None:
        target_tokens = experiment.simulate.target_tokens
    line, notes = export(args.format, mixture, manifest, out, target_tokens)
    print(line)
    for note in notes:
        print(note, file=sys.stderr)
