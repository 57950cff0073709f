"""`regmix-ds proxy`: train one swarm member (what each Slurm array task runs)."""
ORDER = 40


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="train proxy i of the swarm, or any mixture with the proxy settings (skips finished, resumes interrupted)",
        description="Train swarm member INDEX on swarm/n<INDEX>.json into proxies/n<INDEX>/ with the "
        "experiment's proxy: settings. Exits 0 at once if its result.json exists; resumes from its newest "
        "checkpoint otherwise. Exit 75 means it checkpointed on SIGTERM/SIGUSR1 and wants a requeue.",
    )
    parser.add_argument("--config", required=True, help="experiment config (exp.yaml)")
    parser.add_argument("--index", type=int, default=None,
                        help="swarm index (default: $SLURM_ARRAY_TASK_ID, as in an array task)")
    parser.add_argument("--mixture", help="train on this mixture JSON instead of a swarm member (needs --out)")
    parser.add_argument("--out", help="run directory for --mixture")
    parser.set_defaults(run=run)


def run(args) -> int:
    import os
    from pathlib import Path

    from regmix_ds import engine, proxies
    from regmix_ds.config import ExperimentConfig
    from regmix_ds.errors import RegmixError

    experiment = ExperimentConfig.load(args.config)
    if (args.mixture is None) != (args.out is None):
        raise RegmixError("--mixture", "--mixture and --out go together")
    if args.mixture is not None:
        config = proxies.proxy_train_config(experiment, Path(args.mixture), Path(args.out))
    else:
        index = args.index if args.index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
        if index is None:
            raise RegmixError("--index", "required outside a Slurm array task (or give --mixture and --out)")
        config = proxies.train_config(experiment, int(index))
    code = proxies.train_proxy(config)
    # Leave through the engine: it tears the process group down without gloo's exit crash.
    engine.shutdown(code)
