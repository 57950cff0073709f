"""`regmix-ds <command>`: parses arguments and hands them to one stage; holds no stage logic.

Each command lives in `regmix_ds/commands/<name>.py` with `ORDER` (its place in the pipeline,
which orders `--help`) and `register(subparsers)`, which adds its parser and sets `run`.
Commands import their stage lazily so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import pkgutil
import sys
from typing import Any, Iterator

from regmix_ds import __version__, commands
from regmix_ds.errors import RegmixError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), like every other error."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_setting_flags(parser: argparse.ArgumentParser, settings: dict[str, tuple[type, str]]) -> None:
    """One flag per config field (`--min-weight` for `min_weight`); unset flags stay None."""
    for name, (kind, help_text) in settings.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, metavar=name.upper(), help=help_text)


def flags_given(args: argparse.Namespace, settings: dict[str, tuple[type, str]]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in settings if getattr(args, name) is not None}


@contextlib.contextmanager
def errors_named_by_flag(given: dict[str, Any], prefix: str) -> Iterator[None]:
    """A problem with a setting the user gave as a flag is reported under that flag's name."""
    try:
        yield
    except RegmixError as err:
        name = err.where.removeprefix(prefix)
        if name in given:
            raise RegmixError(f"--{name.replace('_', '-')}", err.problem) from None
        raise


def with_flags(section: Any, given: dict[str, Any], prefix: str) -> Any:
    """The config section with the flags the user gave applied."""
    with errors_named_by_flag(given, prefix):
        return dataclasses.replace(section, **given)


def command_modules() -> list:
    found = [importlib.import_module(f"regmix_ds.commands.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    return sorted(found, key=lambda module: module.ORDER)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="regmix-ds",
        description="RegMix data-mixture search: prepare -> swarm -> proxies -> collect -> fit -> simulate.",
    )
    parser.add_argument("--version", action="version", version=f"regmix-ds {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser
    )
    for module in command_modules():
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except RegmixError as err:
        print(f"regmix-ds {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"regmix-ds {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
