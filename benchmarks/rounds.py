"""Active rounds against one blind round at the same proxy budget, on the demo corpus, several corpus seeds.

For each corpus seed: one synthetic corpus (`regmix-ds synth`, the demo's settings), prepared once;
arm `one round`: a swarm of P mixtures, trained, fitted, simulated; arm `two rounds`: P/2 mixtures,
fitted, then `swarm --next-round` adds P/2 near the fit's best, and the fit and simulation use
both rounds. Each arm's chosen mixture is trained and verified (`regmix-ds verify`), and an oracle
search at proxy scale (`pipeline.oracle`, started from both arms' best and chosen mixtures, the
target composition and the natural mixture) gives the best loss the regrets are measured against.

    python benchmarks/rounds.py [--seeds 0 1 2] [--proxies 32] [--work DIR]

Prints one line per seed and arm, then a final JSON line with the means and the spread.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("one round", "two rounds")


def regmix(*args: object, cwd: Path) -> str:
    """Run `regmix-ds ARGS` (failing loudly), return its stdout."""
    done = subprocess.run([sys.executable, "-m", "regmix_ds", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"regmix-ds {' '.join(map(str, args))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def corpus(directory: Path, seed: int) -> None:
    """The demo's corpus and settings for `seed`, prepared once."""
    if (directory / "exp.yaml").exists():
        return
    regmix("synth", "--out", directory, "--seed", seed, "--deepspeed-config", ROOT / "ds_configs" / "zero0.json",
           cwd=ROOT)
    regmix("prepare", "--config", directory / "exp.yaml", "--train-tokenizer", cwd=ROOT)


def arm_config(directory: Path, arm: str, proxies: int, seed: int) -> Path:
    """exp.yaml of one arm: its own work dir sharing the prepared data and tokenizer."""
    config = yaml.safe_load((directory / "exp.yaml").read_text())
    work = directory / arm.replace(" ", "_")
    (work / "work").mkdir(parents=True, exist_ok=True)
    data = work / "work" / "data"
    if not data.exists():
        data.symlink_to(directory / "work" / "data")
    config["work_dir"] = str(work / "work")
    config["data"]["tokenizer"] = str(directory / "work" / "tokenizer")
    config["proxy"]["deepspeed_config"] = str(directory / config["proxy"]["deepspeed_config"])
    for source in config["data"]["domains"].values():
        source["paths"] = [str(directory / path) for path in source["paths"]]
    for source in config["data"].get("targets", {}).values():
        source["paths"] = [str(directory / path) for path in source["paths"]]
    first = proxies if arm == "one round" else proxies // 2
    config["swarm"] = {**config.get("swarm", {}), "n": first, "seed": seed}
    path = work / "exp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def train_round(config: Path) -> None:
    regmix("run-swarm", "--config", config, "--jobs", 2, cwd=ROOT)
    regmix("collect", "--config", config, cwd=ROOT)
    regmix("fit", "--config", config, cwd=ROOT)
    regmix("simulate", "--config", config, cwd=ROOT)


def run_arm(config: Path, arm: str, proxies: int) -> None:
    """Swarm, proxies, fit and simulation of one arm (finished work is reused)."""
    work = yaml.safe_load(config.read_text())["work_dir"]
    if not (Path(work) / "swarm").is_dir():
        regmix("swarm", "--config", config, cwd=ROOT)
    train_round(config)
    if arm == "two rounds":
        settings = json.loads((Path(work) / "swarm" / "settings.json").read_text())
        if len(settings.get("rounds", [1])) < 2:
            regmix("swarm", "--config", config, "--next-round", "--n", proxies - proxies // 2, cwd=ROOT)
        train_round(config)


def measured(config: Path, name: str, oracle: Path | None = None) -> float:
    """The target loss of row `name` of the arm's verification (trains what it needs)."""
    args = ["verify", "--config", config, "--jobs", 2] + (["--oracle", oracle] if oracle else [])
    regmix(*args, cwd=ROOT)
    work = Path(yaml.safe_load(config.read_text())["work_dir"])
    rows = {row["name"]: row for row in json.loads((work / "report" / "verify.json").read_text())}
    return rows[name]["target_loss"]


def oracle_search(configs: dict[str, Path], directory: Path) -> dict:
    """The oracle's best loss for this corpus, searched from both arms' best and chosen mixtures."""
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.core.mixture import Mixture
    from regmix_ds.pipeline import oracle
    from regmix_ds.regress.tables import Target, read_results

    experiment = ExperimentConfig.load(configs["one round"])
    if experiment.work.oracle_result.exists():
        return json.loads(experiment.work.oracle_result.read_text())
    target = Target.parse(experiment.fit.target)
    start = [Mixture.load(directory / "target_composition.json")]
    for config in configs.values():
        arm = ExperimentConfig.load(config)
        table = read_results(arm.work.results)
        best = int(np.argmin(target.values(table)))
        start.append(Mixture.from_weights(dict(zip(table.domains, table.weights[best].tolist())), renormalize=True))
        start.append(Mixture.load(arm.work.best))
    result = oracle.search(experiment, start, rounds=3, per_round=16, seed=0, jobs=2)
    return {"target_loss": result.target_loss, "proxies": result.proxies, "weights": dict(result.mixture.weights)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="corpus seeds (default 0 1 2)")
    parser.add_argument("--proxies", type=int, default=32, help="proxies per arm, in all (default 32)")
    parser.add_argument("--work", type=Path, help="where the corpora and runs go (default: a temporary directory)")
    args = parser.parse_args()
    base = args.work or Path(tempfile.mkdtemp(prefix="regmix-rounds-"))
    per_seed = []
    for seed in args.seeds:
        directory = base / f"seed{seed}"
        corpus(directory, seed)
        configs = {arm: arm_config(directory, arm, args.proxies, seed) for arm in ARMS}
        for arm, config in configs.items():
            run_arm(config, arm, args.proxies)
        answer = oracle_search(configs, directory)
        oracle_file = directory / "one_round" / "work" / "oracle" / "oracle.json"
        losses = {arm: measured(config, "chosen", oracle_file) for arm, config in configs.items()}
        row = {"seed": seed, "oracle": answer["target_loss"], "oracle_proxies": answer["proxies"],
               **{f"{arm} loss": loss for arm, loss in losses.items()},
               **{f"{arm} regret": loss - answer["target_loss"] for arm, loss in losses.items()}}
        per_seed.append(row)
        print(json.dumps(row), flush=True)
    summary = {"benchmark": "rounds", "proxies_per_arm": args.proxies, "seeds": args.seeds, "per_seed": per_seed}
    for arm in ARMS:
        regrets = np.array([row[f"{arm} regret"] for row in per_seed])
        summary[f"{arm} mean loss"] = float(np.mean([row[f"{arm} loss"] for row in per_seed]))
        summary[f"{arm} mean regret"] = float(regrets.mean())
        summary[f"{arm} regret spread (sd over seeds)"] = float(regrets.std(ddof=1)) if len(regrets) > 1 else 0.0
    gains = np.array([row["one round loss"] - row["two rounds loss"] for row in per_seed])
    summary["two rounds better by (mean)"] = float(gains.mean())
    summary["gain sd over seeds"] = float(gains.std(ddof=1)) if len(gains) > 1 else 0.0
    if args.work is None:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
