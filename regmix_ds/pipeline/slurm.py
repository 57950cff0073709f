"""What Slurm holds of an experiment's proxy array: which tasks are still pending or running.

`collect` asks so that a task waiting in the queue is listed as pending, not as missing, and
the resubmission line it prints covers only what is truly missing or failed. A task belongs to
the experiment's tier when one of its job's arguments is the experiment's exp.yaml (resolved
against the job's working directory) and the next one names the tier (none for the swarm):
`sbatch ... slurm/proxies.sh exp.yaml [transfer]` is how every array is submitted. Without
`squeue` (no Slurm here) or when it fails, the answer is None, and callers say so rather than
guess.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SQUEUE_FORMAT = "%K|%T|%Z|%o"
"""Array task id, state, working directory, command with its arguments: one line per task (-r)."""
PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def queued_tasks(config_path: str | os.PathLike, tier: str = "swarm") -> dict[int, str] | None:
    """Array task id -> 'pending' or 'running' for the tasks Slurm holds that train `config_path`'s
    `tier`; None when Slurm cannot be asked."""
    if shutil.which("squeue") is None:
        return None
    try:
        listing = subprocess.run(["squeue", "-h", "-r", "--me", "-o", SQUEUE_FORMAT], capture_output=True,
                                 text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listing.returncode != 0:
        return None
    return tasks_of(listing.stdout, Path(config_path), tier)


def tasks_of(squeue_output: str, config: Path, tier: str = "swarm") -> dict[int, str]:
    """The tasks in `squeue -r -o SQUEUE_FORMAT` output whose job trains `tier` of the experiment `config`."""
    tasks: dict[int, str] = {}
    for line in squeue_output.splitlines():
        fields = line.split("|", 3)
        if len(fields) != 4 or not fields[0].isdigit():
            continue  # not an array task (a plain job has task id N/A)
        task, state, workdir, command = fields
        if state in PENDING_STATES | RUNNING_STATES and _trains(command, Path(workdir), config, tier):
            tasks[int(task)] = "running" if state in RUNNING_STATES else "pending"
    return tasks


def _trains(command: str, workdir: Path, config: Path, tier: str) -> bool:
    """Whether the command's arguments are `config` (relative words against `workdir`) and then `tier`
    (nothing for the swarm)."""
    words = command.split()[1:]
    for position, word in enumerate(words):
        candidate = Path(word) if os.path.isabs(word) else workdir / word
        try:
            if candidate.is_file() and os.path.samefile(candidate, config):
                after = words[position + 1] if position + 1 < len(words) else "swarm"
                return after == tier
        except OSError:
            continue
    return False
