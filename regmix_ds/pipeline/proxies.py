"""The proxy stage: train swarm member i or a group of members (`regmix-ds proxy`), or the whole
swarm on this machine (`regmix-ds run-swarm`), and spell the `sbatch` line that trains it on a cluster.

Proxy i trains on `swarm/n<i>.json` into `proxies/n<i>/` with the experiment's `proxy:` settings.
With `proxy.group_size` G > 1, Slurm array task t (and each local job) trains indices t .. t+G-1
together in one process (`train.group`); the array steps by G (`--array=1-512:16`).
A proxy whose `result.json` exists is done and is never trained again; an interrupted one
resumes from its newest complete checkpoint, so every entry point here is safe to re-run. A
proxy that ends in an error leaves `failed.json` (its exit code) for `collect`; the next
attempt removes it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from regmix_ds.core.config import ExperimentConfig, TrainConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import exclusive, write_json_atomic
from regmix_ds.core.layout import RunDir, Tier
from regmix_ds.core.progress import bar as progress_bar

PROXY_SCRIPT = "slurm/proxies.sh"
EXIT_REQUEUE = 75
"""`train.loop.EXIT_REQUEUE`, spelled here so that a finished task never imports the trainer."""


def swarm_indices(experiment: ExperimentConfig, tier: Tier = "swarm") -> list[int]:
    """The proxy indices of a tier (the swarm, or the transfer check's), from its `n<i>.json` files, ascending."""
    swarm = experiment.work.tier(tier).swarm
    if not swarm.path.is_dir():
        raise RegmixError(swarm.path, "no swarm here; run `regmix-ds swarm --config ...` first")
    found = swarm.indices()
    if not found:
        raise RegmixError(swarm.path, "swarm directory holds no n<i>.json mixtures")
    return found


def train_config(experiment: ExperimentConfig, index: int, tier: Tier = "swarm") -> TrainConfig:
    """The training settings of member `index` of a tier."""
    mixture = experiment.work.tier(tier).mixture(index)
    if not mixture.is_file():
        indices = format_ranges(swarm_indices(experiment, tier))
        raise RegmixError("--index", f"no mixture {mixture} ({tier} indices: {indices})")
    return proxy_train_config(experiment, mixture, experiment.work.tier(tier).proxy(index), tier)


def proxy_train_config(experiment: ExperimentConfig, mixture: Path, run: RunDir, tier: Tier = "swarm") -> TrainConfig:
    """The training settings of a proxy on `mixture`: the same for every proxy of a tier but the
    mixture, so swarm members and any mixture checked later are comparable."""
    return TrainConfig.for_run(experiment.tier_settings(tier), manifest=str(experiment.work.manifest),
                               mixture=str(mixture), out=str(run.path), resume="auto")


def train_proxy(config: TrainConfig) -> int:
    """Train one proxy in this process; returns the trainer's exit code (0, 2 or 75)."""
    run = RunDir(Path(config.out))
    # The trainer would also skip a finished run, but only after importing torch and DeepSpeed:
    # resubmitting a 512-task array should cost each finished task a second, not a minute.
    if run.is_done():
        print(f"{run.result} exists, nothing to do")
        return 0
    from regmix_ds.train import engine, single

    launch = engine.discover_launch()
    plan = single.checked_plan(config, launch.world_size)  # a bad input is refused before the lock makes the run dir
    if launch.world_size > 1:
        # Every rank of a multi-rank proxy runs this: a lock would let one rank in and strand
        # the others in the first collective. Such a run is one Slurm step, unique already.
        return marking_failures([run], lambda: single.train(config, launch, plan))
    return training_alone([run], lambda: single.train(config, launch, plan))


def train_members(experiment: ExperimentConfig, indices: list[int], tier: Tier = "swarm") -> int:
    """Train members `indices` of a tier as one group in this process; returns 0, 2 or 75 as `train_proxy`."""
    configs = [train_config(experiment, i, tier) for i in indices]
    todo = [config for config in configs if not RunDir(Path(config.out)).is_done()]
    if not todo:
        print(f"proxies {format_ranges(indices)}: every result.json exists, nothing to do")
        return 0
    from regmix_ds.train import group

    proxy = experiment.require_proxy()
    return training_alone([RunDir(Path(c.out)) for c in todo],
                          lambda: group.train_group(todo, proxy.save_model, proxy.compile))


def training_alone(runs: list[RunDir], train: Callable[[], int]) -> int:
    """`marking_failures(runs, train)` while this process owns every run; 0 at once if another does.

    Two runners on one work dir (two `run-swarm`s, a local run beside an array task) would
    otherwise train a proxy twice and interleave its log.
    """
    with exclusive(run.owner for run in runs) as owned:
        if not owned:
            print(f"{runs[0].path.parent}: another process is training {', '.join(r.path.name for r in runs)} "
                  "now; leaving it to that one")
            return 0
        return marking_failures(runs, train)


def marking_failures(runs: list[RunDir], train: Callable[[], int]) -> int:
    """Run `train`; if it crashes or ends in an error, leave `failed.json` in each run directory for `collect`."""
    for run in runs:
        run.failed.unlink(missing_ok=True)
    try:
        code = train()
    except RegmixError:
        raise
    except BaseException as err:
        for run in runs:
            write_json_atomic(run.failed, {"error": f"{type(err).__name__}: {err}"})
        raise
    if code not in (0, EXIT_REQUEUE):
        for run in runs:
            write_json_atomic(run.failed, {"exit_code": code})
    return code


def group_size(experiment: ExperimentConfig, tier: Tier = "swarm") -> int:
    """Proxies per array task / local job (1 without a `proxy:` section, which fails later anyway)."""
    return experiment.tier_settings(tier).group_size if experiment.proxy is not None else 1


def task_indices(experiment: ExperimentConfig, task: int, tier: Tier = "swarm") -> list[int]:
    """The indices array task `task` trains: `task` itself, or the group of G starting there."""
    size, known = group_size(experiment, tier), swarm_indices(experiment, tier)
    indices = [i for i in known if task <= i < task + size]
    if not indices or task not in groups(experiment, indices, tier):
        raise RegmixError("--task", f"{task} is not the first index of a group of {size} in the {tier} "
                                    f"(tasks: {array_spec(experiment, known, tier)})")
    return indices


def groups(experiment: ExperimentConfig, indices: list[int], tier: Tier = "swarm") -> dict[int, list[int]]:
    """`indices` split as the array tasks train them: {task (first index of its group): members}.

    Groups are aligned to the tier's first index, so a task always trains the same members.
    """
    size, base = group_size(experiment, tier), min(swarm_indices(experiment, tier))
    grouped: dict[int, list[int]] = {}
    for i in sorted(indices):
        grouped.setdefault(base + (i - base) // size * size, []).append(i)
    return grouped


def array_spec(experiment: ExperimentConfig, indices: list[int], tier: Tier = "swarm") -> str:
    """Slurm's --array value for the tasks that train `indices`: '1-3,7', or '1-497:16' with groups."""
    size = group_size(experiment, tier)
    if size == 1:
        return format_ranges(indices)
    starts = sorted(groups(experiment, indices, tier))
    if len(starts) > 1 and starts == list(range(starts[0], starts[-1] + 1, size)):
        return f"{starts[0]}-{starts[-1]}:{size}"
    return ",".join(map(str, starts))


def train_swarm(experiment: ExperimentConfig, indices: list[int] | None, jobs: int, tier: Tier = "swarm") -> list[int]:
    """Train the given (default: all) proxies of a tier here, `jobs` at a time; returns the failed indices.

    Each proxy is its own `regmix-ds proxy` process (one DeepSpeed rank on a free port) with
    the machine's cores shared out, and its output in `proxies/n<i>/proxy.log`.
    """
    if jobs < 1:
        raise RegmixError("--jobs", f"must be >= 1, got {jobs}")
    experiment.require_proxy()
    known, where = swarm_indices(experiment, tier), experiment.work.tier(tier)
    wanted = indices or known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise RegmixError("--indices", f"not in the {tier}: {format_ranges(unknown)}")
    todo = [i for i in wanted if not where.proxy(i).is_done()]
    size = group_size(experiment, tier)
    unit = "proxies" if size == 1 else f"groups of up to {size} proxies"
    print(f"run-swarm: {len(wanted) - len(todo)} of {len(wanted)} proxies already done; training {len(todo)}, "
          f"{jobs} {unit} at a time")
    flags = [] if tier == "swarm" else ["--tier", tier]
    if size == 1:
        runs = {i: (where.proxy(i).log, ["--index", str(i), *flags]) for i in todo}
        failed = sorted(run_proxy_processes(experiment, runs, jobs, "proxies"))
    else:
        grouped = groups(experiment, todo, tier)
        runs = {start: (where.group_log(start), ["--indices", format_ranges(members), *flags])
                for start, members in grouped.items()}
        failed_groups = run_proxy_processes(experiment, runs, jobs, "proxy groups")
        failed = sorted(i for start in failed_groups for i in grouped[start] if not where.proxy(i).is_done())
    elsewhere = [i for i in todo if i not in failed and not where.proxy(i).is_done()]
    if elsewhere:
        print(f"run-swarm: proxies {format_ranges(elsewhere)} were being trained by another process; "
              "`regmix-ds collect` shows when they finish")
    return failed


def run_proxy_processes(experiment: ExperimentConfig, runs: dict, jobs: int, label: str) -> list:
    """Run `regmix-ds proxy --config EXP <args>` for each `key: (log_path, args)` of `runs`, `jobs`
    at a time with the cores shared out; returns the keys that failed. Each process is its own
    world of one rank (on a free port), with its output appended to `log_path`."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for name in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)

    def run(log_path: Path, args: list[str]) -> int:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "regmix_ds", "proxy", "--config", experiment.path, *args]
        with open(log_path, "ab") as log:
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode

    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool, progress_bar(total=len(runs), desc=label, unit="proxy") as bar:
        futures = {pool.submit(run, *spec): key for key, spec in runs.items()}
        for future in as_completed(futures):
            if future.result() != 0:
                key = futures[future]
                failed.append(key)
                bar.write(f"{label} {key} failed; see {runs[key][0]}")
            bar.update()
    return failed


def sbatch_line(experiment: ExperimentConfig, indices: list[int], throttle: int, tier: Tier = "swarm") -> str:
    """The command that trains `indices` of a tier as one Slurm job array, at most `throttle` tasks at once."""
    line = f"sbatch --array={array_spec(experiment, indices, tier)}%{throttle} {PROXY_SCRIPT} {experiment.path}"
    return line if tier == "swarm" else f"{line} {tier}"


def format_ranges(indices: list[int]) -> str:
    """[1, 2, 3, 7, 9, 10] -> '1-3,7,9-10' (Slurm's --array syntax)."""
    parts, ordered = [], sorted(set(indices))
    start = previous = None
    for i in ordered + [None]:
        if start is not None and i == previous + 1:
            previous = i
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = i
    return ",".join(parts)


def parse_ranges(text: str, where: str) -> list[int]:
    """'1-3,7' -> [1, 2, 3, 7]; the inverse of `format_ranges`."""
    indices: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise RegmixError(where, f"not an index range: {part!r} (expected e.g. 1-16,20)")
        low = int(match.group(1))
        indices.update(range(low, int(match.group(2) or low) + 1))
    return sorted(indices)
