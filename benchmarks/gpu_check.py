"""The GPU check: one GPU, one script, one JSON file (`benchmarks/gpu_check.sh` runs this).

    python benchmarks/gpu_check.py --out gpu_check.json            # one GPU, under 8 minutes
    python benchmarks/gpu_check.py --out dry.json --small          # the same steps on a CPU, small sizes

Sections, in order; each records its result (or its error) and its seconds in the JSON file, which
is rewritten after every section, so a check cut short still leaves what it finished:

  device        the GPU, torch/DeepSpeed versions, the bf16 matmul peak and bandwidth measured here
  sweep         K = 1..64 proxy-1m members (vocabulary 50,432, sequence 2048, micro-batch 1) trained
                as one group (`group.stacked_step`, bf16 autocast, fp32 weights and AdamW) on seeded
                random tokens: aggregate tokens/s, MFU against the measured bf16 peak, peak memory
                (`torch.cuda.max_memory_allocated`), and the planner's prediction of time and memory
                for each; then K = 64 with 8 micro-batches per step (AdamW's cost spread), and K = 64
                through `torch.compile` (`proxy.compile`). Goal: aggregate MFU >= 50%.
  target        20 steps of target-1b through train.py's own code (`single.train`), ZeRO-3 bf16
                (`ds_configs/zero3_gpu_bf16.json`, micro-batch 4, no accumulation) on this GPU, on a
                synthetic corpus: tokens/s after the first 5 steps, MFU, peak memory.
  resume        a proxy-size run under the same ZeRO-3 bf16 config, 12 steps, a checkpoint every 4:
                once uninterrupted, once killed by SIGKILL after step 6 (`REGMIX_FAULT=step@6`) and
                resumed with `--resume auto`; the per-step and validation losses must agree, and every
                class the checkpoint files pickle must be on the `weights_only` allow-list
                (`engine.checkpoint_globals`), which the resume itself loads through.
  group_resume  the same for a group of 4 proxies (`regmix-ds proxy --indices 1-4`, checkpoints loaded
                with `weights_only=True`).

`--small` runs every section on the CPU at toy sizes (demo/tiny presets, fp32 `ds_configs/zero3.json`),
to prove the script end to end where there is no GPU. The last line printed is the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

SIZES = {
    "gpu": {
        "device": "cuda",
        "sweep": {"preset": "proxy-1m", "vocab": 50432, "seq_len": 2048, "micro": 1, "ks": [1, 2, 4, 8, 16, 32, 64],
                  "steps": 12, "skip": 4, "extra": [{"k": 64, "accumulation": 8}, {"k": 64, "compile": True}]},
        "target": {"preset": "target-1b", "seq_len": 2048, "micro": 4, "steps": 20, "skip": 5,
                   "ds_config": "zero3_gpu_bf16.json"},
        "resume": {"preset": "proxy-1m", "seq_len": 512, "micro": 8, "steps": 12, "save": 4, "kill": 6,
                   "ds_config": "zero3_gpu_bf16.json", "tolerance": 1e-3},
        "corpus": {"docs_per_domain": 600, "vocab_size": 8192},
    },
    "small": {
        "device": "cpu",
        "sweep": {"preset": "demo", "vocab": 1024, "seq_len": 128, "micro": 1, "ks": [1, 2, 4],
                  "steps": 6, "skip": 2, "extra": [{"k": 4, "accumulation": 2}, {"k": 2, "compile": True}]},
        "target": {"preset": "demo", "seq_len": 128, "micro": 2, "steps": 20, "skip": 5, "ds_config": "zero3.json"},
        "resume": {"preset": "tiny", "seq_len": 32, "micro": 2, "steps": 12, "save": 4, "kill": 6,
                   "ds_config": "zero3.json", "tolerance": 1e-6},
        "corpus": {"docs_per_domain": 240, "vocab_size": 512},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file to write (default gpu_check.json)")
    parser.add_argument("--small", action="store_true", help="the CPU dry run: every section at toy sizes")
    parser.add_argument("--sections", nargs="+", default=["sweep", "target", "resume", "group_resume"],
                        help="sections to run (default: all)")
    args = parser.parse_args()
    import torch

    if not args.small and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_check.py: no CUDA device (use --small for the CPU dry run)")
    sizes, out = SIZES["small" if args.small else "gpu"], Path(args.out)
    report: dict = {"mode": "small" if args.small else "gpu", "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="regmix-gpu-check-") as tmp:
        work = Path(tmp)
        run_section(report, out, "device", lambda: describe_device(args.small))
        corpus: dict = {}
        for name in args.sections:
            run_section(report, out, name, lambda name=name: SECTIONS[name](sizes, work, corpus))
    report["seconds"] = round(time.monotonic() - start, 1)
    report["ok"] = all(report[name].get("ok", False) for name in ["device", *args.sections])
    write(out, report)
    print(json.dumps(report))


def run_section(report: dict, out: Path, name: str, body: Callable[[], dict]) -> None:
    """Run one section; its result or its error, and its seconds, go into the report (written at once)."""
    print(f"gpu_check: {name} ...", flush=True)
    start = time.monotonic()
    try:
        report[name] = {"ok": True, **body()}
    except Exception as err:  # a section's failure is a finding: record it, run the next one
        report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                        "traceback": traceback.format_exc().splitlines()[-12:]}
    report[name]["seconds"] = round(time.monotonic() - start, 1)
    print(f"gpu_check: {name}: {'ok' if report[name]['ok'] else 'FAILED'} in {report[name]['seconds']} s", flush=True)
    write(out, report)


def write(out: Path, report: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, out)


def describe_device(small: bool) -> dict:
    import deepspeed
    import torch

    from regmix_ds.train.utilization import measure_bandwidth, measure_matmul_peak

    device = torch.device("cpu" if small else "cuda")
    dtype = torch.float32 if small else torch.bfloat16
    found = {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "python": platform.python_version(),
             "matmul_peak_flops_per_s": measure_matmul_peak(device, dtype, repeats=10),
             "bandwidth_bytes_per_s": measure_bandwidth(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        found.update(name=props.name, memory_bytes=props.total_memory, cuda=torch.version.cuda,
                     nccl=".".join(map(str, torch.cuda.nccl.version())))
    else:
        found.update(name=f"CPU ({torch.get_num_threads()} threads)")
    return found


# ---- sweep ----------------------------------------------------------------------------------------------


def sweep(sizes: dict, work: Path, corpus: dict) -> dict:
    """Tokens/s, MFU and peak memory of K-member groups, beside the planner's predictions."""
    import dataclasses

    import torch
    from proxies import time_group

    from regmix_ds.core.config import MODEL_PRESETS
    from regmix_ds.train import budget
    from regmix_ds.train import model as models
    from regmix_ds.train.stacked import LOSS_CHUNK
    from regmix_ds.train.utilization import Utilization

    s = sizes["sweep"]
    cuda = sizes["device"] == "cuda"
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    config = models.llama_config(MODEL_PRESETS[s["preset"]], s["vocab"], s["seq_len"])
    planned = budget.this_machine("bf16" if cuda else "fp32")
    utilization = Utilization(models.training_flops_per_token(config, s["seq_len"]), planned.peak_flops_per_s)
    base = budget.Workload(MODEL_PRESETS[s["preset"]], s["vocab"], s["seq_len"], s["micro"], 1, 1,
                           "bf16" if cuda else "fp32", LOSS_CHUNK[device.type])
    rows = []
    runs = [{"k": k} for k in s["ks"]] + s["extra"]
    for run in runs:
        k, accumulation, compiled = run["k"], run.get("accumulation", 1), run.get("compile", False)
        workload = dataclasses.replace(base, group=k, accumulation=accumulation)
        row = {"k": k, "accumulation": accumulation, "compile": compiled,
               "predicted_s": workload.step_seconds(planned)["total"],
               "predicted_memory_bytes": workload.memory(planned)["peak"]}
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            seconds = time_group(config, k, s["micro"], s["steps"], s["skip"], device, dtype, 0,
                                 accumulation=accumulation, compile=compiled)
        except torch.OutOfMemoryError:
            rows.append({**row, "error": "out of memory"})
            continue
        tokens = k * accumulation * (s["steps"] - s["skip"]) * s["micro"] * s["seq_len"]
        row.update(tokens_per_s=tokens / seconds, mfu=utilization.mfu(tokens / seconds),
                   measured_s=seconds / (s["steps"] - s["skip"]))
        row["memory_bytes"] = torch.cuda.max_memory_allocated() if cuda else budget.resident_bytes()
        rows.append(row)
        print(f"  K={k:3d} x{accumulation}{' compiled' if compiled else ''}: {row['tokens_per_s']:,.0f} tok/s, "
              f"MFU {row['mfu']:.1%}, {row['memory_bytes'] / 2**30:.2f} GiB (planner: {row['predicted_s']:.3f} s "
              f"vs {row['measured_s']:.3f} s a step, {row['predicted_memory_bytes'] / 2**30:.2f} GiB)", flush=True)
    best = max((r["mfu"] for r in rows if "mfu" in r), default=0.0)
    return {"preset": s["preset"], "vocab": s["vocab"], "seq_len": s["seq_len"], "micro": s["micro"],
            "precision": "bf16" if cuda else "fp32", "matmul_peak_flops_per_s": planned.peak_flops_per_s,
            "planner_device": dataclasses.asdict(planned), "rows": rows, "best_mfu": best,
            "memory_note": "max_memory_allocated" if cuda else "process peak RSS (VmHWM), cumulative over the rows",
            "goal_mfu_50": best >= 0.5}


# ---- a corpus for the runs -----------------------------------------------------------------------------


def prepared_corpus(sizes: dict, work: Path, corpus: dict) -> dict:
    """A synthetic corpus, prepared once for the sections that train through train.py (and its mixture)."""
    if corpus:
        return corpus
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.core.manifest import Manifest
    from regmix_ds.core.mixture import Mixture
    from regmix_ds.data.prepare import prepare
    from regmix_ds.data.synth import SynthSettings, synthesize

    c = sizes["corpus"]
    settings = SynthSettings(seed=0, docs_per_domain=c["docs_per_domain"], target_docs=60,
                             vocab_size=c["vocab_size"], valid_documents=40)
    config = synthesize(work / "corpus", settings)["config"]
    manifest = prepare(ExperimentConfig.load(config), train_tokenizer=True).path
    mixture = work / "mixture.json"
    Mixture.from_weights(Manifest.load(manifest).token_prior(), renormalize=True).save(mixture)
    corpus.update(config=config, manifest=manifest, mixture=mixture)
    return corpus


def ds_config(name: str, micro: int, work: Path) -> Path:
    """`ds_configs/<name>` with `micro` sequences per step and no accumulation, for one rank."""
    settings = json.loads((ROOT / "ds_configs" / name).read_text())
    settings.pop("train_batch_size", None)
    settings.update({"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1})
    path = work / f"{Path(name).stem}_micro{micro}.json"
    path.write_text(json.dumps(settings))
    return path


# ---- target-1b -----------------------------------------------------------------------------------------


def target(sizes: dict, work: Path, corpus: dict) -> dict:
    """20 steps of the target model through `single.train` in this process: speed, MFU, memory."""
    import torch

    from regmix_ds.core.config import TrainConfig
    from regmix_ds.train import engine, single

    s, data = sizes["target"], prepared_corpus(sizes, work, corpus)
    out = work / "target"
    config = TrainConfig(deepspeed_config=str(ds_config(s["ds_config"], s["micro"], work)), preset=s["preset"],
                         seq_len=s["seq_len"], steps=s["steps"], eval_batches=1, log_interval=5,
                         manifest=str(data["manifest"]), mixture=str(data["mixture"]), out=str(out))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    code = single.train(config, engine.discover_launch())
    if code != 0:
        raise RuntimeError(f"single.train exited {code}")
    result = json.loads((out / "result.json").read_text())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    steady = [step for step in steps if step["step"] > s["skip"]]
    tokens_per_s = len(steady) / sum(1 / step["tokens_per_s"] for step in steady)  # tokens per step are equal
    flops_per_token = result["mfu"] * result["matmul_peak_flops_per_s"] / result["tokens_per_s"]
    memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    shutil.rmtree(out / "hf", ignore_errors=True)  # 4.8 GB at 1B: not needed here
    return {"preset": s["preset"], "params": result["params"], "zero_stage": result["zero_stage"],
            "steps": result["steps"], "tokens_per_step": steps[0]["tokens"], "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / result["matmul_peak_flops_per_s"],
            "matmul_peak_flops_per_s": result["matmul_peak_flops_per_s"], "max_memory_allocated_bytes": memory,
            "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"]}


# ---- kill and resume -----------------------------------------------------------------------------------


def regmix(args: list, fault: str | None = None) -> subprocess.CompletedProcess:
    """`python -m regmix_ds ARGS` in a fresh process (with `REGMIX_FAULT=fault`)."""
    # Not this process's rank variables (the target section exported them): each run finds its own port.
    launch = {"REGMIX_FAULT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in launch}
    env.update({"REGMIX_FAULT": fault} if fault else {})
    return subprocess.run([sys.executable, "-m", "regmix_ds", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def losses(run: Path) -> tuple[list[float], dict]:
    """The per-step training losses of a run directory and its final validation losses."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in lines if "loss" in e], json.loads((run / "result.json").read_text())["valid_loss"]


def compare(reference: Path, resumed: Path, tolerance: float) -> dict:
    """How far a resumed run's losses are from the uninterrupted run's."""
    (ref_steps, ref_valid), (steps, valid) = losses(reference), losses(resumed)
    if len(steps) != len(ref_steps):
        raise RuntimeError(f"{resumed}: {len(steps)} logged steps, the uninterrupted run has {len(ref_steps)}")
    step_diff = max(abs(a - b) for a, b in zip(steps, ref_steps))
    valid_diff = max(abs(valid[name] - ref_valid[name]) for name in ref_valid)
    return {"max_step_loss_difference": step_diff, "max_valid_loss_difference": valid_diff,
            "tolerance": tolerance, "reproduced": max(step_diff, valid_diff) <= tolerance}


def pickled_globals(directory: Path) -> dict:
    """Every class each checkpoint file under `directory` pickles, and those off the allow-list."""
    import torch

    from regmix_ds.train.engine import checkpoint_globals

    allowed = {f"{c.__module__}.{c.__qualname__}" for c in checkpoint_globals()}
    found = {}
    for path in sorted(p for p in directory.rglob("*.pt")):
        found[str(path.relative_to(directory))] = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    refused = sorted({name for names in found.values() for name in names if name not in allowed})
    return {"files": len(found), "globals": sorted({n for names in found.values() for n in names}), "refused": refused}


def killed_and_resumed(args: Callable[[Path], list], work: Path, name: str, kill: int) -> dict:
    """Run `args` into `<name>-reference` uninterrupted, and into `<name>-killed` killed after step `kill`
    then rerun to the end; returns the exit codes and whether the second resumed."""
    reference = regmix(args(work / f"{name}-reference"))
    if reference.returncode != 0:
        raise RuntimeError(f"uninterrupted run exited {reference.returncode}: {reference.stderr[-1500:]}")
    killed = regmix(args(work / f"{name}-killed"), fault=f"step@{kill}")
    resumed = regmix(args(work / f"{name}-killed"))
    if resumed.returncode != 0:
        raise RuntimeError(f"resumed run exited {resumed.returncode}: {resumed.stderr[-1500:]}")
    return {"killed_exit": killed.returncode, "resumed": "resumed from" in resumed.stdout + resumed.stderr}


def resume(sizes: dict, work: Path, corpus: dict) -> dict:
    """A ZeRO-3 run killed after step `kill` and resumed reproduces the uninterrupted one."""
    s, data = sizes["resume"], prepared_corpus(sizes, work, corpus)
    config = ds_config(s["ds_config"], s["micro"], work)

    def args(out: Path) -> list:
        return ["train", "--manifest", data["manifest"], "--mixture", data["mixture"], "--deepspeed_config", config,
                "--preset", s["preset"], "--seq-len", s["seq_len"], "--steps", s["steps"], "--eval-batches", 1,
                "--save-interval", s["save"], "--out", out, "--resume", "auto"]

    outcome = killed_and_resumed(args, work, "resume", s["kill"])
    checked = compare(work / "resume-reference", work / "resume-killed", s["tolerance"])
    allow = pickled_globals(work / "resume-killed" / "checkpoints")
    ok = outcome["killed_exit"] == -9 and outcome["resumed"] and checked["reproduced"] and not allow["refused"]
    return {"ok": ok, **outcome, **checked, "checkpoint_globals": allow}


def group_resume(sizes: dict, work: Path, corpus: dict) -> dict:
    """A group of 4 killed after step `kill` and resumed reproduces the uninterrupted group."""
    import yaml

    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.pipeline.swarm import draw_swarm, swarm_settings

    s, data = sizes["resume"], prepared_corpus(sizes, work, corpus)
    experiments = {}
    for name in ("group-reference", "group-killed"):
        root = work / name
        shutil.copytree(Path(data["config"]).parent, root, symlinks=True)
        config = yaml.safe_load((root / "exp.yaml").read_text())
        config["proxy"] = {"deepspeed_config": str(ds_config(s["ds_config"], s["micro"], work)), "preset": s["preset"],
                           "seq_len": s["seq_len"], "steps": s["steps"], "eval_batches": 1,
                           "save_interval": s["save"], "group_size": 4}
        config["swarm"] = {"n": 4, "seed": 1}
        (root / "exp.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        experiment = ExperimentConfig.load(root / "exp.yaml")
        draw_swarm(swarm_settings(experiment), experiment)
        experiments[name] = experiment

    def args(out: Path) -> list:
        return ["proxy", "--config", experiments[out.name].path, "--indices", "1-4"]

    outcome = killed_and_resumed(args, work, "group", s["kill"])
    checks = [compare(experiments["group-reference"].work.proxy(i).path,
                      experiments["group-killed"].work.proxy(i).path, s["tolerance"]) for i in range(1, 5)]
    allow = pickled_globals(experiments["group-killed"].work.proxies)
    worst = max(max(c["max_step_loss_difference"], c["max_valid_loss_difference"]) for c in checks)
    ok = (outcome["killed_exit"] == -9 and outcome["resumed"] and all(c["reproduced"] for c in checks)
          and not allow["refused"])
    return {"ok": ok, **outcome, "max_loss_difference": worst, "tolerance": s["tolerance"],
            "checkpoint_globals": allow}


SECTIONS = {"sweep": sweep, "target": target, "resume": resume, "group_resume": group_resume}


if __name__ == "__main__":
    main()
