"""`train.py` under real multi-process launchers, 2 CPU ranks, gloo, ZeRO-3: the deepspeed launcher,
mpirun (ranks from mpi4py) and, where the local Slurm cluster runs, srun."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from regmix_ds.train.engine import COMPLETE_MARKER
from regmix_ds.train.loop import EXIT_REQUEUE
from tests.helpers import free_port
from tests.test_trainer import (
    STEPS,
    assert_hf_model_reproduces,
    assert_same_run,
    finish,
    launch,
    run,
    step_losses,
    train_args,
    write_mixture,
)

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def deepspeed_command(args: list[str], port: int) -> list[str]:
    return [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port), "train.py", *args]


def mpirun_command(args: list[str]) -> list[str]:
    return [str(BIN / "mpirun"), "--allow-run-as-root", "--oversubscribe", "-np", "2",
            sys.executable, "train.py", *args]


@pytest.fixture(scope="module")
def deepspeed_reference(tiny_manifest, tmp_path_factory):
    base = tmp_path_factory.mktemp("launchers")
    mixture = write_mixture(tiny_manifest, base / "mix.json")
    out = base / "deepspeed"
    port = free_port()
    code, output = run(deepspeed_command(train_args(tiny_manifest, out, mixture, eval_interval=8), port), port)
    assert code == 0, output[-4000:]
    return {"base": base, "mixture": mixture, "out": out, "output": output}


def test_deepspeed_launcher_trains_two_zero3_ranks(deepspeed_reference, tiny_manifest):
    result = json.loads((deepspeed_reference["out"] / "result.json").read_text())
    assert (result["world_size"], result["global_batch"], result["zero_stage"]) == (2, 4, 3)
    assert result["tokens"] == STEPS * 4 * 32 and result["steps"] == STEPS
    assert sorted(step_losses(deepspeed_reference["out"])) == list(range(1, STEPS + 1))
    assert all(0 < loss < 10 for loss in result["valid_loss"].values())
    assert "2 rank(s) via env" in deepspeed_reference["output"]
    assert_hf_model_reproduces(deepspeed_reference["out"], tiny_manifest)  # ZeRO-3 shards gathered


def test_deepspeed_launcher_resumes_after_a_signal_to_one_rank(deepspeed_reference, tiny_manifest):
    out = deepspeed_reference["base"] / "deepspeed_interrupted"
    port = free_port()
    command = deepspeed_command(train_args(tiny_manifest, out, deepspeed_reference["mixture"], eval_interval=8), port)
    # Only rank 1 is signalled, after step 2: the ranks agree by all-reduce and both save before exiting.
    process = launch(command, port, fault={"REGMIX_FAULT": "step@2:USR1", "REGMIX_FAULT_RANK": "1"})
    code, output = finish(process)
    assert code == EXIT_REQUEUE, output[-4000:]
    assert max(step_losses(out)) == 3 and not (out / "result.json").exists()
    code, output = run(command + ["--resume", "auto"], port)
    assert code == 0, output[-4000:]
    assert_same_run(out, deepspeed_reference["out"])


def test_mpirun_discovers_ranks_through_mpi_and_matches_the_deepspeed_launcher(deepspeed_reference, tiny_manifest):
    out = deepspeed_reference["base"] / "mpirun"
    args = train_args(tiny_manifest, out, deepspeed_reference["mixture"], eval_interval=8)
    code, output = run(mpirun_command(args), free_port())
    assert code == 0, output[-4000:]
    assert "2 rank(s) via mpi" in output
    result = json.loads((out / "result.json").read_text())
    assert (result["world_size"], result["global_batch"]) == (2, 4)
    # Same world size, data order and seed as the deepspeed-launched run: the same training.
    assert_same_run(out, deepspeed_reference["out"])


@pytest.mark.slurm
def test_srun_tasks_find_their_ranks_and_train_like_the_deepspeed_launcher(deepspeed_reference, tiny_manifest):
    from tests.test_slurm_scripts import slurm_problem

    problem = slurm_problem()
    if problem:
        pytest.skip(problem)
    out = deepspeed_reference["base"] / "srun"
    args = train_args(tiny_manifest, out, deepspeed_reference["mixture"], eval_interval=8)
    code, output = run(["srun", "--ntasks", "2", sys.executable, "train.py", *args], free_port())
    assert code == 0, output[-4000:]
    assert "2 rank(s) via slurm" in output
    assert_same_run(out, deepspeed_reference["out"])


class RunsAShellCommand:
    """Unpickling this would run a command: what the `weights_only` allow-list must refuse."""

    def __reduce__(self):
        return (os.system, ("true",))


def replace_with_pickled_code(shard: Path) -> None:
    torch.save({"state": RunsAShellCommand()}, shard)
    marker = shard.parent / COMPLETE_MARKER  # sizes agree again: only DeepSpeed's load meets the damage
    record = json.loads(marker.read_text())
    record["files"][shard.name] = shard.stat().st_size
    marker.write_text(json.dumps(record))


@pytest.mark.slurm
def test_a_shard_refused_on_one_rank_stops_every_rank_at_once(deepspeed_reference, tiny_manifest):
    """srun, unlike the deepspeed launcher and mpirun, leaves the other tasks running when one exits:
    rank 0 must not sit in its next collective while rank 1 has refused its part of the checkpoint."""
    from tests.test_slurm_scripts import slurm_problem

    problem = slurm_problem()
    if problem:
        pytest.skip(problem)
    out = deepspeed_reference["base"] / "refused"
    command = ["srun", "--ntasks", "2", sys.executable, "train.py",
               *train_args(tiny_manifest, out, deepspeed_reference["mixture"], eval_interval=8)]
    code, output = finish(launch(command, free_port(), fault={"REGMIX_FAULT": "step@2:USR1"}))
    assert code == EXIT_REQUEUE, output[-4000:]
    checkpoint = max((out / "checkpoints").glob("step*"))
    shard = next(checkpoint.glob("zero_pp_rank_1_*optim_states.pt"))
    replace_with_pickled_code(shard)  # only rank 1 reads its own optimizer shard
    code, output = finish(launch(command + ["--resume", "auto"], free_port()), timeout=240)
    errors = [line for line in output.splitlines() if line.startswith("train.py: error: ")]
    assert code == 2 and len(errors) == 2, output[-4000:]
    refused, waiting = sorted(errors, key=lambda line: "other rank" in line)
    assert refused.startswith(f"train.py: error: {shard}: refused to load: not plain tensors and values"), errors
    assert waiting == f"train.py: error: {checkpoint}: refused by 1 other rank(s); their own errors name the file"
