"""`regmix-ds predict`: a fitted model's predictions for a table of mixtures."""
from __future__ import annotations

import argparse

ORDER = 65


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict the target for each mixture of a CSV with a fitted model",
        description="Reads a mixtures CSV in RegMix's layout (index + one column per domain) or ours (w:<domain> "
        "columns); its domains must be exactly the model's. Writes a CSV with columns index, predicted.",
    )
    parser.add_argument("--model", required=True, metavar="DIR", help="output directory of regmix-ds fit")
    parser.add_argument("--mixtures", required=True, metavar="CSV", help="the mixtures to score")
    parser.add_argument("--out", required=True, metavar="CSV", help="where to write index,predicted")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.regress.fit import predict_file

    count = predict_file(args.model, args.mixtures, args.out)
    print(f"{args.out}: {count} predictions")
