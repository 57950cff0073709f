"""The README's "On a cluster" block, run as written on the local Slurm cluster, from an experiment
directory outside the repository, scaled down through the variables at the top of the block.

The experiment is what a new user starts from: `regmix-ds synth` writes a self-contained
directory (corpus, exp.yaml, a copy of the proxies' DeepSpeed config), edited here to tiny sizes.
"""
import json
import os
import subprocess

import pytest
import yaml

from regmix_ds.commands.main import main
from tests.conftest import ROOT
from tests.test_slurm_scripts import slurm_problem

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def require_slurm():
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)


def cancel_jobs_started_in(directory) -> None:
    """Cancel whatever the block left queued (a failed or timed-out run): jobs whose directory is ours."""
    listing = subprocess.run(["squeue", "-h", "--me", "-o", "%A|%Z"], capture_output=True, text=True, timeout=30)
    jobs = {line.split("|")[0] for line in listing.stdout.splitlines() if line.endswith(f"|{directory}")}
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)

SCALED_DOWN = {
    "CONFIG": "exp.yaml",
    "PREPARE_FLAGS": "--train-tokenizer",
    "PROXY_ARRAY": "1-8:4%2",
    "PROXY_RESOURCES": "--cpus-per-task=1 --time=20",
    "TARGET_RESOURCES": "--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --time=20",
    "TARGET_DS_CONFIG": str(ROOT / "ds_configs" / "zero3.json"),
    "TARGET_FLAGS": "--preset tiny --seq-len 32 --steps 4 --warmup 1",
}
"""The block's variables for 8 tiny proxies in 2 array tasks of 4, and a 4-step 2-rank ZeRO-3 target."""


def readme_block() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- cluster:begin -->\n", 1)[1].split("<!-- cluster:end -->", 1)[0]
    return block.removeprefix("```bash\n").rstrip().removesuffix("```")


def small_experiment(directory) -> None:
    """A synthetic corpus and its exp.yaml, set to tiny proxies trained in groups of 4."""
    assert main(["synth", "--out", str(directory), "--docs-per-domain", "160", "--target-docs", "30",
                 "--valid-documents", "20", "--vocab-size", "300",
                 "--deepspeed-config", str(ROOT / "ds_configs" / "zero0.json")]) == 0
    config = yaml.safe_load((directory / "exp.yaml").read_text())
    config["swarm"] = {"n": 8, "seed": 0}
    config["proxy"] = {**config["proxy"], "preset": "tiny", "seq_len": 32, "train_tokens": 2048, "group_size": 4,
                       "eval_batches": 2}
    config["fit"] = {"target": "target", "folds": 4, "min_data_in_leaf": 2}
    config["simulate"] = {"candidates": 20000, "bootstrap": 0, "top_k": 16}
    (directory / "exp.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


BLOCK_SECONDS = 900


@pytest.mark.timeout(BLOCK_SECONDS + 60)  # the block's own bound fires first, with what it printed
def test_the_readme_cluster_block_runs_as_written_from_outside_the_repository(tmp_path):
    lab = tmp_path / "lab"
    small_experiment(lab)
    env = {**os.environ, "REGMIX_HOME": str(ROOT), **SCALED_DOWN}
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=lab, env=env,
                              capture_output=True, text=True, timeout=BLOCK_SECONDS)
    finally:
        cancel_jobs_started_in(lab)
    logs = {p.name: p.read_text() for p in lab.glob("regmix-*.log")}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + str(logs)[-3000:]
    target = json.loads((lab / "work" / "target" / "result.json").read_text())
    assert (target["world_size"], target["zero_stage"], target["steps"]) == (2, 3, 4)
    best = json.loads((lab / "work" / "best.json").read_text())
    assert target["mixture_hash"] == best["hash"]
    assert "done 8 running 0 failed 0 missing 0 pending 0" in done.stdout
    proxy_logs = sorted(name for name in logs if name.startswith("regmix-proxy-"))
    assert len(proxy_logs) == 2 and len([n for n in logs if n.startswith("regmix-target-")]) == 1
    for text in logs.values():
        assert "\r" not in text, "a progress bar redrew itself in a log file"
    print("\n".join(f"== {name}\n{text}" for name, text in sorted(logs.items())))
