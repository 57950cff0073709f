"""Model presets, seeded construction, parameter counts, loss and the Hugging Face export."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from regmix_ds.core.config import MODEL_PRESETS, ModelShape, load_shape
from regmix_ds.core.errors import RegmixError
from regmix_ds.train import model as models


def tiny_config(vocab=97, seq_len=12):
    return models.llama_config(MODEL_PRESETS["tiny"], vocab, seq_len, eos_token_id=0)


def test_presets_have_the_issue_shapes_and_vocab_from_the_caller():
    expected = {"proxy-1m": (2, 8, 256, 512), "proxy-60m": (10, 8, 768, 1536), "target-1b": (22, 16, 2048, 5632)}
    for name, (layers, heads, hidden, ffn) in expected.items():
        config = models.llama_config(MODEL_PRESETS[name], 4096, 2048)
        got = (config.num_hidden_layers, config.num_attention_heads, config.hidden_size, config.intermediate_size)
        assert got == (layers, heads, hidden, ffn), name
        assert config.vocab_size == 4096 and config.max_position_embeddings == 2048
        assert not config.tie_word_embeddings and config.attention_dropout == 0.0


def test_parameter_counts_match_the_llama_formula():
    shape = MODEL_PRESETS["proxy-1m"]
    counts = models.parameter_counts(models.build_model(models.llama_config(shape, 512, 64), seed=0).named_parameters())
    h, f, layers, vocab = shape.hidden, shape.ffn, shape.layers, 512
    per_layer = 4 * h * h + 3 * h * f + 2 * h  # attention, SwiGLU, two RMSNorm gains
    assert counts["non_embedding"] == layers * per_layer + h  # + the final norm
    assert counts["total"] == counts["non_embedding"] + 2 * vocab * h  # untied input and output embeddings


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = models.build_model(tiny_config(), seed=5)
    after = torch.rand(3)
    b = models.build_model(tiny_config(), seed=5)
    c = models.build_model(tiny_config(), seed=6)
    assert torch.equal(before, after), "building a model must not move the global generator"
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_loss_is_next_token_cross_entropy_over_every_position():
    torch.manual_seed(0)
    batch = torch.randint(0, 97, (3, 13))
    inputs, targets = models.split_inputs(batch)
    assert inputs.shape == targets.shape == (3, 12)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    logits = torch.randn(3, 12, 97)
    by_hand = -torch.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    assert torch.allclose(models.next_token_loss(logits, targets), by_hand, atol=1e-6)
    assert models.next_token_loss(logits, targets, "none").shape == (36,)


def test_weight_decay_groups_split_matrices_from_norm_gains():
    model = models.build_model(tiny_config(), seed=0)
    decay, no_decay = models.weight_decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_flops_per_token_grows_with_sequence_and_counts_six_per_matmul_parameter():
    config = tiny_config()
    short, long = models.training_flops_per_token(config, 10), models.training_flops_per_token(config, 20)
    assert long - short == 12 * config.num_hidden_layers * config.hidden_size * 10
    counts = models.parameter_counts(models.build_model(config, 0).named_parameters())
    norms = config.num_hidden_layers * 2 * config.hidden_size + config.hidden_size
    matmul = counts["total"] - config.vocab_size * config.hidden_size - norms
    assert models.training_flops_per_token(config, 0) == 6 * matmul


def test_model_config_file_and_its_errors(tmp_path):
    path = tmp_path / "shape.json"
    path.write_text(json.dumps({"layers": 1, "heads": 2, "hidden": 8, "ffn": 16}))
    assert load_shape(None, path) == ModelShape(1, 2, 8, 16)
    path.write_text(json.dumps({"layers": 1, "heads": 3, "hidden": 8, "ffn": 16}))
    with pytest.raises(RegmixError, match="model.hidden"):
        load_shape(None, path)
    path.write_text(json.dumps({"layers": 1, "heads": 2, "hidden": 8, "ffn": 16, "dropout": 0.1}))
    with pytest.raises(RegmixError, match="unknown key"):
        load_shape(None, path)
    with pytest.raises(RegmixError, match="--preset: unknown preset 'huge'"):
        load_shape("huge", None)


def test_hf_export_round_trips(tmp_path, tiny_manifest):
    from regmix_ds.core.manifest import Manifest

    manifest = Manifest.load(tiny_manifest)
    config = models.llama_config(MODEL_PRESETS["tiny"], manifest.vocab_size, 16)
    model = models.build_model(config, seed=3)
    models.save_hf_model(config, model.state_dict(), manifest.tokenizer_path, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    batch = torch.randint(0, manifest.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(batch).logits, loaded(batch).logits, atol=1e-6)
    assert (tmp_path / "hf" / "tokenizer_config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"], "no staging directory may be left behind"


def test_model_module_does_not_import_deepspeed():
    code = "import sys, regmix_ds.train.model; print('deepspeed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
