"""The training loop: config checks, schedules, and real one-process runs of `python train.py`.

Multi-process launches (deepspeed launcher, mpirun) are in test_train_launchers.py.
"""
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from regmix_ds.commands import train as train_command
from regmix_ds.core.config import ExperimentConfig, TrainConfig
from regmix_ds.core.dsconfig import load_ds_config, with_mixture
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.layout import RunDir
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.train import engine, single
from regmix_ds.train.loop import EXIT_REQUEUE, MetricsFile
from regmix_ds.train.plan import learning_rate, plan_run
from tests.conftest import corpus_of, make_experiment
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
ZERO3 = ROOT / "ds_configs" / "zero3.json"
STEPS = 16


# ---- helpers shared with test_train_launchers.py ---------------------------------------------


def write_mixture(manifest: Path, path: Path, skew: float = 0.0) -> Path:
    """The manifest's token prior, optionally tilted towards the first domain."""
    prior = Manifest.load(manifest).token_prior()
    first = next(iter(prior))
    weights = {name: w + (skew if name == first else 0.0) for name, w in prior.items()}
    Mixture.from_weights(weights, renormalize=True).save(path)
    return path


def train_args(manifest: Path, out: Path, mixture: Path | None, **flags) -> list[str]:
    """Flags of a tiny ZeRO-3 run; `flags` override or add (`eval_interval=4` -> --eval-interval 4)."""
    settings = {"deepspeed_config": ZERO3, "preset": "tiny", "seq_len": 32, "steps": STEPS, "warmup": 2,
                "eval_batches": 2, "log_interval": 4, **flags}
    args = ["--manifest", str(manifest), "--out", str(out)] + (["--mixture", str(mixture)] if mixture else [])
    for name, value in settings.items():
        flag = "--deepspeed_config" if name == "deepspeed_config" else "--" + name.replace("_", "-")
        args += [flag, str(value)]
    return args


def launch(command: list[str], port: int, fault: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """Start a run; `fault` (e.g. `{"REGMIX_FAULT": "step@2:USR1"}`) makes it stop itself at a fault point."""
    env = {**os.environ, "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", **(fault or {})}
    # Its own process group, so that a run that overstays is killed with every rank a launcher started.
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """Wait for a launched run (bounded: a run still going after `timeout` is killed and fails the test)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
        raise AssertionError(f"still running after {timeout} s; its output ends: {output[-3000:]}") from None
    return process.returncode, output


def run(command: list[str], port: int) -> tuple[int, str]:
    return finish(launch(command, port))


def step_losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def assert_same_run(resumed: Path, reference: Path, tolerance: float = 1e-6) -> None:
    """Per-step losses and final validation losses agree (CPU fp32 is deterministic)."""
    got, expected = step_losses(resumed), step_losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == pytest.approx(expected, abs=tolerance)
    got_valid = json.loads((resumed / "result.json").read_text())["valid_loss"]
    assert got_valid == pytest.approx(json.loads((reference / "result.json").read_text())["valid_loss"], abs=tolerance)


def assert_hf_model_reproduces(out: Path, manifest: Path) -> None:
    """OUT/hf loads with transformers and gives result.json's validation losses on the same samples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from regmix_ds.data.blend import fixed_samples
    from regmix_ds.data.indexed import IndexedDataset
    from regmix_ds.train import model as models

    loaded = AutoModelForCausalLM.from_pretrained(out / "hf")
    assert AutoTokenizer.from_pretrained(out / "hf").vocab_size <= loaded.config.vocab_size
    result = json.loads((out / "result.json").read_text())
    for name, split in Manifest.load(manifest).valid.items():
        samples = fixed_samples(IndexedDataset(split.prefix).tokens, 32, 4, name)  # eval_batches 2 x micro 2
        inputs, targets = models.split_inputs(samples)
        with torch.no_grad():
            loss = models.next_token_loss(loaded(input_ids=inputs).logits, targets).item()
        assert loss == pytest.approx(result["valid_loss"][name], abs=1e-5), name


# ---- configuration ---------------------------------------------------------------------------


def config(**changes) -> TrainConfig:
    base = {"manifest": "m.json", "deepspeed_config": "ds.json", "out": "out", "mixture": "x.json",
            "preset": "tiny", "steps": 10}
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"preset": None}, "--preset"),
        ({"model_config": "shape.json"}, "--preset"),
        ({"steps": None}, "--train-tokens"),
        ({"train_tokens": 100}, "--train-tokens"),
        ({"steps": 0}, "--steps"),
        ({"seq_len": 0}, "--seq-len"),
        ({"warmup": -1}, "--warmup"),
        ({"schedule": "linear"}, "--schedule"),
        ({"lr": 0.0}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"lr_floor": 1.5}, "--lr-floor"),
        ({"resume": "latest"}, "--resume"),
        ({"eval_batches": 0}, "--eval-batches"),
        ({"save_interval": -2}, "--save-interval"),
        ({"max_epochs": 0.0}, "--max-epochs"),
    ],
)
def test_config_rejects_bad_flags(changes, flag):
    with pytest.raises(RegmixError) as caught:
        config(**changes)
    assert caught.value.where == flag


def test_schedules_warm_up_then_hold_or_decay_to_the_floor(tiny_manifest, tmp_path):
    mixture = write_mixture(tiny_manifest, tmp_path / "mix.json")
    common = {"manifest": str(tiny_manifest), "deepspeed_config": str(ZERO3), "mixture": str(mixture), "warmup": 4,
              "steps": 20, "lr": 1e-3, "out": str(tmp_path / "o")}
    constant = plan_run(config(**common), 1)
    cosine = plan_run(config(**common, schedule="cosine", lr_floor=0.1), 1)
    warm = [learning_rate(s, constant) for s in range(4)]
    assert warm == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert [learning_rate(s, cosine) for s in range(4)] == warm
    assert all(learning_rate(s, constant) == 1e-3 for s in range(4, 20))
    decay = [learning_rate(s, cosine) for s in range(4, 21)]
    assert decay[0] == pytest.approx(1e-3) and decay[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in itertools.pairwise(decay))


def test_plan_turns_tokens_into_whole_global_batches(tiny_manifest, tmp_path):
    mixture = write_mixture(tiny_manifest, tmp_path / "mix.json")
    plan = plan_run(
        config(manifest=str(tiny_manifest), deepspeed_config=str(ZERO3), mixture=str(mixture), steps=None,
               train_tokens=1000, seq_len=32), world_size=2)
    assert plan.batch.global_batch == 4 and plan.tokens_per_step == 128
    assert plan.steps == 8  # ceil(1000 / 128)
    assert plan.peak_lr == load_ds_config(ZERO3).learning_rate


def test_plan_errors_name_the_flag(tiny_manifest, tmp_path):
    mixture = write_mixture(tiny_manifest, tmp_path / "mix.json")
    common = {"manifest": str(tiny_manifest), "deepspeed_config": str(ZERO3), "mixture": str(mixture)}
    with pytest.raises(RegmixError, match="--warmup: 11 steps is longer than the run"):
        plan_run(config(**common, warmup=11), 1)
    unknown = tmp_path / "unknown.json"
    Mixture.from_weights({"news": 0.5, "poetry": 0.5}).save(unknown)
    with pytest.raises(RegmixError, match="unknown domain"):
        plan_run(config(**{**common, "mixture": str(unknown)}), 1)


def test_rank_shares_cover_every_sample_once_with_equal_forward_counts():
    samples = torch.arange(7 * 3).view(7, 3)
    shares = [single.rank_share(samples, rank, 3) for rank in range(3)]
    assert {len(share) for share, _ in shares} == {3}
    real = torch.cat([share[weights > 0] for share, weights in shares])
    assert sorted(real[:, 0].tolist()) == samples[:, 0].tolist()
    assert sum(float(weights.sum()) for _, weights in shares) == 7


def test_start_decision_never_clobbers_a_run(tiny_manifest, tmp_path):
    mixture = write_mixture(tiny_manifest, tmp_path / "mix.json")
    common = {"manifest": str(tiny_manifest), "deepspeed_config": str(ZERO3), "mixture": str(mixture),
              "out": str(tmp_path / "run")}
    fresh, auto = plan_run(config(**common), 1), plan_run(config(**common, resume="auto"), 1)
    assert single.decide_start(fresh) == single.decide_start(auto) == "fresh"
    checkpoint = tmp_path / "run" / "checkpoints" / "step00000004"
    checkpoint.mkdir(parents=True)
    assert single.decide_start(fresh) == "fresh", "a checkpoint killed mid-save (no marker) does not count"
    (checkpoint / "complete.json").write_text('{"step": 4}')
    assert single.decide_start(auto) == "resume"
    with pytest.raises(RegmixError, match="--out: .* pass --resume auto"):
        single.decide_start(fresh)
    (tmp_path / "run" / "result.json").write_text("{}")
    assert single.decide_start(auto) == "done"
    with pytest.raises(RegmixError, match="already holds a finished run"):
        single.decide_start(fresh)


def test_help_documents_every_flag():
    text = train_command.build_parser().format_help()
    for flag in ("--mixture", "--manifest", "--preset", "--model-config", "--deepspeed_config", "--seq-len",
                 "--train-tokens", "--steps", "--lr", "--schedule", "--warmup", "--seed", "--out", "--eval-interval",
                 "--eval-batches", "--save-interval", "--resume", "--local_rank"):
        assert flag in text
    assert str(EXIT_REQUEUE) in text


@pytest.mark.parametrize("problem", ["disagree", "missing_mixture", "bad_preset", "too_long_warmup"])
def test_bad_input_exits_2_with_one_line_and_no_output(tiny_manifest, tmp_path, capsys, problem):
    mixture = write_mixture(tiny_manifest, tmp_path / "mix.json")
    other = write_mixture(tiny_manifest, tmp_path / "other.json", skew=0.3)
    block = tmp_path / "ds.json"
    block.write_text(json.dumps(with_mixture(load_ds_config(ZERO3).settings, Mixture.load(mixture))))
    out = tmp_path / "run"
    args = {
        "disagree": train_args(tiny_manifest, out, other, deepspeed_config=block),
        "missing_mixture": train_args(tiny_manifest, out, None),
        "bad_preset": train_args(tiny_manifest, out, mixture, preset="huge"),
        "too_long_warmup": train_args(tiny_manifest, out, mixture, warmup=STEPS + 1),
    }[problem]
    try:
        code = train_command.main(args)
    except SystemExit as exit:  # argparse's own errors
        code = exit.code
    assert code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "error" in error
    assert not out.exists()


def test_train_py_exit_code_and_error_line(tiny_manifest, tmp_path):
    out = tmp_path / "run"
    code, output = run([sys.executable, "train.py", *train_args(tiny_manifest, out, tmp_path / "absent.json")],
                       free_port())
    assert code == 2 and output.strip() == f"train.py: error: {tmp_path / 'absent.json'}: file not found"
    assert not out.exists()


def test_flag_and_block_with_the_same_weights_plan_the_same_run(tiny_manifest, tmp_path):
    mixture = write_mixture(tiny_manifest, tmp_path / "mix.json")
    block = tmp_path / "ds.json"
    block.write_text(json.dumps(with_mixture(load_ds_config(ZERO3).settings, Mixture.load(mixture))))
    common = {"manifest": str(tiny_manifest), "deepspeed_config": str(block), "out": str(tmp_path / "o")}
    both = plan_run(config(**common, mixture=str(mixture)), 1)
    block_only = plan_run(config(**common, mixture=None), 1)
    assert both.signature() == block_only.signature()


# ---- real runs: python train.py (one process, ZeRO-3) ----------------------------------------


@pytest.fixture(scope="module")
def plain_runs(tiny_manifest, tmp_path_factory):
    """An uninterrupted run, and the same run stopped by SIGUSR1 then resumed."""
    base = tmp_path_factory.mktemp("plain")
    mixture = write_mixture(tiny_manifest, base / "mix.json")
    reference = base / "reference"
    code, output = run([sys.executable, "train.py", *train_args(tiny_manifest, reference, mixture, eval_interval=8)],
                       free_port())
    assert code == 0, output
    return {"base": base, "mixture": mixture, "reference": reference, "output": output}


def test_plain_python_run_writes_result_metrics_and_model(plain_runs, tiny_manifest):
    reference = plain_runs["reference"]
    result = json.loads((reference / "result.json").read_text())
    manifest = Manifest.load(tiny_manifest)
    mixture = Mixture.load(plain_runs["mixture"])
    assert result["mixture"] == pytest.approx(dict(mixture.weights))
    assert result["mixture_hash"] == mixture.content_hash()
    assert list(result["valid_loss"]) == list(manifest.valid)  # every domain, then the target
    assert all(0 < loss < 10 for loss in result["valid_loss"].values())
    assert (result["steps"], result["world_size"], result["global_batch"], result["zero_stage"]) == (STEPS, 1, 2, 3)
    assert result["tokens"] == STEPS * 2 * 32
    assert result["tokens_per_s"] > 0 and result["wall_seconds"] > 0
    assert result["params"]["total"] > result["params"]["non_embedding"] > 0
    lines = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    evals = [line for line in lines if "valid_loss" in line]
    assert [line["step"] for line in steps] == list(range(1, STEPS + 1))
    assert {"lr", "grad_norm", "tokens", "tokens_per_s"} <= set(steps[0])
    assert steps[0]["lr"] == pytest.approx(steps[-1]["lr"] / 2)  # warmup of 2, then constant
    assert [line["step"] for line in evals] == [8, 16] and evals[-1]["valid_loss"] == result["valid_loss"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert "loss" in plain_runs["output"] and "tok/s" in plain_runs["output"]


def test_saved_hf_model_reproduces_the_validation_loss(plain_runs, tiny_manifest):
    assert_hf_model_reproduces(plain_runs["reference"], tiny_manifest)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_losses(plain_runs, tiny_manifest):
    base, mixture = plain_runs["base"], plain_runs["mixture"]
    out = base / "interrupted"
    args = [sys.executable, "train.py", *train_args(tiny_manifest, out, mixture, eval_interval=8)]
    process = launch(args, free_port(), fault={"REGMIX_FAULT": "step@2:USR1"})  # Slurm's warning, after step 2
    code, output = finish(process)
    assert code == EXIT_REQUEUE, output
    stopped_at = max(step_losses(out))
    # The stop flag travels with the next step's loss all-reduce: every rank stops after step 3.
    assert stopped_at == 3 and not (out / "result.json").exists()
    assert (out / "checkpoints" / f"step{stopped_at:08d}" / "complete.json").is_file()

    other = write_mixture(tiny_manifest, base / "other.json", skew=0.3)
    wrong = [sys.executable, "train.py", *train_args(tiny_manifest, out, other, eval_interval=8, resume="auto")]
    code, output = run(wrong, free_port())
    assert code == 2 and "mixture_hash" in output, output

    code, output = run(args + ["--resume", "auto"], free_port())
    assert code == 0, output
    assert f"resumed from {out / 'checkpoints'}" in output
    assert_same_run(out, plain_runs["reference"])


def test_mixture_from_the_config_block_trains_the_same_run(plain_runs, tiny_manifest):
    base = plain_runs["base"]
    block = base / "zero3_with_mixture.json"
    block.write_text(json.dumps(with_mixture(load_ds_config(ZERO3).settings, Mixture.load(plain_runs["mixture"]))))
    out = base / "block_only"
    code, output = run([sys.executable, "train.py", *train_args(tiny_manifest, out, None, eval_interval=8,
                                                                deepspeed_config=block)], free_port())
    assert code == 0, output
    assert_same_run(out, plain_runs["reference"], tolerance=0.0)


def test_finished_run_is_not_trained_again(plain_runs, tiny_manifest):
    reference = plain_runs["reference"]
    before = (reference / "result.json").stat().st_mtime_ns
    args = train_args(tiny_manifest, reference, plain_runs["mixture"], eval_interval=8, resume="auto")
    code, output = run([sys.executable, "train.py", *args], free_port())
    assert code == 0 and "already finished" in output
    assert (reference / "result.json").stat().st_mtime_ns == before


# ---- fault injection: SIGKILL a proxy anywhere, rerun the same command ---------------------------

KILL_STEPS = 40
TIMING_FIELDS = ("wall_seconds", "tokens_per_s", "mfu", "matmul_peak_flops_per_s")
"""result.json fields measured by the clock: the only ones an interrupted run may change."""


@pytest.fixture(scope="module")
def killable_proxy(tiny_manifest, tmp_path_factory):
    """A 40-step proxy that checkpoints every step: (command for any --out, uninterrupted run directory)."""
    config = make_experiment(corpus_of(tiny_manifest), tmp_path_factory.mktemp("kill") / "experiment", n=2,
                             steps=KILL_STEPS, save_interval=1)
    mixture = ExperimentConfig.load(config).work.mixture(1)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "regmix_ds", "proxy", "--config", str(config), "--mixture", str(mixture),
                "--out", str(out)]

    reference = config.parent / "reference"
    code, output = run(command(reference), free_port())
    assert code == 0, output
    return command, reference


def killed_at(command: list[str], fault: str) -> str:
    """Run `command` with `REGMIX_FAULT=fault`; it must die of SIGKILL there. Returns its output."""
    code, output = finish(launch(command, free_port(), fault={"REGMIX_FAULT": fault}))
    assert code == -signal.SIGKILL, f"{fault}: exit {code}, the fault point was never reached\n{output[-3000:]}"
    return output


def assert_same_result(out: Path, reference: Path) -> None:
    """result.json equals the uninterrupted one but for timing (losses within 1e-6); every step logged once."""
    got, expected = (json.loads((d / "result.json").read_text()) for d in (out, reference))
    for name in TIMING_FIELDS:
        got.pop(name), expected.pop(name)
    assert got.pop("valid_loss") == pytest.approx(expected.pop("valid_loss"), abs=1e-6)
    assert got == expected
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line] == list(range(1, KILL_STEPS + 1))
    assert step_losses(out) == pytest.approx(step_losses(reference), abs=1e-6)


@pytest.mark.slow
def test_proxy_killed_at_a_random_step_reruns_to_the_uninterrupted_result(killable_proxy, tmp_path):
    command, reference = killable_proxy
    for seed in (0, 1, 2):
        kill_at = int(np.random.default_rng(seed).integers(2, KILL_STEPS - 10))
        out = tmp_path / f"killed{seed}"
        killed_at(command(out), f"step@{kill_at}")
        assert max(step_losses(out)) == kill_at and not (out / "result.json").exists()
        # Killed after logging step kill_at, before its checkpoint: the newest is the step before.
        assert engine.verify_checkpoint(engine.newest_checkpoint(out / "checkpoints")) == kill_at - 1
        code, output = run(command(out), free_port())
        assert code == 0, output
        assert f"resumed from {out / 'checkpoints'}" in output
        assert_same_result(out, reference)


SAVE_KILLS = [("checkpoint@3", 3), ("write complete.json@5", 7), ("checkpoint@4", 10), ("write complete.json@2", 11)]
"""(fault, step of the save it lands in) for successive kills of one run: inside a save, after
DeepSpeed wrote the step's files and before the completion marker, or while the marker itself is
half-written (its temporary file complete, not renamed). A rerun resumes from the step before and
counts saves from there, so the n-th save of a rerun is of step (step resumed from) + n."""


@pytest.mark.slow
def test_kills_during_checkpoint_saves_leave_a_loadable_checkpoint_and_lose_nothing(killable_proxy, tmp_path):
    command, reference = killable_proxy
    out = tmp_path / "killed"
    for fault, step in SAVE_KILLS:
        killed_at(command(out), fault)
        assert not (out / "result.json").exists()
        unfinished = out / "checkpoints" / engine.checkpoint_tag(step)
        assert unfinished.is_dir() and not (unfinished / engine.COMPLETE_MARKER).exists(), f"{fault}: not mid-save"
        newest = engine.newest_checkpoint(out / "checkpoints")
        assert engine.verify_checkpoint(newest) == step - 1
        for shard in newest.glob("*.pt"):
            assert engine.load_weights_only(str(shard))
    code, output = run(command(out), free_port())
    assert code == 0, output
    assert_same_result(out, reference)
    print(f"{len(SAVE_KILLS)} SIGKILLs inside checkpoint saves (every one asserted mid-save); results lost: 0")


def test_a_restart_drops_metrics_past_the_checkpoint_and_a_torn_last_line(tmp_path):
    lines = ['{"step": 1, "loss": 5.0}', '{"step": 2, "valid_loss": {"news": 4.0}}', '{"step": 3, "loss": 4.5}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    MetricsFile(RunDir(tmp_path), is_main=True).restart_at(2)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines[:2]
