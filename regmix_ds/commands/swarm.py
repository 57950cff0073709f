"""`regmix-ds swarm`: sample the proxy mixtures (arguments only; the work is in regmix_ds.swarm)."""
from __future__ import annotations

import argparse

from regmix_ds.cli import add_setting_flags, errors_named_by_flag, flags_given
from regmix_ds.config import SWARM_PRESETS

ORDER = 30

# Flag -> SwarmConfig field, with its help. Unset flags leave the config/preset value alone.
SETTINGS: dict[str, tuple[type, str]] = {
    "n": (int, "number of mixtures, one per proxy run (default 512)"),
    "seed": (int, "seed of the single random generator: same seed, byte-identical swarm (default 0)"),
    "preset": (str, f"named bundle of the sampling settings below: {', '.join(SWARM_PRESETS)} (default: default)"),
    "temperature": (float, "exponent on the prior before sampling: 1 keeps it, 0 weighs every domain alike"),
    "min_strength": (float, "smallest Dirichlet strength (small: mixtures dominated by a few domains)"),
    "max_strength": (float, "largest Dirichlet strength (large: mixtures close to the tempered prior)"),
    "strength_steps": (int, "points of the log-spaced strength grid; each mixture draws one"),
    "min_weight": (float, "weights below this become 0 and the rest are renormalised"),
    "cap": (float, "usage cap: a domain's weight may be at most CAP x its prior share"),
    "max_epochs": (float, "with --proxy-tokens: no domain may need more passes over its train tokens"),
    "proxy_tokens": (int, "tokens one proxy trains on; turns on the max-epochs cap (needs --config)"),
    "dedup_distance": (float, "reject a mixture closer than this (L1) to one already kept"),
}


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
    add_setting_flags(parser, SETTINGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.swarm import run_swarm

    overrides = flags_given(args, SETTINGS)
    with errors_named_by_flag(overrides, "swarm."):
        swarm, out_dir = run_swarm(config_path=args.config, prior_path=args.prior, out_dir=args.out,
                          overrides=overrides, force=args.force)
    print(f"{out_dir}: {len(swarm.weights)} mixtures over {len(swarm.domains)} domains ({swarm.draws} draws)")
    if args.config and not args.out:  # proxies read the swarm from <work_dir>/swarm only
        from regmix_ds import proxies
        from regmix_ds.config import ExperimentConfig

        experiment = ExperimentConfig.load(args.config)
        print("train it on Slurm:", proxies.sbatch_line(experiment, proxies.swarm_indices(experiment), throttle=64))

