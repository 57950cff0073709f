"""Benchmark of the blended sampler: lookup speed, prefix exactness against Megatron's greedy rule, index size.

    python benchmarks/blend.py [--positions 100000000] [--prefix 1000000] [--batch 32768]

- lookups_per_s: `BlendedDataset.lookup` over `--positions` consecutive positions in batches,
  one process, by wall-clock (lookups_per_cpu_s: by the process's CPU time, which shows the
  cost when other work shares the cores), 17 domains weighted by RegMix's token prior (../shared/regmix-data/
  token_prior.yaml, `train:`, normalised). The domains are zero-copy stand-in streams sized
  like the Pile (3e11 tokens split by the prior, seq_len 2048): lookups never read tokens.
- max_prefix_deviation: max over prefixes t <= `--prefix` and domains i of |count_i(t) - w_i t|
  for the prior, 20 Dirichlet(prior x s) mixtures (s from 0.1 to 5), 0.999 + 16 equal tiny
  domains, and 0.5/0.49 + 15 equal tiny domains. greedy_max_prefix_deviation is the same for
  Megatron-LM's blending rule (pick the domain with the largest w_i*max(t,1) - count_i, first
  index on ties), computed here on the same mixtures.
- index_bytes: the memory that decides the stream, for 1e6 and for `--positions` samples.
The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from regmix_ds.core.files import read_yaml
from regmix_ds.core.mixture import Mixture
from regmix_ds.data.blend import BeattyTree, BlendedDataset

PRIOR = Path(__file__).resolve().parents[2] / "shared" / "regmix-data" / "token_prior.yaml"
CORPUS_TOKENS = 3e11  # about the Pile's size in tokens
SEQ_LEN = 2048
TARGETS = {"lookups_per_s": 5_000_000, "max_prefix_deviation": 2.0}


def load_prior() -> dict[str, float]:
    return dict(Mixture.from_weights(read_yaml(PRIOR)["train"], renormalize=True, source=PRIOR).weights)


def stand_in_dataset(prior: dict[str, float], num_samples: int) -> BlendedDataset:
    """The prior mixture over Pile-sized streams that cost no memory (one token, broadcast)."""
    streams = {name: np.broadcast_to(np.zeros(1, dtype=np.uint16), (int(w * CORPUS_TOKENS),))
               for name, w in prior.items()}
    return BlendedDataset(streams, Mixture.from_weights(prior), SEQ_LEN, seed=0, num_samples=num_samples)


def lookups_per_second(dataset: BlendedDataset, positions: int, batch: int) -> tuple[float, float]:
    """Positions looked up per second of wall-clock time and per second of this process's CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    for first in tqdm(range(0, positions, batch), desc="lookups", unit="batch", mininterval=2):
        dataset.lookup(np.arange(first, min(first + batch, positions)))
    return positions / (time.perf_counter() - wall), positions / (time.process_time() - cpu)


def benchmark_mixtures(prior: np.ndarray) -> dict[str, np.ndarray]:
    """The prior, 20 Dirichlet draws around it, and the two skewed mixtures (17 domains each)."""
    rng = np.random.default_rng(0)
    mixtures = {"prior": prior}
    for strength in np.geomspace(0.1, 5.0, 20):
        mixtures[f"dirichlet_s{strength:.2f}"] = rng.dirichlet(prior * strength)
    mixtures["skewed_0.999+16"] = np.r_[0.999, np.full(16, 0.001 / 16)]
    mixtures["skewed_0.5/0.49+15"] = np.r_[0.5, 0.49, np.full(15, 0.01 / 15)]
    return {name: weights / weights.sum() for name, weights in mixtures.items()}


def max_prefix_deviation(sequence: np.ndarray, weights: np.ndarray) -> float:
    """max over t and i of |count_i(t) - w_i t| for the domain sequence (prefixes t = 1..T)."""
    prefix = np.arange(1, sequence.size + 1)
    return max(float(np.abs(np.cumsum(sequence == i) - w * prefix).max()) for i, w in enumerate(weights))


def greedy_sequences(weights: np.ndarray, length: int) -> np.ndarray:
    """Megatron's rule for all mixtures at once (rows of `weights`): [length, mixtures] domains."""
    rows = np.arange(weights.shape[0])
    counts = np.zeros_like(weights)
    error = np.empty_like(weights)
    chosen = np.empty((length, weights.shape[0]), dtype=np.int8)
    for t in tqdm(range(length), desc="greedy", unit="pos", mininterval=2, unit_scale=True):
        np.multiply(weights, max(t, 1), out=error)
        error -= counts
        pick = error.argmax(axis=1)
        counts[rows, pick] += 1
        chosen[t] = pick
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=100_000_000, help="positions looked up for the speed figure")
    parser.add_argument("--prefix", type=int, default=1_000_000, help="prefix length checked per mixture")
    parser.add_argument("--batch", type=int, default=1 << 20, help="positions per lookup call")
    args = parser.parse_args()

    prior = load_prior()
    dataset = stand_in_dataset(prior, args.positions)
    index_bytes = {n: stand_in_dataset(prior, n).index_bytes for n in (1_000_000, args.positions)}
    speed, cpu_speed = lookups_per_second(dataset, args.positions, args.batch)
    print(f"lookups: {speed:,.0f}/s wall-clock, {cpu_speed:,.0f}/s of process CPU time, over "
          f"{args.positions:,} positions (batch {args.batch}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)")

    mixtures = benchmark_mixtures(np.array(list(prior.values())))
    positions = np.arange(args.prefix)
    ours = {name: max_prefix_deviation(BeattyTree(w).route(positions)[0], w) for name, w in mixtures.items()}
    greedy_chosen = greedy_sequences(np.stack(list(mixtures.values())), args.prefix)
    greedy = {name: max_prefix_deviation(greedy_chosen[:, column], w)
              for column, (name, w) in enumerate(mixtures.items())}
    for name in mixtures:
        print(f"  {name:22s} beatty tree {ours[name]:.3f}   megatron greedy {greedy[name]:.3f}")

    result = {
        "lookups_per_s": round(speed),
        "lookups_per_cpu_s": round(cpu_speed),
        "positions": args.positions,
        "domains": len(prior),
        "max_prefix_deviation": round(max(ours.values()), 4),
        "greedy_max_prefix_deviation": round(max(greedy.values()), 4),
        "prior_prefix_deviation": round(ours["prior"], 4),
        "greedy_prior_prefix_deviation": round(greedy["prior"], 4),
        "prefix_positions": args.prefix,
        "mixtures": len(mixtures),
        "index_bytes": index_bytes[args.positions],
        "index_bytes_at_1e6_samples": index_bytes[1_000_000],
        "load_average": round(os.getloadavg()[0], 2),
    }
    result["targets_met"] = (result["lookups_per_s"] >= TARGETS["lookups_per_s"]
                             and result["max_prefix_deviation"] <= TARGETS["max_prefix_deviation"]
                             and index_bytes[args.positions] == index_bytes[1_000_000])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
