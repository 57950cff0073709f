"""`regmix-ds verify`: train the chosen and the natural mixture as proxies and compare."""
from regmix_ds.commands.proxy import MAX_JOBS
from regmix_ds.core.settings import bounded

ORDER = 85


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="train best.json and the natural mixture as proxies; compare with the swarm's best and median",
        description="Trains the chosen mixture (<work_dir>/best.json) and the natural one (token shares) "
        "with the swarm's proxy settings (and --reference, if given), then prints and writes "
        "summary.md and verify.json: each one's measured target loss beside the best and median swarm member.",
    )
    parser.add_argument("--config", required=True, help="experiment config (exp.yaml); fit.target names the target")
    parser.add_argument("--reference",
                        help="one more mixture JSON to train and compare, its row named after the file (e.g. the "
                        "synthetic corpus's target_composition.json: the mixture its target text was drawn from)")
    parser.add_argument("--out", help="report folder (default <work_dir>/report)")
    parser.add_argument("--jobs", type=bounded(int, low=1, high=MAX_JOBS), default=2,
                        help="proxies trained at once (default 2)")
    parser.add_argument("--oracle", help="an oracle search's oracle.json (benchmarks/rounds.py writes one per "
                        "corpus seed): report each mixture's regret against its best measured loss")
    parser.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.pipeline.verify import verify

    experiment = ExperimentConfig.load(args.config)
    out = Path(args.out) if args.out else experiment.work.report
    verify(experiment, out, Path(args.reference) if args.reference else None, args.jobs,
           Path(args.oracle) if args.oracle else None)
    return 0
