"""`regmix-ds synth`: write the synthetic demo corpus, its target set and its composition, and exp.yaml."""
from __future__ import annotations

import argparse
from pathlib import Path

from regmix_ds.core.config import MIN_VOCAB
from regmix_ds.core.settings import bounded

ORDER = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic corpus whose best mixture is known",
        description="Write K text domains (jsonl), a target validation set drawn from a known mixture of some "
        "of them, target_composition.json (that mixture: what the target is made of, not the best mixture to "
        "train on) and exp.yaml (ready for `prepare --train-tokenizer`).",
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to write into (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    parser.add_argument("--docs-per-domain", type=int, default=1000, help="documents per domain (default 1000)")
    parser.add_argument("--target-docs", type=int, default=300, help="documents in the target set (default 300)")
    parser.add_argument("--num-domains", type=int, default=6, help="number of domains, 2-8 (default 6)")
    parser.add_argument(
        "--target",
        default="news=0.6,code=0.3,chat=0.1",
        help="the target's true mixture as name=weight pairs (default news=0.6,code=0.3,chat=0.1)",
    )
    parser.add_argument(
        "--vocab-size", type=bounded(int, low=MIN_VOCAB), default=1024,
        help=f"tokenizer vocabulary put in exp.yaml (default 1024; at least {MIN_VOCAB}, the byte-level alphabet)"
    )
    parser.add_argument(
        "--valid-documents", type=int, default=100, help="validation documents per domain put in exp.yaml (default 100)"
    )
    parser.add_argument(
        "--deepspeed-config",
        help="also write the demo's swarm/proxy/fit/simulate sections, proxies using this DeepSpeed JSON",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.settings import parse_pairs
    from regmix_ds.data.synth import SynthSettings, synthesize

    settings = SynthSettings(
        seed=args.seed,
        docs_per_domain=args.docs_per_domain,
        target_docs=args.target_docs,
        num_domains=args.num_domains,
        target=dict(parse_pairs(args.target, "--target")),
        vocab_size=args.vocab_size,
        valid_documents=args.valid_documents,
        deepspeed_config=args.deepspeed_config,
    )
    written = synthesize(args.out, settings)
    print(f"wrote {len(settings.domains)} domains, the target set and {written['config']} "
          f"(target composition: {written['composition']})")
