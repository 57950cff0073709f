"""`regmix-ds simulate`: choose the mixture from millions of scored candidates (work in `regress.simulate`)."""
from __future__ import annotations

import argparse
import dataclasses

from regmix_ds.core.config import SimulateConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.settings import add_flags, apply_flags, flags_given, named_by_flags

ORDER = 70


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="score candidate mixtures with the fitted model; average the best -> best.json (+ DeepSpeed config)",
        description="Draws candidates from Dirichlet(prior x strength), keeps those inside the support the proxies "
        "covered (no domain above its largest training weight or --max-weight cap; token budgets with "
        "--target-tokens/--max-epochs) and within the guardrails (--guard), averages the top k (and, for a smooth "
        "surrogate, minimises the prediction over the same region: --proposer optimize), and bootstraps "
        "intervals. Writes best.json and, with "
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
    parser.add_argument("--deepspeed-config", metavar="JSON", help="DeepSpeed (ZeRO-3) config to copy the mixture into")
    parser.add_argument("--out-config", metavar="JSON", help="where to write that copy (with --deepspeed-config)")
    add_flags(parser, SimulateConfig, overrides=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.regress.simulate import run_simulate

    experiment = ExperimentConfig.load(args.config) if args.config else None
    given, file = flags_given(args, SimulateConfig), experiment.path if experiment else ""
    model = args.model or (experiment.work.fit.path if experiment else None)
    out = args.out or (experiment.work.best if experiment else None)
    for flag, value in (("--model", model), ("--out", out)):
        if value is None:
            raise RegmixError(flag, "required without --config")
    manifest = args.manifest
    if manifest is None and experiment is not None and experiment.work.manifest.exists():
        manifest = experiment.work.manifest
    with named_by_flags(SimulateConfig, given, file):
        settings = apply_flags(SimulateConfig, given, experiment.simulate if experiment else None, file)
        if experiment and "guard_reference" not in given and settings.guard_reference != "natural":
            # A path in exp.yaml is relative to the file, like every path there.
            settings = dataclasses.replace(settings, guard_reference=str(experiment.resolve(settings.guard_reference)))
        result = run_simulate(model, out, settings, prior_path=args.prior, manifest_path=manifest,
                              deepspeed_config=args.deepspeed_config, out_config=args.out_config)
    top = sorted(result.mixture.weights.items(), key=lambda item: -item[1])[:5]
    interval = "" if result.predicted_interval is None else " [{:.4g}, {:.4g}]".format(*result.predicted_interval)
    print(f"{out}: predicted target {result.predicted:.4g}{interval} ({result.proposer}); "
          + ", ".join(f"{d} {w:.3f}" for d, w in top)
          + f" ({result.in_support} of {result.drawn} candidates in support)")
    for name, proposal in result.proposals.items():
        if name != result.proposer:
            print(f"  {name} would predict {proposal.predicted:.4g}")
    for loss, guard in (result.guardrails or {}).get("guards", {}).items():
        print(f"  guardrail {loss}: {guard['predicted']:.4g} <= {guard['limit']:.4g}"
              + (" (binds)" if guard["binds"] else ""))
    if args.out_config:
        print(f"{args.out_config}: DeepSpeed config with the mixture in its \"regmix\" block")
