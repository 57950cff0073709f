"""`regmix-ds export`: the chosen mixture as another trainer's arguments (work in `data.export`)."""
from __future__ import annotations

import argparse

from regmix_ds.core.errors import RegmixError

ORDER = 75


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="print the mixture as Megatron-LM/Megatron-DeepSpeed --data-path arguments",
        description="Prints `weight prefix weight prefix ...` over the domains' train .bin/.idx prefixes from the "
        "manifest (zero-weight domains left out), for `--data-path $(regmix-ds export ...)`.",
    )
    parser.add_argument("--format", default="megatron", choices=["megatron"], help="output format (default megatron)")
    parser.add_argument("--mixture", metavar="JSON",
                        help="mixture file, e.g. best.json (default with --config: <work_dir>/best.json)")
    parser.add_argument("--manifest", metavar="JSON",
                        help="manifest.json (default with --config: <work_dir>/data/manifest.json)")
    parser.add_argument("--config", metavar="EXP_YAML", help="experiment config supplying the two defaults above")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.data.export import export

    experiment = ExperimentConfig.load(args.config) if args.config else None
    mixture = args.mixture or (experiment.work.best if experiment else None)
    manifest = args.manifest or (experiment.work.manifest if experiment else None)
    for flag, value in (("--mixture", mixture), ("--manifest", manifest)):
        if value is None:
            raise RegmixError(flag, "required without --config")
    print(export(args.format, mixture, manifest))
