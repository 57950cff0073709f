"""`regmix-ds simulate`: choose the mixture from millions of scored candidates (work in regmix_ds.simulate)."""
from __future__ import annotations

import argparse

from regmix_ds.cli import add_setting_flags, flags_given, with_flags
from regmix_ds.errors import RegmixError

ORDER = 70

# Flag -> SimulateConfig field, with its help. Unset flags leave the exp.yaml simulate: value (or default) alone.
SETTINGS: dict[str, tuple[type, str]] = {
    "candidates": (int, "candidates drawn before the support filter (default 1000000)"),
    "strength_min": (float, "smallest Dirichlet strength (default 0.1: near one-domain mixtures)"),
    "strength_max": (float, "largest Dirichlet strength (default 5: mixtures near the prior)"),
    "strengths": (int, "log-spaced strengths between the two; candidates split evenly (default 15)"),
    "top_k": (int, "best candidates averaged into the mixture (default 128)"),
    "bootstrap": (int, "refits on resampled proxy runs for the intervals; 0: none (default 20)"),
    "confidence": (float, "coverage of the percentile intervals (default 0.95)"),
    "seed": (int, "seed of the candidates and of the bootstrap resamples (default 0)"),
    "max_epochs": (float, "with --target-tokens and a manifest: passes over a domain's tokens allowed"),
    "target_tokens": (int, "tokens the target model trains on (turns on the token budget)"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="score candidate mixtures with the fitted model; average the best -> best.json (+ DeepSpeed config)",
        description="Draws candidates from Dirichlet(prior x strength), keeps those inside the support the proxies "
        "covered (no domain above its largest training weight or --max-weight cap; token budgets with "
        "--target-tokens/--max-epochs), averages the top k, and bootstraps intervals. Writes best.json and, with "
        "--deepspeed-config/--out-config, a copy of the DeepSpeed config with the mixture in its \"regmix\" block. "
        "Flags override the exp.yaml simulate: section.",
    )
    parser.add_argument("--config", metavar="EXP_YAML", help="experiment config: model <work_dir>/fit, manifest "
                        "<work_dir>/data/manifest.json (prior, token counts), output <work_dir>/best.json")
    parser.add_argument("--model", metavar="DIR", help="output directory of regmix-ds fit")
    parser.add_argument("--out", metavar="JSON", help="where to write best.json")
    parser.add_argument("--prior", metavar="FILE", help="prior, YAML/JSON domain -> share (flat or under train:); "
                        "default: the manifest's token shares, else the mean training mixture")
    parser.add_argument("--manifest", metavar="JSON", help="manifest.json: token prior and per-domain token counts")
    parser.add_argument("--max-weight", metavar="D=W,...", help="explicit caps, e.g. pile_cc=0.9,github=0.2; "
                        "each replaces that domain's largest training weight")
    parser.add_argument("--deepspeed-config", metavar="JSON", help="DeepSpeed (ZeRO-3) config to copy the mixture into")
    parser.add_argument("--out-config", metavar="JSON", help="where to write that copy (with --deepspeed-config)")
    add_setting_flags(parser, SETTINGS)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.config import ExperimentConfig, SimulateConfig
    from regmix_ds.simulate import run_simulate
    from regmix_ds.tables import parse_pairs

    experiment = ExperimentConfig.load(args.config) if args.config else None
    given = flags_given(args, SETTINGS)
    if args.max_weight is not None:
        given["max_weight"] = dict(parse_pairs(args.max_weight, "--max-weight"))
    settings = with_flags(experiment.simulate if experiment else SimulateConfig(), given, "simulate.")
    model = args.model or (experiment.fit_dir if experiment else None)
    out = args.out or (experiment.best_path if experiment else None)
    for flag, value in (("--model", model), ("--out", out)):
        if value is None:
            raise RegmixError(flag, "required without --config")
    manifest = args.manifest
    if manifest is None and experiment is not None and experiment.manifest_path.exists():
        manifest = experiment.manifest_path
    result = run_simulate(model, out, settings, prior_path=args.prior, manifest_path=manifest,
                          deepspeed_config=args.deepspeed_config, out_config=args.out_config)
    top = sorted(result.mixture.weights.items(), key=lambda item: -item[1])[:5]
    interval = "" if result.predicted_interval is None else " [{:.4g}, {:.4g}]".format(*result.predicted_interval)
    print(f"{out}: predicted target {result.predicted:.4g}{interval}; "
          + ", ".join(f"{d} {w:.3f}" for d, w in top) + f" ({result.in_support} of {result.drawn} candidates in support)")
    if args.out_config:
        print(f"{args.out_config}: DeepSpeed config with the mixture in its \"regmix\" block")
