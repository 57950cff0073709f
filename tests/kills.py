"""Stop a stage at every point between its file operations in turn, and read back what it left.

A stage (fit, simulate, prepare, ...) promises that its outputs are the old set or the new one,
whole, whatever instant it is killed at. `kill_everywhere` checks that promise exhaustively:
it runs the stage once to learn the new outputs, then again and again with the fault `*@n`
(`core.faults`: SIGKILL at the n-th fault point of any kind: every temporary file opened,
written, staged, every journal and every rename of a commit) for n = 1, 2, ... until a run
finishes before its n-th point. After each kill it reads the outputs back through our own
reader (which finishes a commit the kill interrupted, as the next command would) and requires
them to equal the old set or the new one. Each attempt is a fork of this process, so a kill
costs the stage's own work, not an interpreter start.
"""
from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from regmix_ds.core import faults
from regmix_ds.core.files import settle


def snapshot(outputs: list[Path]) -> dict[str, bytes | None]:
    """Each output's bytes (None: absent), read as the next command would find them."""
    for path in outputs:
        settle(path)
    return {str(path): path.read_bytes() if path.is_file() else None for path in outputs}


def run_forked(stage: Callable[[], object], fault: str | None) -> bool:
    """Run `stage` in a forked child with `fault` armed; True when the fault killed it."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            faults.arm(fault)
            stage()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    status = _reaped(pid, timeout=120)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the stage failed (status {status}) under {fault}"
    return False


def _reaped(pid: int, timeout: float) -> int:
    """The forked child's wait status; a child still running after `timeout` is killed and fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked stage was still running after {timeout} s")


def kill_everywhere(stage: Callable[[], object], outputs: list[Path], reset: Callable[[], None],
                    limit: int = 400, also: Sequence[list[Path]] = ()) -> int:
    """Kill `stage` at each of its fault points in turn; returns how many points it has.

    `reset` puts the inputs and the old outputs back before each run; outputs must come out
    byte-identical from two uninterrupted runs (the stage is deterministic). A stage that commits
    more than one set (a tokenize task's part, then the merge) names the others in `also`: each
    set must be old or new on its own.
    """
    sets = [outputs, *also]
    reset()
    old = [snapshot(paths) for paths in sets]
    assert not run_forked(stage, None)
    new = [snapshot(paths) for paths in sets]
    assert all(n != o for n, o in zip(new, old)), "the stage left one of its output sets as it was: nothing to test"
    for n in range(1, limit + 1):
        reset()
        killed = run_forked(stage, f"{faults.ANY}@{n}")
        for paths, was, becomes in zip(sets, old, new):
            _check_old_or_new(snapshot(paths), was, becomes, n)
        if not killed:
            assert n > 1, "the stage reached no fault point: no kill was tested"
            return n - 1
    raise AssertionError(f"the stage still reached fault point {limit}: raise the limit")


def _check_old_or_new(left: dict, old: dict, new: dict, point: int) -> None:
    if left != old and left != new:
        mixed = sorted(path for path in left if left[path] != new[path] and left[path] != old[path])
        torn = mixed or sorted(path for path in left if left[path] != old[path])
        raise AssertionError(f"killed at fault point {point}: outputs are neither the old set nor the new one "
                             f"(differing: {', '.join(Path(p).name for p in torn)})")
