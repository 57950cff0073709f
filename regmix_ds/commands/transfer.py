"""`regmix-ds transfer`: does the swarm's ranking hold for larger proxies? (work in `pipeline.transfer`)."""
from __future__ import annotations

import argparse

ORDER = 72


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "transfer",
        help="check that the mixtures rank the same with larger proxies (train some again, compare ranks)",
        description="With --config: picks transfer.count swarm mixtures spread over the fit's predicted range, plus "
        "the chosen and the natural mixture, as the transfer tier; run it again while they train (it prints the "
        "sbatch line, or use `regmix-ds run-swarm --tier transfer`), and once they are done it reports Spearman "
        "and Kendall between the two sizes with bootstrap intervals, where the chosen mixture ranks at the larger "
        "size, and a verdict (transfer/transfer.json). With --small and --large: compares any two result tables "
        "(our results.csv, or RegMix's mixtures.csv,losses.csv pairs), training nothing.",
    )
    parser.add_argument("--config", metavar="EXP_YAML", help="experiment config (exp.yaml)")
    parser.add_argument("--small", metavar="TABLE",
                        help="the small proxies' table: results.csv or MIXTURES.csv,LOSSES.csv")
    parser.add_argument("--large", metavar="TABLE", help="the larger proxies' table, the same forms")
    parser.add_argument("--target", help="the loss both are ranked by (with --small/--large; default pile_cc)")
    parser.add_argument("--throttle", type=int, default=64,
                        help="array throttle in the printed sbatch line (default 64)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from regmix_ds.core.errors import RegmixError

    if (args.config is None) == (args.small is None and args.large is None):
        raise RegmixError("--config", "give --config, or --small with --large (not both)")
    if args.config is None:
        return compare_tables(args)
    return check_experiment(args)


def compare_tables(args: argparse.Namespace) -> int:
    """Two tables in, the verdict out: nothing is trained or written."""
    from regmix_ds.core.config import TransferConfig
    from regmix_ds.core.errors import RegmixError
    from regmix_ds.regress.tables import Target
    from regmix_ds.regress.transfer import paired_losses, rank_agreement

    if args.small is None or args.large is None:
        raise RegmixError("--large" if args.large is None else "--small", "--small and --large go together")
    small, large = read_table(args.small, "--small"), read_table(args.large, "--large")
    pairs = paired_losses(small, large, Target.parse(args.target or "pile_cc"))
    defaults = TransferConfig()
    agreement = rank_agreement(pairs.small, pairs.large, resamples=defaults.bootstrap, confidence=defaults.confidence,
                               seed=defaults.seed, threshold=defaults.min_spearman)
    print(agreement.verdict(args.small, args.large))
    return 0


def read_table(spec: str, flag: str):
    """`results.csv`, or RegMix's pair `mixtures.csv,losses.csv`."""
    from regmix_ds.core.errors import RegmixError
    from regmix_ds.regress.tables import read_regmix_tables, read_results

    parts = spec.split(",")
    if len(parts) == 1:
        return read_results(parts[0])
    if len(parts) == 2:
        return read_regmix_tables(*parts)
    raise RegmixError(flag, f"expected results.csv or MIXTURES.csv,LOSSES.csv, got {spec!r}")


def check_experiment(args: argparse.Namespace) -> int:
    """Select (once), report what is left to train, or compare."""
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.pipeline import collect, proxies, slurm, transfer

    experiment = ExperimentConfig.load(args.config)
    tier = experiment.work.tier("transfer")
    if not tier.swarm.path.is_dir():
        transfer.write_selection(experiment, transfer.select(experiment))
        print(f"{tier.swarm.path}: {experiment.transfer.count} swarm mixtures, the chosen and the natural one, "
              f"to train with {experiment.transfer.preset or experiment.transfer.model_config}")
    collection = collect.collect(experiment, queued=slurm.queued_tasks(experiment.path, "transfer"), tier="transfer")
    todo = collection.indices("failed", "missing")
    unfinished = [row.index for row in collection.rows if row.status != "done"]
    if unfinished:
        counts = collection.counts()
        print(" ".join(f"{status} {counts.get(status, 0)}" for status in collect.STATUSES), f"-> {tier.results}")
        if todo:
            print("train them on Slurm:", proxies.sbatch_line(experiment, todo, args.throttle, "transfer"))
            print(f"or here: regmix-ds run-swarm --config {experiment.path} --tier transfer --jobs 2")
        return 0
    comparison = transfer.compare(experiment)
    print(comparison.verdict)
    print(f"-> {experiment.work.transfer_report}")
    return 0
