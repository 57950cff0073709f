"""The budget planner: its arithmetic agrees with the model, with what the real step does, and with a
measured run; `regmix-ds plan` prints a plan and the sbatch line. (Speed is measured in
benchmarks/plan_check.py, never asserted here.)"""
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from regmix_ds.commands.main import main
from regmix_ds.core.config import MODEL_PRESETS, ModelShape
from regmix_ds.train import budget
from regmix_ds.train import model as models
from regmix_ds.train.group import AdamW, GroupState, fresh_start
from regmix_ds.train.stacked import LOSS_CHUNK, StackedLlama
from tests.conftest import ROOT

GIB = 2**30
SHAPES = [ModelShape(layers=2, heads=2, hidden=32, ffn=64),
          ModelShape(layers=3, heads=4, hidden=64, ffn=96, kv_heads=2)]
MATMULS = {"bmm", "mm", "_scaled_dot_product_flash_attention_for_cpu",
           "_scaled_dot_product_flash_attention_for_cpu_backward"}
NOT_MOVING = {"detach", "empty", "empty_like", "new_empty", "new_empty_strided"}


class Traffic(TorchDispatchMode):
    """Counts the operators run below autograd and the bytes the elementwise ones read and write
    (inputs plus outputs; views, allocations and matrix products left out), as the planner counts."""

    def __init__(self):
        super().__init__()
        self.bytes, self.ops = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._overloadpacket.__name__
        if func.is_view or name in NOT_MOVING:
            return out
        self.ops += 1
        if name not in MATMULS:
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            self.bytes += sum(t.numel() * t.element_size() for t in tensors if t.numel() > 1)
        return out


def group(shape, vocab, seq_len, k):
    config = models.llama_config(shape, vocab, seq_len)
    state = GroupState.stack([fresh_start(config, seed) for seed in range(k)], torch.device("cpu"))
    return config, state


@pytest.mark.parametrize("shape", SHAPES, ids=["mha", "gqa"])
def test_sizes_and_flops_match_the_hf_model(shape):
    config = models.llama_config(shape, 300, 48)
    hf = models.build_model(config, 0)
    sizes = budget.Sizes.of(shape, 300)
    assert sizes.total == sum(p.numel() for p in hf.parameters())
    assert sizes.tensors == len(list(hf.parameters()))
    assert sizes.largest == max(p.numel() for p in hf.parameters())
    assert budget.flops_per_token(shape, 300, 48) == models.training_flops_per_token(config, 48)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=["mha", "gqa"])
def test_saved_activations_are_what_autograd_keeps(shape, precision):
    vocab, seq_len, micro, k = 300, 24, 2, 3
    config, state = group(shape, vocab, seq_len, k)
    weights = {p.untyped_storage().data_ptr() for p in state.params.values()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = torch.randint(0, vocab, (k, micro, seq_len + 1), generator=torch.Generator().manual_seed(0))
    with (torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
          torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")):
        StackedLlama.from_config(config).member_losses(state.params, batch)
    memory = budget.Workload(shape, vocab, seq_len, micro, 1, k, precision).memory()
    assert memory["activations"] + memory["autocast_copies"] == pytest.approx(sum(saved.values()), rel=0.1)


@pytest.mark.parametrize("shape", SHAPES, ids=["mha", "gqa"])
def test_traffic_and_operators_are_those_of_the_real_step(shape):
    vocab, seq_len, micro, k = 300, 24, 2, 3
    config, state = group(shape, vocab, seq_len, k)
    adamw = AdamW((0.9, 0.95), 1e-8, 0.1, 1.0)
    batch = torch.randint(0, vocab, (k, micro, seq_len + 1), generator=torch.Generator().manual_seed(0))
    counted = Traffic()
    with counted:
        StackedLlama.from_config(config).member_losses(state.params, batch).sum().backward()
        adamw.clip_gradients([p.grad for p in state.params.values()])
        adamw.step(state, torch.full((k,), 1e-3, dtype=torch.float64), 1)
    traffic, ops = budget.Workload(shape, vocab, seq_len, micro, 1, k).step_traffic()
    assert traffic == pytest.approx(counted.bytes, rel=0.1)
    assert ops == pytest.approx(counted.ops, rel=0.1)


def test_loss_chunks_are_counted_as_the_loss_splits_them():
    from regmix_ds.train.stacked import chunks

    for k, tokens, vocab, chunk in [(3, 48, 300, 7 * 300), (3, 48, 300, 2 * 48 * 300), (5, 48, 300, 10**9)]:
        pieces = [(members, t) for members, token_slices in chunks(k, tokens, vocab, chunk) for t in token_slices]
        largest = max((m.stop - m.start) * (t.stop - t.start) * vocab for m, t in pieces)
        split = len(pieces) // k if chunk < tokens * vocab else 1
        workload = budget.Workload(SHAPES[0], vocab, tokens, 1, 1, k, loss_chunk=chunk)
        assert workload.loss_chunks == (len(pieces), largest, split)


def test_the_memory_model_holds_for_a_measured_group():
    """proxy-1m at vocabulary 4096, K = 8, in a fresh process whose glibc returns what it frees
    (`MALLOC_MMAP_THRESHOLD_`): the planner's peak is within 20% of the measured VmHWM."""
    case = ["proxy-1m", 4096, 128, 2, 1, 8]
    env = {"MALLOC_MMAP_THRESHOLD_": "1048576", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plan_check.py"), "--child", json.dumps(case),
                           "--steps", "2", "--skip", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    device = budget.Device("cpu", 1e11, 1e10, 1e-5, 2**40, process_bytes=measured["process_bytes"], gpu=False)
    predicted = budget.Workload(MODEL_PRESETS["proxy-1m"], 4096, 128, 2, 1, 8).memory(device)["peak"]
    assert predicted == pytest.approx(measured["peak_bytes"], rel=0.2)


def test_k64_proxy_1m_fits_well_under_40_gib_in_bf16():
    workload = budget.Workload(MODEL_PRESETS["proxy-1m"], 50432, 2048, 1, 1, 64, "bf16", LOSS_CHUNK["cuda"])
    memory = workload.memory()
    assert memory["peak"] < 36 * GIB
    assert memory["loss_chunk"] <= 8 * LOSS_CHUNK["cuda"]  # never the 26 GB of whole fp32 logits


def test_the_largest_group_is_the_last_that_fits():
    one = budget.Workload(MODEL_PRESETS["proxy-1m"], 50432, 2048, 1, 1, 1, "bf16", LOSS_CHUNK["cuda"])
    device = budget.stated_gpu("H100", 700, 80, 3.0)
    k = budget.largest_group(one, device)
    fits = [budget.Workload(**{**one.__dict__, "group": n}).memory(device)["peak"] <= 0.9 * 80 * GIB
            for n in (k, k + 1)]
    assert k > 1 and fits == [True, False]


def test_the_advised_swarm_grows_linearly_from_regmix_s_512_for_17():
    assert [budget.advised_swarm(d) for d in (17, 34, 1, 5)] == [512, 1024, 31, 151]


@pytest.fixture
def experiment(tmp_path):
    """An exp.yaml of 17 domains, nothing prepared or drawn: what a team plans before starting."""
    settings = json.loads((ROOT / "ds_configs" / "zero0.json").read_text())
    settings.update({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 8, "bf16": {"enabled": True}})
    (tmp_path / "proxy.json").write_text(json.dumps(settings))
    config = {"work_dir": "work", "data": {"domains": {f"d{i}": {"paths": [f"d{i}.jsonl"]} for i in range(17)}},
              "swarm": {"n": 512}, "plan": {"vocab_size": 50432, "gpus": 8},
              "proxy": {"deepspeed_config": "proxy.json", "preset": "proxy-1m", "seq_len": 2048,
                        "train_tokens": 1_000_000_000}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "exp.yaml"


def test_plan_prints_the_budget_and_the_sbatch_line(experiment, capsys):
    assert main(["plan", "--config", str(experiment), "--gpu-peak-tflops", "700", "--gpu-memory-gib", "141",
                 "--gpu-bandwidth-tbs", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["swarm"] == plan["advised_swarm"] == 512 and plan["domains"] == 17
    assert plan["group_size"] == 64 and plan["largest_group"] >= 64  # 512 proxies on 8 GPUs
    assert plan["proxy_steps"] == math.ceil(1e9 / (8 * 2048))
    assert plan["groups"] == 8 and plan["wall_seconds"] == pytest.approx(plan["group_seconds"])
    assert plan["device_hours"] == pytest.approx(8 * plan["group_seconds"] / 3600)
    assert plan["memory"]["peak"] < 40 * GIB
    assert plan["target"]["params"] == budget.Sizes.of(MODEL_PRESETS["target-1b"], 50432).total
    assert plan["sbatch"].startswith("sbatch --gpus-per-task=1 --time=")
    assert plan["sbatch"].endswith(f"--array=1-512:64%8 slurm/proxies.sh {experiment}")


def test_a_stated_mfu_sets_the_time(experiment, capsys):
    assert main(["plan", "--config", str(experiment), "--gpu-peak-tflops", "700", "--gpu-memory-gib", "80",
                 "--mfu", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "at MFU 50.0% (stated)" in text and "submit: sbatch --gpus-per-task=1" in text


@pytest.mark.slow
def test_plan_measures_this_cpu_when_no_gpu_is_stated(tmp_path, capsys):
    """No `--gpu-*` numbers on a machine without a GPU: every device figure is measured here, and
    the group's step time comes from its own products timed at their shapes."""
    settings = json.loads((ROOT / "ds_configs" / "zero0.json").read_text())
    (tmp_path / "proxy.json").write_text(json.dumps(settings))
    config = {"work_dir": "work", "data": {"domains": {f"d{i}": {"paths": [f"d{i}.jsonl"]} for i in range(3)}},
              "swarm": {"n": 8}, "plan": {"vocab_size": 512},
              "proxy": {"deepspeed_config": "proxy.json", "preset": "tiny", "seq_len": 32, "train_tokens": 4096}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    assert main(["plan", "--config", str(tmp_path / "exp.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["device"]["gpu"] is False and "bandwidth" in plan["device"]["measured"]
    assert 1 <= plan["group_size"] <= 8 and plan["group_seconds"] > 0 and 0 < plan["mfu"] < 1
    assert plan["sbatch"].endswith(f"slurm/proxies.sh {tmp_path / 'exp.yaml'}")
