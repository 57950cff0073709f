"""`regmix-ds proxy`: train one swarm member or a group of them (what each Slurm array task runs)."""
import typing

from regmix_ds.core.layout import Tier
from regmix_ds.core.settings import bounded

ORDER = 40
TIERS = typing.get_args(Tier)
MAX_JOBS = 256
"""Most local trainings at once (`--jobs`): each is a Python process with its share of the cores."""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="train proxy i, a group of proxies, or any mixture with the proxy settings "
        "(skips finished, resumes interrupted)",
        description="Train swarm member INDEX on swarm/n<INDEX>.json into proxies/n<INDEX>/ with the "
        "experiment's proxy: settings, or several members as one group in this process. Finished proxies "
        "(result.json exists) are skipped; interrupted ones resume from their newest checkpoint. Exit 75 means "
        "it checkpointed on SIGTERM/SIGUSR1 and wants a requeue.",
    )
    parser.add_argument("--config", required=True, help="experiment config (exp.yaml)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--index", type=bounded(int, low=1), help="one swarm index, trained alone under DeepSpeed")
    which.add_argument("--indices", help="swarm indices trained together as one group, e.g. 1-16")
    which.add_argument("--task", type=bounded(int, low=1),
                       help="Slurm array task id: index TASK, or with proxy.group_size G > 1 the group TASK..TASK+G-1 "
                       "(default: $SLURM_ARRAY_TASK_ID)")
    which.add_argument("--mixture", help="train on this mixture JSON instead of a swarm member (needs --out)")
    parser.add_argument("--out", help="run directory for --mixture")
    parser.add_argument("--tier", default="swarm", choices=TIERS,
                        help="which proxies: the swarm, or the transfer check's larger ones (default swarm)")
    parser.set_defaults(run=run)


def run(args) -> None:
    """Train, then leave through the engine, which tears a process group down without gloo's exit
    crash, whatever the outcome (an error or Ctrl-C included)."""
    from regmix_ds.commands.main import run_reporting_errors
    from regmix_ds.train import engine

    engine.shutdown(run_reporting_errors(f"regmix-ds {args.command}", lambda: train(args)))


def train(args) -> int:
    import os
    from pathlib import Path

    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.core.errors import RegmixError
    from regmix_ds.core.layout import RunDir
    from regmix_ds.pipeline import proxies

    experiment = ExperimentConfig.load(args.config)
    if (args.mixture is None) != (args.out is None):
        raise RegmixError("--mixture", "--mixture and --out go together")
    tier = args.tier
    if args.mixture is not None:
        run = RunDir(Path(args.out))
        return proxies.train_proxy(proxies.proxy_train_config(experiment, Path(args.mixture), run, tier))
    if args.indices is not None:
        return proxies.train_members(experiment, proxies.parse_ranges(args.indices, "--indices"), tier)
    index = args.index if args.index is not None else task_index(args.task, os.environ)
    if args.index is None and proxies.group_size(experiment, tier) > 1:
        return proxies.train_members(experiment, proxies.task_indices(experiment, index, tier), tier)
    return proxies.train_proxy(proxies.train_config(experiment, index, tier))


def task_index(task: int | None, environ) -> int:
    from regmix_ds.core.errors import RegmixError

    if task is not None:
        return task
    if "SLURM_ARRAY_TASK_ID" not in environ:
        raise RegmixError("--index",
                          "required outside a Slurm array task (or give --indices, --task, or --mixture and --out)")
    value = environ["SLURM_ARRAY_TASK_ID"]
    if not value.isdigit():
        raise RegmixError("SLURM_ARRAY_TASK_ID", f"expected an array task number, got {value!r}")
    return int(value)
