"""`regmix-ds fit`: regression from mixture weights to a target loss (arguments only; work in `regress.fit`)."""
from __future__ import annotations

import argparse

from regmix_ds.core.config import FitConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.settings import add_flags, apply_flags, flags_given, named_by_flags

ORDER = 60


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="fit the regression mixture -> target loss; k-fold cross-validated report",
        description="Input: our results.csv (--results, or --config: <work_dir>/results.csv, runs with status "
        "'done'), or RegMix's layout (--mixtures + --losses, joined on index, rows renormalised). Writes "
        "DIR/model.json (+ model.txt for trees), DIR/fit_report.json (k-fold Spearman, Pearson, RMSE of every "
        "surrogate tried) and DIR/cv_predictions.csv; with --regressor auto also DIR/candidates/<surrogate>/, with "
        "--all-losses DIR/losses/<loss>/. Flags override the exp.yaml fit: section.",
    )
    parser.add_argument("--config", metavar="EXP_YAML",
                        help="experiment config: reads <work_dir>/results.csv and the fit: section, "
                        "writes <work_dir>/fit/")
    parser.add_argument("--results", metavar="CSV",
                        help="our results.csv (index, status, w:<domain>, loss:<name>, ...)")
    parser.add_argument("--mixtures", metavar="CSV", help="RegMix layout: index + one weight column per domain")
    parser.add_argument("--losses", metavar="CSV", help="RegMix layout: index + one loss column per validation set")
    parser.add_argument("--eval-mixtures", metavar="CSV",
                        help="held-out runs' mixtures (RegMix layout), for an evaluation")
    parser.add_argument("--eval-losses", metavar="CSV", help="held-out runs' losses (RegMix layout)")
    parser.add_argument("--eval-results", metavar="CSV", help="held-out runs as our results.csv")
    parser.add_argument("--out", metavar="DIR", help="output directory (default with --config: <work_dir>/fit)")
    add_flags(parser, FitConfig, overrides=True)
    parser.set_defaults(run=run)


def _training_table(args: argparse.Namespace, experiment):
    from regmix_ds.regress.tables import read_regmix_tables, read_results

    chosen = [flag for flag, on in (("--config", experiment), ("--results", args.results),
                                    ("--mixtures/--losses", args.mixtures or args.losses)) if on]
    if len(chosen) != 1:
        raise RegmixError("--results", "give exactly one input: --results, --mixtures with --losses, or --config "
                          f"(got {', '.join(chosen) or 'none'})")
    if experiment is not None:
        return read_results(experiment.work.results)
    if args.results:
        return read_results(args.results)
    if not (args.mixtures and args.losses):
        raise RegmixError("--losses" if args.mixtures else "--mixtures", "--mixtures and --losses go together")
    return read_regmix_tables(args.mixtures, args.losses)


def _evaluation_table(args: argparse.Namespace):
    from regmix_ds.regress.tables import read_regmix_tables, read_results

    if args.eval_results and (args.eval_mixtures or args.eval_losses):
        raise RegmixError("--eval-results", "give --eval-results or --eval-mixtures with --eval-losses, not both")
    if args.eval_results:
        return read_results(args.eval_results)
    if bool(args.eval_mixtures) != bool(args.eval_losses):
        raise RegmixError("--eval-losses" if args.eval_mixtures else "--eval-mixtures",
                          "--eval-mixtures and --eval-losses go together")
    return read_regmix_tables(args.eval_mixtures, args.eval_losses) if args.eval_mixtures else None


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.regress.fit import fit
    from regmix_ds.regress.tables import Target

    experiment = ExperimentConfig.load(args.config) if args.config else None
    given, file = flags_given(args, FitConfig), experiment.path if experiment else ""
    out = args.out or (experiment.work.fit.path if experiment else None)
    if out is None:
        raise RegmixError("--out", "required without --config")
    with named_by_flags(FitConfig, given, file):
        settings = apply_flags(FitConfig, given, experiment.fit if experiment else None, file)
        if not settings.target:
            raise RegmixError("--target", "required (or fit.target in the config)")
        target = Target.parse(settings.target)
        table = _training_table(args, experiment)
        report = fit(table, target, settings, out, evaluation=_evaluation_table(args))
    print(_summary(report, out))


def _summary(report: dict, out) -> str:
    from regmix_ds.regress.fit import format_quality

    label = report["target"]
    lines = [f"{out}: {report['regressor']} on {report['runs']} runs, target {label}"
             + (f", {report['trees']} trees" if report["trees"] else "")]
    for name, section in (("cross-validated", report["cross_validation"]), ("held-out", report.get("evaluation"))):
        if section:
            metrics = section["metrics"][label]
            lines.append(f"  {name}: {format_quality(metrics)} ({metrics['runs']} runs)")
    candidates = report["selection"]["candidates"]
    if len(candidates) > 1:
        lines.append(f"  auto kept {report['regressor']} by {report['selection']['by']}; every surrogate tried:")
        held_out = (report.get("evaluation") or {}).get("candidates", {})
        for name, entry in candidates.items():
            line = f"    {name}: cross-validated {format_quality(entry['metrics'])}"
            lines.append(line + (f"; held-out {format_quality(held_out[name])}" if name in held_out else ""))
    for name, entry in report.get("losses", {}).items():
        lines.append(f"  loss {name}: cross-validated {format_quality(entry['metrics'])}")
    return "\n".join(lines)
