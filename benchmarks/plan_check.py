"""The planner's model against measured runs on this machine: a group's step time and peak memory.

    flock /tmp/regmix-heavy.lock python benchmarks/plan_check.py [--steps 8] [--skip 2] [--cases NAME ...]

Each case trains a group of K proxies for `--steps` optimizer steps in a fresh process, the step
`regmix-ds proxy --indices` takes (`group.stacked_step` on `GroupState.stack`ed fresh members,
AdamW and clipping from ds_configs/zero0.json, fp32 on the CPU) on seeded random tokens, and
reports its median step time after `--skip` steps; a second fresh process trains it 2 steps with
`MALLOC_MMAP_THRESHOLD_=1048576`, so that glibc hands every freed block of 1 MiB or more back at
once and the process's peak resident memory is its peak live memory: what the planner models, and
what `torch.cuda.max_memory_allocated` reports on a GPU. (With glibc's defaults the heap keeps
freed blocks below 32 MiB: the `default` column, higher.) Peak resident memory is `VmHWM` of
/proc/self/status (`budget.resident_bytes`), everything the process held at once, Python and torch
included; not `ru_maxrss`, which a child inherits from this larger parent across exec.
The planner (`train.budget`) predicts both from the shape and this
machine's device, measured once here by `budget.this_machine` (matmul peak, the step's elementwise
bandwidth, operator cost, the cost of fresh pages, a fresh process's resident memory), and from
each case's own matrix products timed at their shapes (`budget.measure_matmul_seconds`).
Timing is only meaningful on a quiet machine: run it under the lock; each case first waits (up to
`--quiet-wait` seconds) until the CPUs are busy less than `--quiet-busy` of the time (sampled from
/proc/stat for 2 s), and the table shows how busy they were. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG = ROOT / "ds_configs" / "zero0.json"

CASES = {  # name: (preset or (layers, heads, hidden, ffn), vocab, seq_len, micro, accumulation, K)
    "demo-k1": ("demo", 1024, 128, 2, 1, 1),
    "demo-k16": ("demo", 1024, 128, 2, 1, 16),
    "1m-k1": ("proxy-1m", 4096, 256, 2, 1, 1),
    "1m-k8": ("proxy-1m", 4096, 256, 2, 1, 8),
    "1m-k32": ("proxy-1m", 4096, 256, 2, 1, 32),
    "1m-k16-accum2": ("proxy-1m", 4096, 512, 1, 2, 16),
    "1m-k64-seq128": ("proxy-1m", 4096, 128, 1, 1, 64),
    "1m-v50k-k4": ("proxy-1m", 50432, 256, 1, 1, 4),
    "1m-v50k-k16": ("proxy-1m", 50432, 256, 1, 1, 16),
    "60m-k2": ("proxy-60m", 4096, 256, 1, 1, 2),
}


def shape_of(preset):
    from regmix_ds.core.config import MODEL_PRESETS, ModelShape

    return MODEL_PRESETS[preset] if isinstance(preset, str) else ModelShape(*preset)


def child(case: list, steps: int, skip: int) -> dict:
    """Train one case in this (fresh) process: its step times and peak resident memory."""
    import torch

    from regmix_ds.core.dsconfig import load_ds_config
    from regmix_ds.train import budget
    from regmix_ds.train import model as models
    from regmix_ds.train.group import AdamW, GroupState, fresh_start, stacked_step
    from regmix_ds.train.stacked import StackedLlama

    preset, vocab, seq_len, micro, accumulation, k = case
    process = budget.resident_bytes()
    config = models.llama_config(shape_of(preset), vocab, seq_len)
    model, adamw = StackedLlama.from_config(config), AdamW.from_deepspeed(load_ds_config(DS_CONFIG))
    start = fresh_start(config, 0)  # kept, as the trainer keeps it (`group.Group.fresh_starts`)
    state = GroupState.stack([start] * k, torch.device("cpu"))
    lrs = torch.full((k,), 1e-3, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for step in range(1, steps + 1):
        batches = torch.randint(0, vocab, (accumulation, k, micro, seq_len + 1), generator=generator)
        tick = time.perf_counter()
        stacked_step(model, adamw, state, batches, lrs, step)
        seconds.append(time.perf_counter() - tick)
    return {"process_bytes": process, "peak_bytes": budget.resident_bytes(),
            "step_seconds": statistics.median(seconds[skip:]), "all_seconds": seconds}


def busy(seconds: float = 2.0) -> float:
    """Fraction of the machine's CPU time spent working over the next `seconds` (from /proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total, idle = sample()
    time.sleep(seconds)
    total2, idle2 = sample()
    return 1.0 - (idle2 - idle) / max(total2 - total, 1)


def wait_for_quiet(limit: float, seconds: float) -> float:
    """Wait until the machine is busy less than `limit` of the time (or `seconds` have passed); returns
    how busy it was when the case started."""
    deadline = time.monotonic() + seconds
    while (now := busy()) >= limit and time.monotonic() < deadline:
        time.sleep(3)
    return now


def measure(name: str, steps: int, skip: int, returned: bool = False) -> dict:
    """Run one case in a fresh process; `returned`: with glibc returning every freed block of 1 MiB
    or more to the system at once (`MALLOC_MMAP_THRESHOLD_`), so that its peak RSS is its peak live
    memory, what the planner models (and what `torch.cuda.max_memory_allocated` is on a GPU)."""
    command = [sys.executable, __file__, "--child", json.dumps(CASES[name]), "--steps", str(steps), "--skip", str(skip)]
    env = {**os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(2**20)} if returned else {})}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"{name} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def extrapolate(budget, device) -> dict:
    """The planner's peak memory of K = 64 proxy-1m at vocabulary 50,432 and sequence 2048, micro-batch 1,
    the size no CPU here can hold: in bf16 on a GPU, and in fp32 on this CPU."""
    from regmix_ds.train.stacked import LOSS_CHUNK

    found = {}
    for where, precision, on in (("gpu_bf16", "bf16", None), ("cpu_fp32", "fp32", device)):
        chunk = LOSS_CHUNK["cuda" if on is None else "cpu"]
        memory = budget.Workload(shape_of("proxy-1m"), 50432, 2048, 1, 1, 64, precision, chunk).memory(on)
        found[where] = {name: round(value / 2**30, 2) for name, value in memory.items()}
        print(f"K=64 proxy-1m, vocabulary 50,432, sequence 2048, {where}: {found[where]['peak']} GiB "
              f"({', '.join(f'{n} {v}' for n, v in found[where].items() if n != 'peak' and v)})", flush=True)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per case (default 8)")
    parser.add_argument("--skip", type=int, default=2, help="first steps left out of the median (default 2)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="cases to run")
    parser.add_argument("--quiet-busy", type=float, default=0.1,
                        help="wait until the CPUs are busy less than this fraction of the time (default 0.1)")
    parser.add_argument("--quiet-wait", type=float, default=120, help="most seconds to wait for it (default 120)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child), args.steps, args.skip)))
        return

    from regmix_ds.train import budget

    first = budget.this_machine("fp32")
    print(f"measuring {len(args.cases)} cases ...", flush=True)
    measured = {}
    for name in args.cases:
        load = wait_for_quiet(args.quiet_busy, args.quiet_wait)
        measured[name] = (measure(name, args.steps, args.skip), measure(name, 2, 1, returned=True), load)
    # Other work on shared cores only ever lowers a probe: the best of the two measurements of the device.
    again = budget.this_machine("fp32")
    device = dataclasses.replace(first, peak_flops_per_s=max(first.peak_flops_per_s, again.peak_flops_per_s),
                                 bandwidth_bytes_per_s=max(first.bandwidth_bytes_per_s, again.bandwidth_bytes_per_s),
                                 op_seconds=min(first.op_seconds, again.op_seconds),
                                 fresh_page_seconds=min(first.fresh_page_seconds, again.fresh_page_seconds))
    print(f"{device.name}: matmul {device.peak_flops_per_s / 1e9:.0f} GFLOP/s, bandwidth "
          f"{device.bandwidth_bytes_per_s / 1e9:.1f} GB/s, {device.op_seconds * 1e6:.1f} us an operator, "
          f"fresh pages {device.fresh_page_seconds * 1e9:.2f} s/GB, "
          f"process {device.process_bytes / 2**20:.0f} MiB", flush=True)
    print(f"{'case':16} {'K':>3} {'pred s':>8} {'meas s':>8} {'err':>6} {'pred MiB':>9} {'meas MiB':>9} "
          f"{'err':>6} {'default':>8} {'busy':>5}", flush=True)
    rows = []
    for name, (timed, live, load) in measured.items():
        preset, vocab, seq_len, micro, accumulation, k = CASES[name]
        workload = budget.Workload(shape_of(preset), vocab, seq_len, micro, accumulation, k)
        step = workload.step_seconds(device, budget.measure_matmul_seconds(workload))
        predicted_s = step["total"]
        predicted_b = workload.memory(device)["peak"]
        row = {"case": name, "preset": preset, "vocab": vocab, "seq_len": seq_len, "micro": micro,
               "accumulation": accumulation, "k": k, "predicted_s": round(predicted_s, 4),
               "measured_s": round(timed["step_seconds"], 4),
               "time_error": round(predicted_s / timed["step_seconds"] - 1, 3),
               "predicted_mib": round(predicted_b / 2**20), "measured_mib": round(live["peak_bytes"] / 2**20),
               "memory_error": round(predicted_b / live["peak_bytes"] - 1, 3),
               "glibc_default_mib": round(timed["peak_bytes"] / 2**20), "busy_before": round(load, 2),
               "predicted_terms_s": {term: round(seconds, 4) for term, seconds in step.items()}}
        rows.append(row)
        print(f"{name:16} {k:>3} {row['predicted_s']:>8.3f} {row['measured_s']:>8.3f} {row['time_error']:>+6.0%} "
              f"{row['predicted_mib']:>9,} {row['measured_mib']:>9,} {row['memory_error']:>+6.0%} "
              f"{row['glibc_default_mib']:>8,} {load:>5.2f}", flush=True)
    extrapolated = extrapolate(budget, device)
    print(json.dumps({
        "extrapolated_k64": extrapolated,
        "device": {"name": device.name, "peak_flops_per_s": device.peak_flops_per_s,
                   "bandwidth_bytes_per_s": device.bandwidth_bytes_per_s, "op_seconds": device.op_seconds,
                   "fresh_page_seconds": device.fresh_page_seconds,
                   "process_bytes": device.process_bytes},
        "steps": args.steps, "skip": args.skip, "rows": rows,
        "max_time_error": max(abs(r["time_error"]) for r in rows),
        "max_memory_error": max(abs(r["memory_error"]) for r in rows),
    }))


if __name__ == "__main__":
    main()
