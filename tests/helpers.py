"""Small helpers shared by test modules (not fixtures: plain functions)."""
import subprocess
import sys
import time
from pathlib import Path


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """`regmix-ds ARGS...` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "regmix_ds", *map(str, args)], capture_output=True, text=True, **kwargs)


def wait_for_steps(metrics: Path, steps: int, timeout: float = 180) -> None:
    """Block until a run's metrics.jsonl shows `steps` training steps."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.2)
    raise AssertionError(f"{metrics}: fewer than {steps} steps after {timeout} s")


def proxy_dir(experiment, index: int) -> Path:
    """Swarm member `index`'s run directory."""
    return experiment.work.proxy(index).path
