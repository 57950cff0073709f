"""Proxy throughput: K proxies trained as one stacked group vs one after another; tokens/s and MFU.

    python benchmarks/proxies.py                      # CPU: K=16 demo-size proxies, group vs sequential
    python benchmarks/proxies.py --gpu                # GPU: proxy-1m, vocabulary 50,432, seq 2048, bf16, K=1..64

Both modes time the training step `regmix-ds proxy --indices` takes (`group.stacked_step`: stacked
forward and backward, per-member gradient clipping, per-member AdamW) on token batches drawn
from a seeded generator. The data loader is left out: its cost per proxy is the same grouped
or not. Settings (micro-batch, AdamW, clipping) come from `ds_configs/zero0.json`, the demo's.

CPU mode, the demo's proxy (preset `demo`, seq 128, vocabulary 1024):
  group       the K proxies as one group, `--steps` steps;
  sequential  the same K proxies one after another in this process, each a group of one;
  hf_single   one proxy as the plain Hugging Face model + torch AdamW, the arithmetic of the
              DeepSpeed ZeRO-0 path: evidence that a group of one is not a slowed-down baseline.
GPU mode: aggregate tokens/s and MFU for each K of `--ks`, in bf16 (autocast, fp32 weights).

MFU = aggregate training tokens/s x model FLOPs per token (`model.training_flops_per_token`)
/ the matmul peak measured in this process (`utilization.measure_matmul_peak`: fp32 on CPU,
bf16 on GPU). The first `--skip` steps of every run (allocation, first calls) are not timed.
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from regmix_ds.core.config import MODEL_PRESETS
from regmix_ds.core.dsconfig import load_ds_config
from regmix_ds.train import model as models
from regmix_ds.train.group import AdamW, GroupState, fresh_start, stacked_step
from regmix_ds.train.stacked import LOSS_CHUNK, StackedLlama
from regmix_ds.train.utilization import Utilization, measure_matmul_peak, synchronize

ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG = ROOT / "ds_configs" / "zero0.json"
LR = 3e-3


def time_steps(steps: int, skip: int, device: torch.device, next_batch: Callable[[], torch.Tensor],
               train: Callable[[torch.Tensor, int], object]) -> float:
    """Seconds spent in `train(batch, step)` for steps skip+1 .. steps; batches are drawn untimed."""
    timed = 0.0
    for step in range(1, steps + 1):
        batch = next_batch()
        synchronize(device)
        start = time.perf_counter()
        train(batch, step)
        synchronize(device)
        timed += (time.perf_counter() - start) if step > skip else 0.0
    return timed


def random_batches(vocab_size: int, shape: tuple[int, ...], seed: int,
                   device: torch.device) -> Callable[[], torch.Tensor]:
    """Token batches of `shape` from a seeded generator (the values do not matter, only the work)."""
    generator = torch.Generator().manual_seed(seed)
    return lambda: torch.randint(0, vocab_size, shape, generator=generator).to(device)


def time_group(hf_config, k: int, micro: int, steps: int, skip: int, device: torch.device, dtype: torch.dtype,
               seed: int, accumulation: int = 1, compile: bool = False) -> float:
    """Seconds of the timed steps of K proxies trained as one group (`compile`: as `proxy.compile` trains)."""
    model = StackedLlama.from_config(hf_config, LOSS_CHUNK[device.type], compile)
    adamw = AdamW.from_deepspeed(load_ds_config(DS_CONFIG))
    state = GroupState.stack([fresh_start(hf_config, seed)] * k, device)
    lrs = torch.full((k,), LR, device=device)
    shape = (accumulation, k, micro, hf_config.max_position_embeddings + 1)
    batches = random_batches(hf_config.vocab_size, shape, seed, device)
    return time_steps(steps, skip, device, batches,
                      lambda batch, step: stacked_step(model, adamw, state, batch, lrs, step, dtype))


def time_hf_single(hf_config, micro: int, steps: int, skip: int, seed: int) -> float:
    """Seconds of the timed steps of one proxy as the plain HF model with torch AdamW (CPU)."""
    adamw = AdamW.from_deepspeed(load_ds_config(DS_CONFIG))
    model = models.build_model(hf_config, seed)
    optimizer = torch.optim.AdamW(models.weight_decay_groups(model, adamw.weight_decay), lr=LR, betas=adamw.betas,
                                  eps=adamw.eps)

    def train(batch: torch.Tensor, _step: int) -> None:
        inputs, targets = models.split_inputs(batch)
        models.next_token_loss(model(input_ids=inputs, use_cache=False).logits, targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), adamw.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    cpu = torch.device("cpu")
    batches = random_batches(hf_config.vocab_size, (micro, hf_config.max_position_embeddings + 1), seed, cpu)
    return time_steps(steps, skip, cpu, batches, train)


def figures(tokens: int, seconds: float, utilization: Utilization) -> dict:
    tokens_per_s = tokens / seconds
    return {"tokens_per_s": round(tokens_per_s, 1), "mfu": round(utilization.mfu(tokens_per_s), 5)}


def cpu_mode(args) -> dict:
    hf_config = models.llama_config(MODEL_PRESETS["demo"], args.vocab_size or 1024, args.seq_len or 128)
    micro = args.micro_batch or 2
    device, dtype = torch.device("cpu"), torch.float32
    utilization = Utilization(models.training_flops_per_token(hf_config, hf_config.max_position_embeddings),
                              measure_matmul_peak(device, dtype))
    timed_tokens = (args.steps - args.skip) * micro * hf_config.max_position_embeddings
    print(f"demo proxy, vocab {hf_config.vocab_size}, seq {hf_config.max_position_embeddings}, micro-batch {micro}, "
          f"{torch.get_num_threads()} threads; "
          f"matmul peak {utilization.peak_flops_per_s / 1e9:.1f} GFLOP/s", flush=True)
    group = figures(args.k * timed_tokens,
                    time_group(hf_config, args.k, micro, args.steps, args.skip, device, dtype, 0), utilization)
    print(f"group of {args.k}:       {group['tokens_per_s']:>10,.0f} tok/s  MFU {group['mfu']:.2%}", flush=True)
    sequential_seconds = sum(time_group(hf_config, 1, micro, args.steps, args.skip, device, dtype, seed)
                             for seed in range(args.k))
    sequential = figures(args.k * timed_tokens, sequential_seconds, utilization)
    print(f"{args.k} one after another: {sequential['tokens_per_s']:>10,.0f} tok/s  MFU {sequential['mfu']:.2%}",
          flush=True)
    hf_single = figures(timed_tokens, time_hf_single(hf_config, micro, args.steps, args.skip, 0), utilization)
    print(f"one HF model + AdamW: {hf_single['tokens_per_s']:>10,.0f} tok/s  MFU {hf_single['mfu']:.2%}", flush=True)
    return {
        "mode": "cpu", "k": args.k, "group": group, "sequential": sequential, "hf_single": hf_single,
        "ratio": round(group["tokens_per_s"] / sequential["tokens_per_s"], 3),
        "matmul_peak_flops_per_s": utilization.peak_flops_per_s, "threads": torch.get_num_threads(),
    }


def gpu_mode(args) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/proxies.py --gpu: no CUDA device")
    seq_len = args.seq_len or 2048
    hf_config = models.llama_config(MODEL_PRESETS["proxy-1m"], args.vocab_size or 50432, seq_len)
    micro = args.micro_batch or 1
    device, dtype = torch.device("cuda"), torch.bfloat16
    utilization = Utilization(models.training_flops_per_token(hf_config, seq_len),
                              measure_matmul_peak(device, dtype, repeats=10))
    print(f"proxy-1m, vocab {hf_config.vocab_size}, seq {seq_len}, micro-batch {micro}, bf16 on "
          f"{torch.cuda.get_device_name()}; matmul peak {utilization.peak_flops_per_s / 1e12:.1f} TFLOP/s",
          flush=True)
    rows = []
    for k in args.ks:
        try:
            seconds = time_group(hf_config, k, micro, args.steps, args.skip, device, dtype, 0)
        except torch.OutOfMemoryError:
            print(f"K={k}: out of memory", flush=True)
            rows.append({"k": k, "error": "out of memory"})
            break
        row = {"k": k, **figures(k * (args.steps - args.skip) * micro * seq_len, seconds, utilization),
               "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        print(f"K={k:3d}: {row['tokens_per_s']:>12,.0f} tok/s  MFU {row['mfu']:.1%}  {row['max_memory_gib']} GiB",
              flush=True)
        rows.append(row)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"mode": "gpu", "device": torch.cuda.get_device_name(),
            "matmul_peak_flops_per_s": utilization.peak_flops_per_s, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="the GPU mode (proxy-1m, bf16, K from --ks)")
    parser.add_argument("--k", type=int, default=16, help="CPU mode: proxies in the group (default 16)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64], help="GPU mode: group sizes")
    parser.add_argument("--steps", type=int, default=30, help="steps per run, including --skip (default 30)")
    parser.add_argument("--skip", type=int, default=5, help="untimed first steps of each run (default 5)")
    parser.add_argument("--seq-len", type=int, help="default: 128 on CPU, 2048 on GPU")
    parser.add_argument("--vocab-size", type=int, help="default: 1024 on CPU, 50432 on GPU")
    parser.add_argument("--micro-batch", type=int, help="sequences per proxy per step (default: 2 on CPU, 1 on GPU)")
    args = parser.parse_args()
    if not 0 <= args.skip < args.steps:
        parser.error("--skip must be below --steps")
    print(json.dumps(gpu_mode(args) if args.gpu else cpu_mode(args)))


if __name__ == "__main__":
    main()
