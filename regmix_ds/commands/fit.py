"""`regmix-ds fit`: regression from mixture weights to a target loss (arguments only; work in regmix_ds.fit)."""
from __future__ import annotations

import argparse

from regmix_ds.cli import add_setting_flags, flags_given, with_flags
from regmix_ds.errors import RegmixError

ORDER = 60

# Flag -> FitConfig field, with its help. Unset flags leave the exp.yaml fit: value (or default) alone.
SETTINGS: dict[str, tuple[type, str]] = {
    "target": (str, "loss to predict: a short name (pile_cc), a loss column, or a weighted sum pile_cc=0.7,github=0.3"),
    "regressor": (str, "lightgbm (default) or linear (ordinary least squares)"),
    "trees": (int, "most LightGBM trees; cross-validation in the training runs picks the count (default 1000)"),
    "learning_rate": (float, "LightGBM learning rate (default 0.01)"),
    "subsample": (float, "fraction of runs each tree sees, LightGBM bagging; 1.0 is RegMix's exact setting (default 0.8)"),
    "min_data_in_leaf": (int, "fewest runs in a LightGBM leaf (default 20); lower it for small swarms"),
    "folds": (int, "k of the k-fold cross-validation (default 5)"),
    "early_stopping": (int, "trees without improvement of the mean fold loss before stopping (default 100)"),
    "seed": (int, "seed of the folds and of LightGBM (default 0)"),
    "threads": (int, "LightGBM training threads (default 1: the tables are tiny)"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="fit the regression mixture -> target loss; k-fold cross-validated report",
        description="Input: our results.csv (--results, or --config: <work_dir>/results.csv, runs with status "
        "'done'), or RegMix's layout (--mixtures + --losses, joined on index, rows renormalised). Writes "
        "DIR/model.json (+ model.txt for LightGBM), DIR/fit_report.json (k-fold Spearman, Pearson, RMSE) and "
        "DIR/cv_predictions.csv. Flags override the exp.yaml fit: section.",
    )
    parser.add_argument("--config", metavar="EXP_YAML", help="experiment config: reads <work_dir>/results.csv and the fit: section, writes <work_dir>/fit/")
    parser.add_argument("--results", metavar="CSV", help="our results.csv (index, status, w:<domain>, loss:<name>, ...)")
    parser.add_argument("--mixtures", metavar="CSV", help="RegMix layout: index + one weight column per domain")
    parser.add_argument("--losses", metavar="CSV", help="RegMix layout: index + one loss column per validation set")
    parser.add_argument("--eval-mixtures", metavar="CSV", help="held-out runs' mixtures (RegMix layout), for an evaluation")
    parser.add_argument("--eval-losses", metavar="CSV", help="held-out runs' losses (RegMix layout)")
    parser.add_argument("--eval-results", metavar="CSV", help="held-out runs as our results.csv")
    parser.add_argument("--out", metavar="DIR", help="output directory (default with --config: <work_dir>/fit)")
    add_setting_flags(parser, SETTINGS)
    parser.set_defaults(run=run)


def _training_table(args: argparse.Namespace, experiment):
    from regmix_ds.tables import read_regmix_tables, read_results

    chosen = [flag for flag, on in (("--config", experiment), ("--results", args.results), ("--mixtures/--losses", args.mixtures or args.losses)) if on]
    if len(chosen) != 1:
        raise RegmixError("--results", f"give exactly one input: --results, --mixtures with --losses, or --config (got {', '.join(chosen) or 'none'})")
    if experiment is not None:
        return read_results(experiment.results_path)
    if args.results:
        return read_results(args.results)
    if not (args.mixtures and args.losses):
        raise RegmixError("--losses" if args.mixtures else "--mixtures", "--mixtures and --losses go together")
    return read_regmix_tables(args.mixtures, args.losses)


def _evaluation_table(args: argparse.Namespace):
    from regmix_ds.tables import read_regmix_tables, read_results

    if args.eval_results and (args.eval_mixtures or args.eval_losses):
        raise RegmixError("--eval-results", "give --eval-results or --eval-mixtures with --eval-losses, not both")
    if args.eval_results:
        return read_results(args.eval_results)
    if bool(args.eval_mixtures) != bool(args.eval_losses):
        raise RegmixError("--eval-losses" if args.eval_mixtures else "--eval-mixtures", "--eval-mixtures and --eval-losses go together")
    return read_regmix_tables(args.eval_mixtures, args.eval_losses) if args.eval_mixtures else None


def run(args: argparse.Namespace) -> None:
    from regmix_ds.config import ExperimentConfig, FitConfig
    from regmix_ds.fit import fit
    from regmix_ds.tables import Target

    experiment = ExperimentConfig.load(args.config) if args.config else None
    settings = with_flags(experiment.fit if experiment else FitConfig(), flags_given(args, SETTINGS), "fit.")
    out = args.out or (experiment.fit_dir if experiment else None)
    if out is None:
        raise RegmixError("--out", "required without --config")
    if not settings.target:
        raise RegmixError("--target", "required (or fit.target in the config)")
    target = Target.parse(settings.target)
    table = _training_table(args, experiment)
    report = fit(table, target, settings, out, evaluation=_evaluation_table(args))
    print(_summary(report, out))


def _summary(report: dict, out) -> str:
    from regmix_ds.fit import format_quality

    label = report["target"]
    lines = [f"{out}: {report['regressor']} on {report['runs']} runs, target {label}"
             + (f", {report['trees']} trees" if report["trees"] else "")]
    for name, section in (("cross-validated", report["cross_validation"]), ("held-out", report.get("evaluation"))):
        if section:
            metrics = section["metrics"][label]
            lines.append(f"  {name}: {format_quality(metrics)} ({metrics['runs']} runs)")
    return "\n".join(lines)
