"""`regmix-ds <command>`: parses arguments and hands them to one stage; holds no stage logic.

Each command lives in `regmix_ds/commands/<name>.py` with `ORDER` (its place in the pipeline,
which orders `--help`) and `register(subparsers)`, which adds its parser and sets `run`.
Commands import their stage lazily so `--help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable

from regmix_ds import __version__, commands
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.progress import quiet_library_bars


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), like every other error."""

    def error(self, message: str) -> None:
        """Exit 2 with `<prog>: error: <message> (see --help)` instead of the usage block."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def command_modules() -> list:
    """Every module of `regmix_ds.commands` that defines a command, in pipeline order."""
    found = [importlib.import_module(f"regmix_ds.commands.{m.name}") for m in pkgutil.iter_modules(commands.__path__)]
    return sorted((module for module in found if hasattr(module, "register")), key=lambda module: module.ORDER)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="regmix-ds",
        description="RegMix data-mixture search: prepare -> swarm -> proxies -> collect -> fit -> simulate -> train.",
    )
    parser.add_argument("--version", action="version", version=f"regmix-ds {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineErrorParser
    )
    for module in command_modules():
        module.register(subparsers)
    return parser


def run_reporting_errors(program: str, run: Callable[[], int | None]) -> int:
    """Run a command; a RegmixError is one line `<program>: error: <where>: <problem>` and exit 2."""
    try:
        code = run()
    except RegmixError as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
    return code or 0


def main(argv: list[str] | None = None) -> int:
    quiet_library_bars()
    args = build_parser().parse_args(argv)
    return run_reporting_errors(f"regmix-ds {args.command}", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
