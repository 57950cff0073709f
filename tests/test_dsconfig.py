"""DeepSpeed configs: every shipped file, the "regmix" mixture block, and batch arithmetic."""
import json
from pathlib import Path

import pytest
from deepspeed.runtime.config import DeepSpeedConfig

from regmix_ds.core.dsconfig import (
    BatchSizes,
    choose_mixture,
    load_ds_config,
    resolve_batch,
    with_mixture,
)
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.mixture import Mixture

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "ds_configs").glob("*.json"))
CPU_CONFIGS = [p for p in SHIPPED if "gpu" not in p.name]


def write(tmp_path, settings, name="ds.json"):
    path = tmp_path / name
    path.write_text(json.dumps(settings))
    return path


def base_settings(**changes):
    settings = {
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "weight_decay": 0.1, "torch_adam": True}},
        "zero_optimization": {"stage": 3},
    }
    return {**settings, **changes}


def test_the_expected_configs_ship():
    names = {p.name for p in SHIPPED}
    assert {"zero0.json", "zero1.json", "zero2.json", "zero3.json",
            "zero3_gpu_bf16.json", "zero3_gpu_offload.json"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_deepspeed_accepts_it(path):
    config = load_ds_config(path)
    resolved = config.for_world(1)
    parsed = DeepSpeedConfig(resolved)  # DeepSpeed's own validation (world size 1 without a process group)
    assert parsed.zero_optimization_stage == config.zero_stage
    assert parsed.gradient_clipping == 1.0
    params = config.settings["optimizer"]["params"]
    assert config.settings["optimizer"]["type"] == "AdamW"
    assert params["betas"] == [0.9, 0.95] and params["weight_decay"] == 0.1
    assert "regmix" not in resolved and "scheduler" not in resolved


@pytest.mark.parametrize("path", CPU_CONFIGS, ids=lambda p: p.name)
def test_cpu_configs_are_fp32_torch_adam_and_fit_one_or_two_ranks(path):
    config = load_ds_config(path)
    assert config.precision == "fp32"
    assert config.settings["optimizer"]["params"]["torch_adam"] is True, "else DeepSpeed compiles fused_adam"
    assert config.batch_sizes(1).global_batch * 2 == config.batch_sizes(2).global_batch


def test_gpu_configs_use_bf16_zero3_and_a_fixed_global_batch():
    bf16 = load_ds_config(next(p for p in SHIPPED if p.name == "zero3_gpu_bf16.json"))
    offload = load_ds_config(next(p for p in SHIPPED if p.name == "zero3_gpu_offload.json"))
    for config in (bf16, offload):
        assert config.precision == "bf16" and config.zero_stage == 3
        assert config.batch_sizes(8) == BatchSizes(micro=8, accumulation=8, world=8)
        assert config.batch_sizes(64).global_batch == config.batch_sizes(8).global_batch
    assert offload.settings["zero_optimization"]["offload_optimizer"]["device"] == "cpu"


def test_batch_arithmetic_fills_the_missing_size():
    assert resolve_batch({"train_micro_batch_size_per_gpu": 4}, 3, "x") == BatchSizes(4, 1, 3)
    assert resolve_batch({"train_batch_size": 48, "train_micro_batch_size_per_gpu": 4}, 3, "x") == BatchSizes(4, 4, 3)
    assert resolve_batch({"train_batch_size": 48, "gradient_accumulation_steps": 2}, 3, "x") == BatchSizes(8, 2, 3)
    full = {"train_batch_size": 24, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
    assert resolve_batch(full, 3, "x").global_batch == 24


def test_batch_arithmetic_errors_show_the_product():
    full = {"train_batch_size": 24, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
    with pytest.raises(RegmixError, match=r"ds.json: train_batch_size 24 != .* 4 x .* 2 x world size 2 \(= 16\)"):
        resolve_batch(full, 2, "ds.json")
    with pytest.raises(RegmixError, match="not a multiple of 12"):
        resolve_batch({"train_batch_size": 20, "train_micro_batch_size_per_gpu": 4}, 3, "ds.json")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train_micro_batch_size_per_gpu": 0}, "must be a positive integer"),
        ({"train_micro_batch_size_per_gpu": "auto"}, "must be a positive integer"),
        ({"optimizer": {"type": "Lamb"}}, "optimizer"),
        ({"optimizer": {"type": "AdamW", "params": {"lr": -1}}}, "optimizer.params.lr"),
        ({"scheduler": {"type": "WarmupLR"}}, "scheduler"),
        ({"zero_optimization": {"stage": 4}}, "stage must be 0, 1, 2 or 3"),
        ({"regmix": {"weights": {"a": 1.0}}}, 'only the key "mixture"'),
        ({"regmix": {"mixture": {"weights": {"a": -1.0}}}}, "negative"),
        ({"regmix": {"mixture": {"weights": {"a": 0.5, "b": 0.5}, "hash": "0" * 16}}}, "hash"),
    ],
)
def test_bad_configs_are_one_line_errors_naming_the_file(tmp_path, change, message):
    path = write(tmp_path, base_settings(**change))
    with pytest.raises(RegmixError, match=message) as caught:
        load_ds_config(path)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_missing_batch_sizes_and_non_object_files(tmp_path):
    settings = base_settings()
    del settings["train_micro_batch_size_per_gpu"]
    with pytest.raises(RegmixError, match="set train_micro_batch_size_per_gpu or train_batch_size"):
        load_ds_config(write(tmp_path, settings))
    with pytest.raises(RegmixError, match="expected a JSON object"):
        load_ds_config(write(tmp_path, [1, 2]))


def test_mixture_block_round_trips_and_is_stripped(tmp_path):
    mixture = Mixture.from_weights({"a": 0.25, "b": 0.75})
    path = write(tmp_path, with_mixture(base_settings(), mixture, source="simulate"))
    config = load_ds_config(path)
    assert config.mixture == mixture and config.mixture.content_hash() == mixture.content_hash()
    assert "regmix" not in config.settings and "regmix" not in config.for_world(1)
    assert json.loads(path.read_text())["regmix"]["mixture"]["source"] == "simulate"


def test_for_world_sets_all_sizes_and_the_lr_without_touching_the_loaded_settings(tmp_path):
    config = load_ds_config(write(tmp_path, base_settings()))
    resolved = config.for_world(2, lr=5e-4)
    assert (resolved["train_batch_size"], resolved["gradient_accumulation_steps"]) == (4, 1)
    assert resolved["optimizer"]["params"]["lr"] == 5e-4
    assert config.settings["optimizer"]["params"]["lr"] == 1e-3 and config.learning_rate == 1e-3


def test_flag_and_block_must_agree(tmp_path):
    a = Mixture.from_weights({"x": 0.5, "y": 0.5}, source="a.json")
    b = Mixture.from_weights({"x": 0.4, "y": 0.6}, source="b.json")
    with_block = load_ds_config(write(tmp_path, with_mixture(base_settings(), a), "with.json"))
    without = load_ds_config(write(tmp_path, base_settings(), "without.json"))
    assert choose_mixture(None, with_block) == a
    assert choose_mixture(b, without) == b
    assert choose_mixture(Mixture.from_weights({"y": 0.5, "x": 0.5}), with_block) == a  # same weights, other order
    with pytest.raises(RegmixError, match="--mixture: b.json .* differs from the \"regmix\" block"):
        choose_mixture(b, with_block)
    with pytest.raises(RegmixError, match='--mixture: required: .* has no "regmix" block'):
        choose_mixture(None, without)
