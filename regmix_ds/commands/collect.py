"""`regmix-ds collect`: proxies' results -> results.csv, and the sbatch line for what is left."""
from regmix_ds.commands.proxy import TIERS
from regmix_ds.core.settings import bounded

ORDER = 50


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="gather proxies/n*/result.json into results.csv; report done/running/failed/missing/pending",
        description="Writes <work_dir>/results.csv (atomically) and prints how many proxies are done, "
        "running, failed, missing and pending (their array task waits in Slurm's queue, asked with squeue), "
        "with the sbatch line that trains only the failed and missing ones.",
    )
    parser.add_argument("--config", required=True, help="experiment config (exp.yaml)")
    parser.add_argument("--stale-minutes", type=bounded(float, above=0), default=30.0,
                        help="a run directory unchanged this long without a result counts as failed (default 30)")
    parser.add_argument("--throttle", type=bounded(int, low=1), default=64,
                        help="array throttle in the printed sbatch line (default 64)")
    parser.add_argument("--tier", default="swarm", choices=TIERS,
                        help="which proxies: the swarm, or the transfer check's larger ones (default swarm)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.pipeline import collect, proxies, slurm

    experiment = ExperimentConfig.load(args.config)
    queued = slurm.queued_tasks(experiment.path, args.tier)
    collection = collect.collect(experiment, stale_seconds=args.stale_minutes * 60, queued=queued, tier=args.tier)
    counts = collection.counts()
    print(" ".join(f"{status} {counts.get(status, 0)}" for status in collect.STATUSES),
          f"-> {experiment.work.tier(args.tier).results}")
    if queued is None:
        print("Slurm could not be asked (no squeue, or it failed): a task waiting in a queue counts as missing")
    todo = collection.indices("failed", "missing")
    if todo:
        print("to train the failed and missing ones:", proxies.sbatch_line(experiment, todo, args.throttle, args.tier))
    return 0
