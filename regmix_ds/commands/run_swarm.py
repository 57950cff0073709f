"""`regmix-ds run-swarm`: train the swarm on this machine, without Slurm."""
from regmix_ds.commands.proxy import MAX_JOBS, TIERS
from regmix_ds.core.settings import bounded

ORDER = 45


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run-swarm",
        help="train every (or some) proxy locally, several at once; finished ones are skipped",
        description="The local stand-in for `sbatch slurm/proxies.sh`: runs `regmix-ds proxy` for each "
        "swarm index, --jobs at a time with the cores shared out, logs in proxies/n<i>/proxy.log.",
    )
    parser.add_argument("--config", required=True, help="experiment config (exp.yaml)")
    parser.add_argument("--jobs", type=bounded(int, low=1, high=MAX_JOBS), default=1,
                        help="proxies trained at once (default 1)")
    parser.add_argument("--indices", help="only these swarm indices, e.g. 1-16,20 (default: all)")
    parser.add_argument("--tier", default="swarm", choices=TIERS,
                        help="which proxies: the swarm, or the transfer check's larger ones (default swarm)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.pipeline import proxies

    indices = proxies.parse_ranges(args.indices, "--indices") if args.indices else None
    failed = proxies.train_swarm(ExperimentConfig.load(args.config), indices, args.jobs, args.tier)
    if failed:
        print(f"run-swarm: {len(failed)} proxies failed: {proxies.format_ranges(failed)}")
        return 1
    return 0
