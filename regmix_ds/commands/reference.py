"""`regmix-ds reference`: every setting as a markdown table, generated from the settings classes.

The README's "Configuration reference" section is this command's output (a test keeps them equal).
"""
from __future__ import annotations

import argparse

ORDER = 95
HEADER = ("key", "default", "meaning")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reference",
        help="print every exp.yaml key and train.py flag with its default and meaning (markdown)",
        description="Prints the settings reference that the README carries, generated from the code.",
    )
    parser.set_defaults(run=run)


def reference() -> str:
    """The markdown of both tables: exp.yaml keys, then train.py flags."""
    from regmix_ds.core.config import ExperimentConfig, TrainConfig
    from regmix_ds.core.settings import flag_rows, markdown_table, reference_rows

    return (
        "### `exp.yaml`\n\n"
        "Relative paths resolve against the config file's directory. Unknown keys are an error.\n\n"
        + markdown_table(HEADER, reference_rows(ExperimentConfig))
        + "\n\n### `train.py` and `regmix-ds train`\n\n"
        + markdown_table(("flag", "default", "meaning"), flag_rows(TrainConfig))
        + "\n"
    )


def run(args: argparse.Namespace) -> None:
    print(reference(), end="")
