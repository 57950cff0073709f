"""Fault points: places where a fault test stops this process on purpose, exactly there.

A test starts a child with `REGMIX_FAULT=<point>[@<n>][:<SIGNAL>]` in its environment: the
n-th time (default the first) the child reaches that point it sends itself SIGKILL (or the
named signal, e.g. `step@5:TERM` for Slurm's warning before a time limit). A kill then lands
between two writes, inside a save or after a given step by construction, instead of at a moment
a timer guessed. With `REGMIX_FAULT_RANK=<r>` only the rank whose RANK is r does it. Without
the variable (always, outside those tests) a point costs one comparison.

The points: `step` (a training step was taken and logged), `checkpoint` (a DeepSpeed save's
files are written, its completion marker not yet), `member checkpoint` (one group member's
checkpoint is written), `shard` (`prepare` appended a block of documents to a token shard's
staged .bin, not yet committed), `open <file name>` (an atomic write's temporary file
was just created, still empty), `write <file name>` (that temporary file is complete and synced,
not yet renamed into place), `stage <file name>` (one output of a stage's set is staged) and
`commit <file name>` (a committed set is about to rename that output into place). `*` matches them all.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

FAULT = os.environ.get("REGMIX_FAULT")
ANY = "*"
"""The point name that matches every point: `*@n` stops at the n-th point of any kind, so a
test can stop a stage between every two of its file operations in turn."""
_reached: Counter = Counter()


def arm(spec: str | None) -> None:
    """Set (or, with None, clear) the fault as `REGMIX_FAULT` would, in this process: for a test
    that forks a stage instead of starting an interpreter per kill."""
    global FAULT
    FAULT = spec
    _reached.clear()


def reached(point: str) -> None:
    """Signal this process if `REGMIX_FAULT` names `point` and this is the n-th time it is reached."""
    if FAULT is None:
        return
    spec, _, signal_name = FAULT.partition(":")
    name, _, nth = spec.partition("@")
    only_rank = os.environ.get("REGMIX_FAULT_RANK")
    if name not in (point, ANY) or (only_rank is not None and os.environ.get("RANK") != only_rank):
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{signal_name or 'KILL'}"))
