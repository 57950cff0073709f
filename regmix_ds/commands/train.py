"""`regmix-ds train` (and `train.py`): train one model on a mixture with DeepSpeed; work in `train.single`."""
from __future__ import annotations

import argparse

ORDER = 90
DESCRIPTION = (
    "Train one model on a data mixture with DeepSpeed (a RegMix proxy or the target run). Launch with python, "
    "deepspeed, mpirun or srun. Exit codes: 0 done, 2 bad input, 75 checkpointed after SIGTERM/SIGUSR1 "
    "(requeue with --resume auto)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainConfig` field, plus the `--local_rank` the deepspeed launcher passes."""
    from regmix_ds.core.config import TrainConfig
    from regmix_ds.core.settings import add_flags

    add_flags(parser, TrainConfig, overrides=False)
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        help="set by the deepspeed launcher")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one model on a mixture (what train.py runs)",
                                   description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    """Train, then leave through the engine, which tears the process group down without gloo's exit crash."""
    from regmix_ds.commands.main import run_reporting_errors
    from regmix_ds.train import engine

    engine.shutdown(run_reporting_errors(f"regmix-ds {args.command}", lambda: train(args)))


def train(args: argparse.Namespace) -> int:
    from regmix_ds.core.config import TrainConfig
    from regmix_ds.core.settings import apply_flags, flags_given
    from regmix_ds.train import engine, single

    config = apply_flags(TrainConfig, flags_given(args, TrainConfig))
    return single.train(config, engine.discover_launch(local_rank_flag=args.local_rank))


def build_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """train.py's own parser (the same flags as `regmix-ds train`)."""
    from regmix_ds.commands.main import OneLineErrorParser

    parser = OneLineErrorParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    """Parse and train; returns the exit code (the caller exits through `engine.shutdown`)."""
    from regmix_ds.commands.main import run_reporting_errors
    from regmix_ds.core.progress import quiet_library_bars

    quiet_library_bars()
    args = build_parser(prog).parse_args(argv)
    return run_reporting_errors(prog, lambda: train(args))
