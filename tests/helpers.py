"""Small helpers shared by test modules (not fixtures: plain functions). Every wait is bounded and
fails with what the awaited process said, never by hanging."""
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TIMEOUT = 300
"""Seconds a command may take before its test fails (the per-test timeout in pyproject.toml backs it up)."""


def run_cli(*args, timeout: float = TIMEOUT, **kwargs) -> subprocess.CompletedProcess:
    """`regmix-ds ARGS...` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "regmix_ds", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def logged_steps(metrics: Path) -> int:
    """How many training steps a run's metrics.jsonl shows."""
    return sum('"loss"' in line for line in metrics.read_text().splitlines()) if metrics.exists() else 0


def wait_for_steps(metrics: Path, steps: int, gone: Callable[[], str | None], timeout: float = 120) -> None:
    """Block until a run's metrics.jsonl shows `steps` training steps; fail at once with `gone()`'s
    account when the process producing them ended first."""
    deadline = time.monotonic() + timeout
    while logged_steps(metrics) < steps:
        problem = gone()
        if problem:
            raise AssertionError(f"{metrics}: {problem} before step {steps}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{metrics}: fewer than {steps} steps after {timeout} s")
        time.sleep(0.05)


def proxy_dir(experiment, index: int) -> Path:
    """Swarm member `index`'s run directory."""
    return experiment.work.proxy(index).path


def free_port() -> int:
    """A TCP port nothing listens on now: two pytest-xdist workers running tests of one module
    at once must not share a rendezvous port, as fixed per-module ports would."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
