"""`regmix-ds swarm`: sample the proxy mixtures (arguments only; the work is in `pipeline.swarm`)."""
from __future__ import annotations

import argparse

from regmix_ds.core.config import SwarmConfig
from regmix_ds.core.settings import add_flags, apply_flags, flags_given, named_by_flags

ORDER = 30


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "swarm",
        help="sample N random mixtures for the proxy runs -> swarm/",
        description=(
            "Sample N mixtures from Dirichlet(strength x prior^temperature) under usage caps, "
            "write swarm/n<i>.json (i = 1..N) and swarm/swarm.csv (index + one column per domain). "
            "Settings: flags override the exp.yaml swarm: section, which overrides the preset."
        ),
    )
    parser.add_argument("--config", metavar="EXP_YAML",
                        help="experiment config: prior and token counts from <work_dir>/data/manifest.json, "
                             "settings from its swarm: section, output to <work_dir>/swarm/")
    parser.add_argument("--prior", metavar="FILE",
                        help="YAML/JSON domain -> share (flat, or under train: as in RegMix's token_prior.yaml); "
                             "required without --config, with it must name the manifest's domains")
    parser.add_argument("--out", metavar="DIR", help="output directory (required without --config)")
    parser.add_argument("--force", action="store_true", help="replace an existing, non-empty output directory")
    parser.add_argument("--next-round", action="store_true",
                        help="add a round of --n mixtures near the current fit's best candidates (needs --config, "
                             "a fit): explore x n drawn afresh, the rest around the focus best (see swarm: settings)")
    add_flags(parser, SwarmConfig, overrides=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.pipeline import proxies
    from regmix_ds.pipeline.swarm import draw_swarm, swarm_settings

    experiment = ExperimentConfig.load(args.config) if args.config else None
    given, file = flags_given(args, SwarmConfig), experiment.path if experiment else ""
    with named_by_flags(SwarmConfig, given, file):
        settings = apply_flags(SwarmConfig, given, swarm_settings(experiment), file)
        if args.next_round:
            next_round(experiment, settings)
            return
        swarm, out_dir = draw_swarm(settings, experiment, prior_path=args.prior, out_dir=args.out, force=args.force)
    print(f"{out_dir}: {len(swarm.weights)} mixtures over {len(swarm.domains)} domains ({swarm.draws} draws)")
    if experiment is not None and not args.out:  # proxies read the swarm from <work_dir>/swarm only
        print("train it on Slurm:", proxies.sbatch_line(experiment, proxies.swarm_indices(experiment), throttle=64))


def next_round(experiment, settings: SwarmConfig) -> None:
    """Draw and write the next round, and say how to train it."""
    from regmix_ds.core.errors import RegmixError
    from regmix_ds.pipeline import proxies
    from regmix_ds.pipeline.rounds import draw_next_round, write_round

    if experiment is None:
        raise RegmixError("--next-round", "needs --config (the swarm, its fit and its manifest)")
    new = draw_next_round(experiment, settings)
    indices = write_round(experiment.work.swarm, new, settings)
    print(f"{experiment.work.swarm.path}: round {new.number}, {len(indices)} mixtures n{indices[0]}-n{indices[-1]} "
          f"({new.near_best} near the fit's best, {len(indices) - new.near_best} fresh; {new.swarm.draws} draws)")
    print("train it on Slurm:", proxies.sbatch_line(experiment, indices, throttle=64))
