"""Proxies trained as one group: the same numbers as separate runs, resumable, wired into run-swarm."""
import json
import os
import pickle
import shutil
import signal
import subprocess

import numpy as np
import pytest

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.pipeline.proxies import sbatch_line, task_indices, train_config
from regmix_ds.train.group import CHECKPOINT, plan_group
from tests.conftest import ROOT, corpus_of, make_experiment
from tests.helpers import proxy_dir, run_cli

TIMING = {"wall_seconds", "tokens_per_s", "mfu", "matmul_peak_flops_per_s"}
HOW_TRAINED = {"group_size", "zero_stage"}


def result(experiment, index):
    return json.loads((proxy_dir(experiment, index) / "result.json").read_text())


def train_losses(experiment, index):
    lines = (proxy_dir(experiment, index) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def assert_same_run(ours, reference, tolerance):
    """Same settings, steps and tokens, validation losses within `tolerance` (timing and grouping aside)."""
    ignored = TIMING | HOW_TRAINED | {"valid_loss"}
    assert ({k: v for k, v in ours.items() if k not in ignored}
            == {k: v for k, v in reference.items() if k not in ignored})
    for name, loss in reference["valid_loss"].items():
        assert ours["valid_loss"][name] == pytest.approx(loss, abs=tolerance), name


def accumulating_ds_config(tmp_path):
    """zero0.json with 2 micro-batches per step, so accumulation is part of the comparison."""
    settings = json.loads((ROOT / "ds_configs" / "zero0.json").read_text())
    settings["gradient_accumulation_steps"] = 2
    path = tmp_path / "accumulate.json"
    path.write_text(json.dumps(settings))
    return str(path)


@pytest.mark.slow
def test_a_group_of_four_matches_four_separate_runs_after_50_steps(tiny_experiment, tmp_path):
    # 100 x (micro 2 x seq 32) tokens at 2 micro-batches per step: 50 optimizer steps.
    config = tiny_experiment(n=4, steps=100, warmup=5, lr=0.003, deepspeed_config=accumulating_ds_config(tmp_path))
    experiment = ExperimentConfig.load(config)
    grouped = run_cli("proxy", "--config", config, "--indices", "1-4")
    assert grouped.returncode == 0, grouped.stdout + grouped.stderr
    group_results = {i: result(experiment, i) for i in range(1, 5)}
    group_losses = {i: train_losses(experiment, i) for i in range(1, 5)}
    shutil.move(experiment.work.proxies, tmp_path / "grouped")

    separate = run_cli("run-swarm", "--config", config, "--jobs", 2)  # group_size 1: each alone under DeepSpeed
    assert separate.returncode == 0, separate.stdout + separate.stderr
    assert len({r["valid_loss"]["target"] for r in group_results.values()}) == 4  # four mixtures, four answers
    for i in range(1, 5):
        reference = result(experiment, i)
        assert reference["steps"] == group_results[i]["steps"] == 50 and reference["zero_stage"] == 0
        assert group_results[i]["group_size"] == 4 and group_results[i]["zero_stage"] is None
        assert_same_run(group_results[i], reference, tolerance=1e-4)
        assert group_losses[i] == pytest.approx(train_losses(experiment, i), abs=1e-4)


@pytest.fixture(scope="module")
def group_reference(tiny_manifest, tmp_path_factory):
    """Swarm members 1-3 (40 steps) trained as one uninterrupted group, once for the module: their result.json."""
    config = make_experiment(corpus_of(tiny_manifest), tmp_path_factory.mktemp("group") / "experiment", n=3, steps=40)
    trained = run_cli("proxy", "--config", config, "--indices", "1-3")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    return {i: result(ExperimentConfig.load(config), i) for i in range(1, 4)}


def run_group_until(config, fault: str) -> subprocess.CompletedProcess:
    """`regmix-ds proxy --indices 1-3` stopping itself at a fault point (`REGMIX_FAULT`)."""
    return run_cli("proxy", "--config", config, "--indices", "1-3", env={**os.environ, "REGMIX_FAULT": fault})


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_a_group_killed_at_a_random_step_resumes_to_the_uninterrupted_result(tiny_experiment, group_reference, seed):
    config = tiny_experiment(n=3, steps=40, save_interval=3)
    experiment = ExperimentConfig.load(config)
    kill_at = int(np.random.default_rng(seed).integers(4, 36))
    killed = run_group_until(config, f"step@{kill_at}")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert len(train_losses(experiment, 3)) == kill_at
    assert not any((proxy_dir(experiment, i) / "result.json").exists() for i in range(1, 4))
    rerun = run_cli("proxy", "--config", config, "--indices", "1-3")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("resumed from") == 3
    for i in range(1, 4):
        assert_same_run(result(experiment, i), group_reference[i], tolerance=1e-6)
        steps = [json.loads(line)["step"]
                 for line in (proxy_dir(experiment, i) / "metrics.jsonl").read_text().splitlines()
                 if '"loss"' in line]
        assert steps == list(range(1, 41))  # lines of the killed segment past its checkpoint are gone


@pytest.mark.slow
def test_a_signalled_group_checkpoints_every_member_at_one_step_and_resumes(tiny_experiment, group_reference):
    config = tiny_experiment(n=3, steps=40)
    experiment = ExperimentConfig.load(config)
    stopped = run_group_until(config, "step@10:TERM")  # Slurm's warning before a time limit, after step 10
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    saved = {i: [p.name for p in (proxy_dir(experiment, i) / "checkpoints").iterdir() if CHECKPOINT.match(p.name)]
             for i in range(1, 4)}
    # A signal is seen at the next step's end, as in a single run: every member stops after step 11.
    assert saved == {i: ["group-step00000011.pt"] for i in range(1, 4)}
    rerun = run_cli("proxy", "--config", config, "--indices", "1-3")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("resumed from") == 3
    for i in range(1, 4):
        assert_same_run(result(experiment, i), group_reference[i], tolerance=1e-6)


@pytest.mark.slow
def test_members_checkpointed_at_different_steps_train_as_subgroups(tiny_experiment, group_reference):
    config = tiny_experiment(n=3, steps=40, save_interval=5)
    experiment = ExperimentConfig.load(config)
    # Killed inside the first save, after members 1 and 2 wrote their checkpoints and before member 3 did.
    killed = run_group_until(config, "member checkpoint@2")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    saved = {i: sorted(p.name for p in (proxy_dir(experiment, i) / "checkpoints").glob("*") if CHECKPOINT.match(p.name))
             for i in range(1, 4)}
    assert saved == {1: ["group-step00000005.pt"], 2: ["group-step00000005.pt"], 3: []}
    rerun = run_cli("proxy", "--config", config, "--indices", "1-3")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.count("resumed from") == 2 and "group of 1" in rerun.stderr and "group of 2" in rerun.stderr
    for i in range(1, 4):
        assert_same_run(result(experiment, i), group_reference[i], tolerance=1e-6)


def test_run_swarm_trains_groups_that_collect_reads(tiny_experiment):
    config = tiny_experiment(n=3, group_size=2, save_model=True)
    experiment = ExperimentConfig.load(config)
    assert task_indices(experiment, 1) == [1, 2] and task_indices(experiment, 3) == [3]
    with pytest.raises(RegmixError, match="--task: 2 is not the first index of a group of 2"):
        task_indices(experiment, 2)
    assert sbatch_line(experiment, [1, 2, 3], throttle=4) == f"sbatch --array=1-3:2%4 slurm/proxies.sh {config}"
    assert sbatch_line(experiment, [3], throttle=4) == f"sbatch --array=3%4 slurm/proxies.sh {config}"

    done = run_cli("run-swarm", "--config", config, "--jobs", 2)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in experiment.work.proxies.glob("group-*.log")) == ["group-1.log", "group-3.log"]
    assert [result(experiment, i)["group_size"] for i in (1, 2, 3)] == [2, 2, 1]
    assert all(0 < result(experiment, i)["mfu"] < 1 for i in (1, 2, 3))
    collected = run_cli("collect", "--config", config)
    assert collected.returncode == 0 and "done 3 running 0 failed 0 missing 0" in collected.stdout

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(proxy_dir(experiment, 2) / "hf")
    assert sum(p.numel() for p in hf.parameters()) == result(experiment, 2)["params"]["total"]


def test_members_must_share_every_setting_but_the_mixture(tiny_experiment):
    import dataclasses

    experiment = ExperimentConfig.load(tiny_experiment(n=2))
    first, second = train_config(experiment, 1), train_config(experiment, 2)
    with pytest.raises(RegmixError, match="cannot train in one group with .*: lr differ"):
        plan_group([first, dataclasses.replace(second, lr=0.5)])
    with pytest.raises(RegmixError, match="share a run directory"):
        plan_group([first, dataclasses.replace(second, out=first.out)])


def test_a_group_refuses_fp16_and_plain_adam(tiny_experiment, tmp_path):
    import dataclasses

    experiment = ExperimentConfig.load(tiny_experiment(n=1))
    settings = json.loads((ROOT / "ds_configs" / "zero0.json").read_text())
    fp16, adam = tmp_path / "fp16.json", tmp_path / "adam.json"
    fp16.write_text(json.dumps({**settings, "fp16": {"enabled": True}}))
    optimizer = {"type": "Adam", "params": {**settings["optimizer"]["params"], "adam_w_mode": False}}
    adam.write_text(json.dumps({**settings, "optimizer": optimizer}))
    config = train_config(experiment, 1)
    with pytest.raises(RegmixError, match=f"^{fp16}: a proxy group trains in fp32 or bf16"):
        plan_group([dataclasses.replace(config, deepspeed_config=str(fp16))])
    with pytest.raises(RegmixError, match=f"^{adam}: a proxy group trains with AdamW"):
        plan_group([dataclasses.replace(config, deepspeed_config=str(adam))])


class RunsShell:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("content", [b"not a checkpoint", pickle.dumps({"params": RunsShell()})],
                         ids=["garbage", "pickled_code"])
def test_a_bad_group_checkpoint_is_refused_with_one_line(tiny_experiment, content):
    config = tiny_experiment(n=2)
    experiment = ExperimentConfig.load(config)
    bad = proxy_dir(experiment, 2) / "checkpoints" / "group-step00000004.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(content)
    refused = run_cli("proxy", "--config", config, "--indices", "1-2", cwd=experiment.work.root)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(f"regmix-ds proxy: error: {bad}: ")
    assert not (experiment.work.root / "pwned").exists()
    assert not any((proxy_dir(experiment, i) / "result.json").exists() for i in (1, 2))
