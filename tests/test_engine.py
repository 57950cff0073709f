"""The DeepSpeed module: rank discovery, checkpoint bookkeeping, and a real engine on one CPU rank."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from regmix_ds.core.errors import RegmixError
from regmix_ds.train import engine

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PORT = 29611


def test_deepspeed_launcher_environment():
    environ = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29700"}
    found = engine.discover_launch(environ)
    assert (found.rank, found.world_size, found.local_rank, found.local_size) == (1, 2, 1, 2)
    assert found.launcher == "env" and found.master_port == 29700 and not found.is_main
    assert found.exported() == environ


def test_env_launch_without_local_size_takes_the_flag_and_never_exports_an_empty_one():
    found = engine.discover_launch({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "n0", "LOCAL_SIZE": ""}, 1)
    assert found.local_rank == 1 and found.local_size == 2
    assert found.exported()["LOCAL_SIZE"] == "2"


def test_multi_rank_env_launch_needs_a_master_address():
    with pytest.raises(RegmixError, match="MASTER_ADDR"):
        engine.discover_launch({"RANK": "0", "WORLD_SIZE": "2"})


def test_srun_task_environment():
    environ = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
               "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2)", "MASTER_ADDR": "node7",
               "MASTER_PORT": "31000"}
    found = engine.discover_launch(environ)
    assert (found.rank, found.world_size, found.local_rank, found.local_size) == (3, 4, 1, 2)
    assert (found.master_addr, found.master_port, found.launcher) == ("node7", 31000, "slurm")
    del environ["MASTER_ADDR"]
    with pytest.raises(RegmixError, match="MASTER_ADDR: not set for a multi-node srun step"):
        engine.discover_launch(environ)


def test_sbatch_script_without_srun_is_a_single_process():
    found = engine.discover_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "7"})
    assert (found.world_size, found.launcher, found.master_addr) == (1, "single", "127.0.0.1")


def test_single_process_gets_a_free_port_each_time():
    ports = {engine.discover_launch({}).master_port for _ in range(3)}
    assert all(1024 < port < 65536 for port in ports)
    assert engine.discover_launch({"MASTER_PORT": "29999"}).master_port == 29999


def test_slurm_tasks_per_node_list():
    assert [engine.tasks_on_node("2(x3),1", n) for n in range(4)] == [2, 2, 2, 1]
    with pytest.raises(RegmixError, match="SLURM_STEP_TASKS_PER_NODE"):
        engine.tasks_on_node("2(y3)", 0)
    with pytest.raises(RegmixError, match="SLURM_NODEID"):
        engine.tasks_on_node("2", 1)


def test_inconsistent_ranks_are_refused():
    with pytest.raises(RegmixError, match="inconsistent ranks"):
        engine.discover_launch({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "x"})


def test_only_complete_checkpoints_are_resumed(tmp_path):
    assert engine.newest_checkpoint(tmp_path / "none") is None
    for step, complete in [(2, True), (4, True), (6, False)]:
        directory = tmp_path / engine.checkpoint_tag(step)
        directory.mkdir()
        if complete:
            (directory / engine.COMPLETE_MARKER).write_text(json.dumps({"step": step}))
    (tmp_path / "latest").write_text("step00000006")
    (tmp_path / "stepX").mkdir()
    assert engine.newest_checkpoint(tmp_path) == tmp_path / "step00000004"
    assert [p.name for p in engine.complete_checkpoints(tmp_path)] == ["step00000002", "step00000004"]



@pytest.mark.parametrize("marker, problem", [
    ('{"step": 2, "files": {"model.pt": 3}}', None),
    ('{"step": 2}', None),  # a marker written before file lists existed
    ('{"step": 2, "files": {"model.pt": 4}}', "damaged checkpoint: model.pt has 3 bytes, 4 were saved"),
    ('{"step": 2, "files": {"model.pt": 3, "optim.pt": 9}}', "damaged checkpoint: optim.pt is missing"),
    ('{"step": 2, "files": {"../model.pt": 3}}', "invalid checkpoint file name '../model.pt'"),
    ('{"step": 2, "files": ["model.pt"]}', "not a checkpoint marker"),
    ('{"step": "2"}', "not a checkpoint marker"),
    ('{"step": 2', "not valid JSON"),
])
def test_checkpoint_files_are_verified_against_the_marker(tmp_path, marker, problem):
    directory = tmp_path / engine.checkpoint_tag(2)
    directory.mkdir()
    (directory / "model.pt").write_bytes(b"abc")
    (directory / engine.COMPLETE_MARKER).write_text(marker)
    if problem is None:
        assert engine.verify_checkpoint(directory) == 2
        return
    with pytest.raises(RegmixError, match=problem) as caught:
        engine.verify_checkpoint(directory)
    assert caught.value.where in (str(directory), str(directory / engine.COMPLETE_MARKER))


ENGINE_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from pathlib import Path
    from regmix_ds.core.config import MODEL_PRESETS
    from regmix_ds.core.dsconfig import load_ds_config
    from regmix_ds.train import engine
    from regmix_ds.train import model as models

    out = Path(sys.argv[1])
    engine.init_distributed(engine.discover_launch())
    config = models.llama_config(MODEL_PRESETS["tiny"], 64, 8)
    data = torch.randint(0, 64, (8, 2, 9), generator=torch.Generator().manual_seed(0))
    report = {}

    def step(ds_engine, batch):
        engine.set_learning_rate(ds_engine, 1e-2)
        inputs, targets = models.split_inputs(batch)
        loss = models.next_token_loss(ds_engine(input_ids=inputs, use_cache=False).logits, targets)
        ds_engine.backward(loss)
        measured = engine.gradient_norm_before_step(ds_engine)
        ds_engine.step()
        return loss.item(), engine.reported_gradient_norm(ds_engine, measured)

    for stage in range(4):
        settings = load_ds_config(f"ds_configs/zero{stage}.json")
        model = models.build_model(config, seed=0)
        ds_engine = engine.initialize(model, models.weight_decay_groups(model, 0.1), settings.for_world(1))
        first = [step(ds_engine, data[i]) for i in range(2)]
        root = out / f"zero{stage}"
        for saved in (1, 2):
            engine.save_checkpoint(ds_engine, root, saved, {"step": saved, "note": "x"}, True, keep=1)
        after = [step(ds_engine, data[i]) for i in range(2, 4)]
        client = engine.load_checkpoint(ds_engine, engine.newest_checkpoint(root))
        again = [step(ds_engine, data[i]) for i in range(2, 4)]
        state = engine.full_state_dict(ds_engine, True)
        report[stage] = {
            "first": first, "after": after, "again": again, "client": [client["step"], client["note"]],
            "kept": sorted(p.name for p in engine.complete_checkpoints(root)),
            "state": {name: list(t.shape) for name, t in state.items()},
            "lr": [g["lr"] for g in ds_engine.optimizer.param_groups],
        }
    (out / "report.json").write_text(json.dumps(report))
    engine.shutdown(3)
    """
)


def run_engine_script(script: str, out, port: int, exit_code: int) -> dict:
    """Run `script` (a real DeepSpeed engine) in a fresh interpreter; return the report.json it writes."""
    env = {**os.environ, "MASTER_PORT": str(port)}
    done = subprocess.run([sys.executable, "-c", script, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == exit_code, done.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def test_real_engine_every_zero_stage_saves_resumes_and_gathers(tmp_path):
    report = run_engine_script(ENGINE_SCRIPT, tmp_path, ENGINE_PORT, exit_code=3)
    reference = report["0"]
    for stage, found in report.items():
        assert found["after"] == found["again"], f"ZeRO {stage}: resumed steps differ"
        assert found["client"] == [2, "x"] and found["kept"] == ["step00000002"]
        assert found["state"]["lm_head.weight"] == [64, 16] and len(found["state"]) == 21
        assert all(norm is not None and norm > 0 for _, norm in found["first"]), f"ZeRO {stage}: no grad norm"
        assert found["lr"] == [1e-2, 1e-2]
        for (loss, norm), (ref_loss, ref_norm) in zip(found["first"] + found["after"],
                                                      reference["first"] + reference["after"]):
            assert loss == pytest.approx(ref_loss, abs=1e-5) and norm == pytest.approx(ref_norm, rel=1e-4)
    leftovers = list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{ENGINE_PORT}_*"))
    assert leftovers == [], "shutdown must remove this rank's shared-memory buffer"


DAMAGE_PORT = 29663
DAMAGE_SCRIPT = textwrap.dedent(
    """
    import json, os, shutil, sys, torch
    from pathlib import Path
    from regmix_ds.core.config import MODEL_PRESETS
    from regmix_ds.core.dsconfig import load_ds_config
    from regmix_ds.core.errors import RegmixError
    from regmix_ds.train import engine
    from regmix_ds.train import model as models

    out = Path(sys.argv[1])
    engine.init_distributed(engine.discover_launch())
    config = models.llama_config(MODEL_PRESETS["tiny"], 64, 8)

    class RunsAShellCommand:
        def __reduce__(self):
            return (os.system, (f"touch {out / 'pwned'}",))

    def outcome(ds_engine, directory):
        try:
            return {"loaded": engine.load_checkpoint(ds_engine, directory)["step"]}
        except RegmixError as err:
            return {"error": str(err)}

    def damaged(ds_engine, directory, name, damage, old_marker=False):
        marker = directory / engine.COMPLETE_MARKER
        saved_marker, saved_file = marker.read_text(), (directory / name).read_bytes()
        if old_marker:  # a marker without the file list: DeepSpeed itself meets the damage
            marker.write_text(json.dumps({"step": 1}))
        damage(directory / name)
        found = outcome(ds_engine, directory)
        marker.write_text(saved_marker)
        (directory / name).write_bytes(saved_file)
        return found

    def pickled_object(path):
        torch.save({"module": RunsAShellCommand()}, path)
        marker = path.parent / engine.COMPLETE_MARKER  # sizes agree: only the content is wrong
        record = json.loads(marker.read_text())
        record["files"][path.name] = path.stat().st_size
        marker.write_text(json.dumps(record))

    report = {}
    for stage in (0, 3):
        settings = load_ds_config(f"ds_configs/zero{stage}.json")
        model = models.build_model(config, seed=0)
        ds_engine = engine.initialize(model, models.weight_decay_groups(model, 0.1), settings.for_world(1))
        directory = engine.save_checkpoint(ds_engine, out / f"zero{stage}", 1, {"step": 1}, True, keep=1)
        found = {"intact": outcome(ds_engine, directory)}
        for name in sorted(p.name for p in directory.glob("*.pt")):
            found[f"missing {name}"] = damaged(ds_engine, directory, name, os.unlink)
            found[f"truncated {name}"] = damaged(ds_engine, directory, name,
                                                 lambda p: os.truncate(p, p.stat().st_size // 2))
            found[f"missing, old marker {name}"] = damaged(ds_engine, directory, name, os.unlink, old_marker=True)
            found[f"pickled object {name}"] = damaged(ds_engine, directory, name, pickled_object)
        found["intact again"] = outcome(ds_engine, directory)
        report[stage] = {"directory": str(directory), "outcomes": found}
    (out / "report.json").write_text(json.dumps(report))
    engine.shutdown(0)
    """
)


def test_damaged_checkpoint_is_a_one_line_error_and_pickled_code_never_runs(tmp_path):
    report = run_engine_script(DAMAGE_SCRIPT, tmp_path, DAMAGE_PORT, exit_code=0)
    expected = {"missing": "is missing", "truncated": "bytes,", "missing, old marker": "",
                "pickled object": "refused to load: not plain tensors and values"}
    for stage, found in report.items():
        outcomes, directory = found["outcomes"], found["directory"]
        assert outcomes.pop("intact") == outcomes.pop("intact again") == {"loaded": 1}
        shards = {case.rsplit(" ", 1)[1] for case in outcomes}
        assert len(outcomes) == 4 * len(shards) and len(shards) == (1 if stage == "0" else 2)
        for case, outcome in outcomes.items():
            kind, shard = case.rsplit(" ", 1)
            error = outcome.get("error", "")
            assert error.startswith(directory) and expected[kind] in error, f"ZeRO {stage}, {case}: {outcome}"
            assert "\n" not in error
            if kind == "pickled object":
                assert error.startswith(f"{directory}/{shard}: ") and "posix.system" in error
    assert not (tmp_path / "pwned").exists(), "a pickled object in a checkpoint ran its code"
