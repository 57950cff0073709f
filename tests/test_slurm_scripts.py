"""slurm/proxies.sh and slurm/target.sh on the real localhost Slurm cluster that
launchers/test.sh starts (launchers/slurm-local.sh). Skipped, with the reason, without one."""
import json
import os
import shutil
import subprocess
import time

import pytest
import yaml

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.pipeline.collect import collect
from tests.conftest import ROOT
from tests.helpers import proxy_dir, run_cli, wait_for_steps

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def slurm_problem() -> str | None:
    if not shutil.which("sbatch"):
        return "sbatch not installed (launchers/setup.sh installs Slurm as root on Debian)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "UP" not in ping.stdout:
        return f"no Slurm controller reachable (SLURM_CONF={os.environ.get('SLURM_CONF')}): {ping.stdout.strip()}"
    return None


@pytest.fixture(autouse=True)
def require_slurm():
    problem = slurm_problem()
    if problem:
        print(f"skipping Slurm tests: {problem}")
        pytest.skip(problem)


@pytest.fixture(autouse=True)
def cancel_leftover_jobs():
    """Whatever a test submitted is cancelled when it ends, passed or failed: no orphans for the next test."""
    yield
    if SUBMITTED:
        subprocess.run(["scancel", *SUBMITTED], capture_output=True, timeout=30)
        SUBMITTED.clear()


SUBMITTED: list[str] = []


def sbatch(*args, cwd) -> str:
    done = subprocess.run(["sbatch", "--parsable", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    SUBMITTED.append(job)
    return job


def job_gone(job_id: str, logs) -> str | None:
    """None while the job is queued or running; else what its log says."""
    queued = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=30)
    if queued.returncode != 0 or queued.stdout.strip():
        return None
    log = "\n".join(p.read_text()[-2000:] for p in logs.glob(f"*{job_id}*.log"))
    return f"Slurm job {job_id} left the queue; its log ends: {log}"


def wait_for_job(job_id: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i %T"], capture_output=True, text=True,
                                timeout=30)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(1)
    raise AssertionError(f"Slurm job {job_id} still queued after {timeout} s")


def results(experiment, indices):
    return {i: json.loads((proxy_dir(experiment, i) / "result.json").read_text()) for i in indices}


def train_array(experiment, logs, array: str) -> None:
    """Submit slurm/proxies.sh as the job array `array`, wait for it, and check every proxy is done."""
    logs.mkdir(exist_ok=True)
    wait_for_job(sbatch(f"--array={array}", f"--chdir={logs}", "slurm/proxies.sh", experiment.path, cwd=ROOT))
    statuses = [row.status for row in collect(experiment).rows]
    assert set(statuses) == {"done"}, (statuses, sorted(p.name for p in logs.iterdir()))


def test_proxy_array_trains_each_task_once(tiny_experiment, tmp_path):
    experiment = ExperimentConfig.load(tiny_experiment(n=4))
    train_array(experiment, tmp_path / "logs", "1-4%2")
    first = {i: (proxy_dir(experiment, i) / "result.json").stat().st_mtime_ns for i in range(1, 5)}

    train_array(experiment, tmp_path / "logs", "1-4")
    assert {i: (proxy_dir(experiment, i) / "result.json").stat().st_mtime_ns for i in range(1, 5)} == first
    second_logs = [p.read_text() for p in (tmp_path / "logs").glob("regmix-proxy-*_*.log")]
    assert sum("nothing to do" in text for text in second_logs) == 4


def test_grouped_array_tasks_train_every_member(tiny_experiment, tmp_path):
    experiment = ExperimentConfig.load(tiny_experiment(n=4, group_size=2))
    train_array(experiment, tmp_path / "logs", "1-3:2")
    assert [r["group_size"] for r in results(experiment, range(1, 5)).values()] == [2, 2, 2, 2]
    assert len(list((tmp_path / "logs").glob("regmix-proxy-*_*.log"))) == 2


def test_requeued_task_resumes_to_the_uninterrupted_result(tiny_experiment, tmp_path):
    config = tiny_experiment(n=1, steps=200)
    experiment = ExperimentConfig.load(config)
    out = proxy_dir(experiment, 1)
    job = sbatch("--array=1", f"--chdir={tmp_path}", "slurm/proxies.sh", config, cwd=ROOT)
    wait_for_steps(out / "metrics.jsonl", 5, gone=lambda: job_gone(job, tmp_path))
    requeue = subprocess.run(["scontrol", "requeue", f"{job}_1"], capture_output=True, text=True, timeout=30)
    assert requeue.returncode == 0, requeue.stderr
    wait_for_job(job)
    log = next(tmp_path.glob("regmix-proxy-*_1.log")).read_text()
    assert "restart 1" in log and "resumed from" in log, log
    requeued = results(experiment, [1])[1]

    shutil.rmtree(out)
    uninterrupted = run_cli("proxy", "--config", config, "--index", 1)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    reference = results(experiment, [1])[1]
    assert requeued["steps"] == reference["steps"] == 200
    for name, loss in reference["valid_loss"].items():
        assert requeued["valid_loss"][name] == pytest.approx(loss, abs=1e-6)


def test_target_script_runs_two_ranks_through_srun(tiny_manifest, tmp_path):
    mixture = tmp_path / "best.json"
    manifest = json.loads(tiny_manifest.read_text())
    domains = list(manifest["domains"])
    mixture.write_text(json.dumps({"weights": {d: 1 / len(domains) for d in domains}}))
    out = tmp_path / "target"
    job = sbatch(
        "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", f"--chdir={tmp_path}",
        "--export=ALL,MASTER_PORT=29632",
        "slurm/target.sh", "--manifest", tiny_manifest, "--mixture", mixture,
        "--deepspeed_config", ROOT / "ds_configs" / "zero3.json", "--preset", "tiny", "--seq-len", 32,
        "--steps", 3, "--out", out, cwd=ROOT,
    )
    wait_for_job(job)
    log = next(tmp_path.glob("regmix-target-*.log")).read_text()
    assert (out / "result.json").exists(), log
    result = json.loads((out / "result.json").read_text())
    assert result["world_size"] == 2 and result["zero_stage"] == 3 and result["steps"] == 3
    assert "2 rank(s) via slurm" in log


def test_collect_lists_tasks_waiting_in_the_queue_as_pending(tiny_experiment, tmp_path):
    experiment = ExperimentConfig.load(tiny_experiment(n=4, group_size=2))
    job = sbatch("--hold", "--array=1-3:2", f"--chdir={tmp_path}", "slurm/proxies.sh", experiment.path, cwd=ROOT)
    collected = run_cli("collect", "--config", experiment.path)
    assert collected.returncode == 0, collected.stderr
    assert "done 0 running 0 failed 0 missing 0 pending 4" in collected.stdout, collected.stdout
    assert "sbatch --array" not in collected.stdout  # nothing to resubmit: it is all queued
    subprocess.run(["scancel", job], capture_output=True, timeout=30)
    wait_for_job(job)
    gone = run_cli("collect", "--config", experiment.path)
    assert "missing 4" in gone.stdout and f"sbatch --array=1-3:2%64 slurm/proxies.sh {experiment.path}" in gone.stdout
    print(collected.stdout)


def test_a_second_round_and_the_transfer_tier_train_through_the_array_script(tiny_experiment, tmp_path):
    config = tiny_experiment(n=4, group_size=2)
    raw = yaml.safe_load(config.read_text())
    raw.update(fit={"target": "target", "folds": 2, "min_data_in_leaf": 1},
               simulate={"candidates": 5000, "bootstrap": 0, "top_k": 4}, transfer={"preset": "demo", "count": 3})
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    experiment = ExperimentConfig.load(config)
    logs = tmp_path / "logs"
    train_array(experiment, logs, "1-3:2")
    for stage in ("fit", "simulate"):
        assert run_cli(stage, "--config", config).returncode == 0
    assert run_cli("swarm", "--config", config, "--next-round", "--n", 2).returncode == 0
    train_array(experiment, logs, "5")  # the new round: n5-n6, one group
    assert [row.round for row in collect(experiment).rows] == [1, 1, 1, 1, 2, 2]

    first = run_cli("transfer", "--config", config)
    assert first.returncode == 0 and "slurm/proxies.sh" in first.stdout and first.stdout.rstrip().endswith(
        "--jobs 2"), first.stdout
    wait_for_job(sbatch("--array=1-5:2", f"--chdir={logs}", "slurm/proxies.sh", experiment.path, "transfer", cwd=ROOT))
    tier = experiment.work.tier("transfer")
    assert [row.status for row in collect(experiment, tier="transfer").rows] == ["done"] * 5
    stamps = {i: tier.proxy(i).result.stat().st_mtime_ns for i in range(1, 6)}
    wait_for_job(sbatch("--array=1-5:2", f"--chdir={logs}", "slurm/proxies.sh", experiment.path, "transfer", cwd=ROOT))
    assert {i: tier.proxy(i).result.stat().st_mtime_ns for i in range(1, 6)} == stamps  # nothing trained twice
    done = run_cli("transfer", "--config", config)
    assert done.returncode == 0 and "the chosen mixture ranks" in done.stdout, done.stdout + done.stderr
