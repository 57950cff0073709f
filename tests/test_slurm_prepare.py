"""slurm/prepare.sh as a job array on the local Slurm cluster (launchers/slurm-local.sh): one task per
input file, a task killed mid-shard and resubmitted, and a finished array submitted again."""
import json
import os
import subprocess

import pytest
import yaml

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.data.parts import plan_tasks
from regmix_ds.data.prepare import prepare, resolve_sources
from tests import test_slurm_scripts as slurm
from tests.conftest import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(autouse=True)
def require_slurm():
    problem = slurm.slurm_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(autouse=True)
def cancel_leftover_jobs():
    """Whatever the test submitted is cancelled when it ends, passed or failed."""
    yield
    if slurm.SUBMITTED:
        subprocess.run(["scancel", *slurm.SUBMITTED], capture_output=True, timeout=30)
        slurm.SUBMITTED.clear()


def corpus(directory, tokenizer_dir):
    """Two domains in three files (one large enough for three blocks per shard): four tasks, chunked."""
    directory.mkdir()
    texts = {"big": [f"document {j} of the big one" for j in range(2500)],
             "web0": [f"page {j}" for j in range(30)], "web1": [f"site {j} page" for j in range(30)]}
    for name, lines in texts.items():
        (directory / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    config = {"work_dir": "work", "data": {
        "tokenizer": str(tokenizer_dir), "valid_documents": 10, "shard_by": "file", "chunk_bytes": 60_000,
        "domains": {"big": {"paths": ["big.jsonl"]}, "web": {"paths": ["web0.jsonl", "web1.jsonl"]}}}}
    (directory / "exp.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return directory / "exp.yaml"


def run_array(config, logs, array: str, *options) -> list[str]:
    """Submit slurm/prepare.sh as the array `array`, wait for it, return its tasks' logs."""
    job = slurm.sbatch(f"--array={array}", f"--chdir={logs}", *options, "slurm/prepare.sh", config, cwd=ROOT)
    slurm.wait_for_job(job, timeout=240)
    return [p.read_text() for p in sorted(logs.glob(f"regmix-prepare-{job}_*.log"))]


def files(data):
    return {str(p.relative_to(data)): p for p in data.rglob("*") if p.is_file()}


def test_prepare_array_redoes_a_killed_task_to_the_same_bytes_and_a_finished_one_does_nothing(tiny_manifest,
                                                                                                  tmp_path):
    tokenizer_dir = tiny_manifest.parent.parent / "tokenizer"
    config = corpus(tmp_path / "array", tokenizer_dir)
    reference = corpus(tmp_path / "reference", tokenizer_dir)
    prepare(ExperimentConfig.load(reference))
    logs = tmp_path / "logs"
    logs.mkdir()
    experiment = ExperimentConfig.load(config)
    tasks = len(plan_tasks(experiment, resolve_sources(experiment)))
    assert tasks == 4  # big.jsonl in two chunks, web0.jsonl, web1.jsonl
    data = config.parent / "work" / "data"

    # Task 1 (the first chunk of big.jsonl, ~1,900 documents) stops itself after its shard's first block.
    [killed] = run_array(config, logs, "1", "--export=ALL,REGMIX_FAULT=shard")
    assert "prepare task 1 of" in killed and "wrote" not in killed, killed
    assert [p for p in (data / "big").iterdir() if p.name.startswith(".train-00000.bin.")], killed
    assert not (data / "big" / "part-00000.json").exists() and not (data / "manifest.json").exists()

    finished = run_array(config, logs, f"1-{tasks}")
    assert sum("wrote train" in log for log in finished) == tasks, finished
    assert any("manifest.json: 2 domains" in log for log in finished), finished
    assert not [name for name in files(data) if name.endswith(".tmp") or "/." in name]
    shards = {name: p.read_bytes() for name, p in files(data).items() if p.suffix in (".bin", ".idx")}
    expected = {name: p.read_bytes() for name, p in files(reference.parent / "work" / "data").items()
                if p.suffix in (".bin", ".idx")}
    assert shards == expected and len(shards) == 2 * (2 * tasks + 2)  # train + valid per task, two _valid copies

    before = {name: os.stat(p).st_mtime_ns for name, p in files(data).items()}
    again = run_array(config, logs, f"1-{tasks}")
    assert sum("already done, nothing to do" in log for log in again) == tasks, again
    assert {name: os.stat(p).st_mtime_ns for name, p in files(data).items()} == before

    # Without --array the script runs the whole prepare as one job: here every task is done already.
    job = slurm.sbatch(f"--chdir={logs}", "--output=whole-%j.log", "slurm/prepare.sh", config, cwd=ROOT)
    slurm.wait_for_job(job, timeout=120)
    assert "manifest.json: 2 domains" in (logs / f"whole-{job}.log").read_text()
    assert {name: os.stat(p).st_mtime_ns for name, p in files(data).items()} == before
