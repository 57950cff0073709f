"""Progress that reads well where it goes: a bar redrawn in place in a terminal, plain lines in a file.

Slurm writes a job's stderr to a log file, where carriage-return redraws make one line that grows
all day. `bar` gives a tqdm bar when stderr is a terminal, and otherwise a `LogBar` with the same
small interface (iteration, `update`, `set_postfix_str`, `write`, `close`) that prints one line
every `LOG_SECONDS` seconds and one at the end: `desc: 40/128 proxy (31%) | note | 0:01:05, ETA 0:02:23`.
Third-party bars (`datasets`, `huggingface_hub`, `tokenizers`) are switched off when stderr is not a terminal.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

LOG_SECONDS = 30.0
"""How often a log file gets a progress line (and it always gets the last one)."""


def interactive() -> bool:
    """Whether progress goes to a terminal (a bar may redraw) rather than a file or pipe."""
    return sys.stderr.isatty()


def clock(seconds: float) -> str:
    """0:01:05 for 65 s; days for anything longer than one."""
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return time.strftime("%H:%M:%S", time.gmtime(seconds)).removeprefix("0")


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
        disable: bool = False) -> Any:
    """A tqdm bar in a terminal, else a `LogBar`; either iterates `iterable` or counts `update` calls."""
    if interactive():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, mininterval=1.0)
    return LogBar(iterable, total=total, desc=desc, unit=unit, disable=disable)


class LogBar:
    """tqdm's interface, printing a plain line every `LOG_SECONDS` seconds and at the end."""

    def __init__(self, iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "it", disable: bool = False, every_seconds: float = LOG_SECONDS):
        self.iterable, self.desc, self.unit, self.disable = iterable, desc, unit, disable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n, self.postfix, self.every_seconds = 0, "", every_seconds
        self.start = self.last = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LogBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count `n` more units; print a line when `every_seconds` passed since the last."""
        self.n += n
        if time.monotonic() - self.last >= self.every_seconds:
            self._line()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        """A note shown after the count on the next line."""
        self.postfix = text

    def write(self, message: str) -> None:
        """A line of its own (on stdout, like tqdm.write)."""
        print(message, flush=True)

    def close(self) -> None:
        """The last line, once."""
        if not self.closed:
            self.closed = True
            self._line()

    def _line(self) -> None:
        self.last = now = time.monotonic()
        if self.disable:
            return
        elapsed = now - self.start
        count = f"{self.n:g}" + (f"/{self.total:g}" if self.total else "") + f" {self.unit}"
        if self.total:
            count += f" ({self.n / self.total:.0%})"
        eta = f", ETA {clock(elapsed / self.n * (self.total - self.n))}" if self.total and self.n else ""
        note = f" | {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count}{note} | {clock(elapsed)}{eta}", file=sys.stderr, flush=True)


def quiet_library_bars() -> None:
    """Switch off the Hugging Face libraries' own bars when they would only litter a log file.

    Set through their environment variables, before they are imported (a command calls this first).
    """
    if not interactive():
        for variable in ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(variable, "1")
