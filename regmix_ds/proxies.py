"""The proxy stage: train swarm member i (`regmix-ds proxy`), or the whole swarm on this machine
(`regmix-ds run-swarm`), and spell the `sbatch` line that trains it on a cluster.

Proxy i trains on `swarm/n<i>.json` into `proxies/n<i>/` with the experiment's `proxy:` settings.
A proxy whose `result.json` exists is done and is never trained again; an interrupted one
resumes from its newest complete checkpoint (`train.py --resume auto`), so every entry point
here is safe to re-run. A proxy that ends in an error leaves `failed.json` (its exit code) for
`collect`; the next attempt removes it.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from regmix_ds.config import ExperimentConfig
from regmix_ds.errors import RegmixError
from regmix_ds.files import write_json_atomic

FAILED_MARKER = "failed.json"
RESULT = "result.json"
PROXY_SCRIPT = "slurm/proxies.sh"
MIXTURE_FILE = re.compile(r"^n(\d+)\.json$")


def swarm_indices(experiment: ExperimentConfig) -> list[int]:
    """The proxy indices of the experiment's swarm, from its `n<i>.json` files, ascending."""
    swarm_dir = experiment.swarm_dir
    if not swarm_dir.is_dir():
        raise RegmixError(swarm_dir, "no swarm here; run `regmix-ds swarm --config ...` first")
    found = sorted(int(m.group(1)) for p in swarm_dir.iterdir() if (m := MIXTURE_FILE.match(p.name)))
    if not found:
        raise RegmixError(swarm_dir, "swarm directory holds no n<i>.json mixtures")
    return found


def proxy_dir(experiment: ExperimentConfig, index: int) -> Path:
    return experiment.proxies_dir / f"n{index}"


def is_done(experiment: ExperimentConfig, index: int) -> bool:
    return (proxy_dir(experiment, index) / RESULT).is_file()


def train_config(experiment: ExperimentConfig, index: int):
    """The `train.py` settings of swarm member `index`."""
    mixture = experiment.swarm_dir / f"n{index}.json"
    if not mixture.is_file():
        raise RegmixError("--index", f"no mixture {mixture} (swarm indices: {format_ranges(swarm_indices(experiment))})")
    return proxy_train_config(experiment, mixture, proxy_dir(experiment, index))


def proxy_train_config(experiment: ExperimentConfig, mixture: Path, out: Path):
    """The `train.py` settings of a proxy on `mixture`: the same for every proxy but the mixture,
    so swarm members and any mixture checked later are comparable."""
    from regmix_ds.trainer import TrainConfig

    proxy = experiment.require_proxy()
    return TrainConfig(
        manifest=str(experiment.manifest_path),
        deepspeed_config=str(experiment.resolve(proxy.deepspeed_config)),
        out=str(out),
        mixture=str(mixture),
        preset=proxy.preset,
        seq_len=proxy.seq_len,
        train_tokens=proxy.train_tokens,
        lr=proxy.lr,
        schedule="constant",
        warmup=proxy.warmup,
        seed=proxy.seed,
        eval_batches=proxy.eval_batches,
        save_interval=proxy.save_interval,
        resume="auto",
        max_epochs=proxy.max_epochs,
    )


def train_proxy(config) -> int:
    """Train one proxy in this process; returns the trainer's exit code (0, 2 or 75)."""
    out = Path(config.out)
    # The trainer would also skip a finished run, but only after importing torch and DeepSpeed:
    # resubmitting a 512-task array should cost each finished task a second, not a minute.
    if (out / RESULT).is_file():
        print(f"{out / RESULT} exists, nothing to do")
        return 0
    from regmix_ds import engine, trainer

    marker = out / FAILED_MARKER
    marker.unlink(missing_ok=True)
    try:
        code = trainer.train(config, engine.discover_launch())
    except RegmixError:
        raise
    except BaseException as err:
        write_json_atomic(marker, {"error": f"{type(err).__name__}: {err}"})
        raise
    if code not in (0, trainer.EXIT_REQUEUE):
        write_json_atomic(marker, {"exit_code": code})
    return code


def run_swarm(experiment: ExperimentConfig, indices: list[int] | None, jobs: int) -> list[int]:
    """Train the given (default: all) proxies here, `jobs` at a time; returns the failed indices.

    Each proxy is its own `regmix-ds proxy` process (one DeepSpeed rank on a free port) with
    the machine's cores shared out, and its output in `proxies/n<i>/proxy.log`.
    """
    if jobs < 1:
        raise RegmixError("--jobs", f"must be >= 1, got {jobs}")
    experiment.require_proxy()
    known = swarm_indices(experiment)
    wanted = indices or known
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise RegmixError("--indices", f"not in the swarm: {format_ranges(unknown)}")
    todo = [i for i in wanted if not is_done(experiment, i)]
    print(f"run-swarm: {len(wanted) - len(todo)} of {len(wanted)} proxies already done; training {len(todo)}, {jobs} at a time")
    runs = {i: (proxy_dir(experiment, i), ["--index", str(i)]) for i in todo}
    return sorted(run_proxy_processes(experiment, runs, jobs, "proxies"))


def run_proxy_processes(experiment: ExperimentConfig, runs: dict, jobs: int, label: str) -> list:
    """Run `regmix-ds proxy --config EXP <args>` for each `key: (out_dir, args)` of `runs`, `jobs`
    at a time with the cores shared out; returns the keys that failed. Each proxy is its own
    world of one rank (on a free port), with its output in `<out_dir>/proxy.log`."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    for name in ("MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)

    def run(out: Path, args: list[str]) -> int:
        out.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "regmix_ds.cli", "proxy", "--config", experiment.path, *args]
        with open(out / "proxy.log", "ab") as log:
            return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode

    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(runs), desc=label, unit="proxy") as bar:
        futures = {pool.submit(run, *spec): key for key, spec in runs.items()}
        for future in as_completed(futures):
            if future.result() != 0:
                key = futures[future]
                failed.append(key)
                bar.write(f"{label} {key} failed; see {runs[key][0] / 'proxy.log'}")
            bar.update()
    return failed


def sbatch_line(experiment: ExperimentConfig, indices: list[int], throttle: int) -> str:
    """The command that trains `indices` as one Slurm job array, at most `throttle` at once."""
    return f"sbatch --array={format_ranges(indices)}%{throttle} {PROXY_SCRIPT} {experiment.path}"


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
