"""`regmix-ds report`: PNG plots of a fit and of the chosen mixture (work in `regress.report`)."""
from __future__ import annotations

import argparse

from regmix_ds.core.errors import RegmixError

ORDER = 80


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="PNG plots: cross-validated predicted vs measured, chosen weights vs prior, weight vs target",
        description="Writes predicted_vs_measured.png (one panel per surrogate after fit --regressor auto) and "
        "domain_vs_target.png from a fit, rounds.png for a swarm of several rounds, transfer.png from a transfer "
        "check, and weights.png (chosen weights with intervals next to the prior) when a "
        "best.json is given; several --best (say one per surrogate) are drawn side by side.",
    )
    parser.add_argument("--config", metavar="EXP_YAML", help="experiment config: model <work_dir>/fit, best.json "
                        "<work_dir>/best.json (if present), output <work_dir>/report")
    parser.add_argument("--model", metavar="DIR", help="output directory of regmix-ds fit")
    parser.add_argument("--best", metavar="JSON", action="append",
                        help="best.json from regmix-ds simulate (for weights.png); repeat it to compare mixtures")
    parser.add_argument("--transfer", metavar="JSON", help="transfer.json of regmix-ds transfer, for transfer.png "
                        "(with --config: <work_dir>/transfer/transfer.json if present)")
    parser.add_argument("--out", metavar="DIR", help="directory for the PNGs")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.regress.report import report

    experiment = ExperimentConfig.load(args.config) if args.config else None
    model = args.model or (experiment.work.fit.path if experiment else None)
    out = args.out or (experiment.work.report if experiment else None)
    best = args.best
    if best is None and experiment is not None and experiment.work.best.exists():
        best = [experiment.work.best]
    transfer = args.transfer
    if transfer is None and experiment is not None and experiment.work.transfer_report.exists():
        transfer = experiment.work.transfer_report
    for flag, value in (("--model", model), ("--out", out)):
        if value is None:
            raise RegmixError(flag, "required without --config")
    for path in report(model, out, best, transfer):
        print(path)
