"""The language models: Llama presets built from `transformers.LlamaConfig` (nothing downloaded).

This module holds the model only. It never imports DeepSpeed: parallelism, ZeRO and
checkpoints are applied from outside by `regmix_ds.train.engine`.

Shapes (and their presets, which mirror the RegMix / TinyLlama sizes) are settings, in
`regmix_ds.core.config`; the vocabulary always comes from the prepared corpus's tokenizer, so
one preset serves any tokenizer.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from regmix_ds.core.config import ModelShape
from regmix_ds.core.files import replace_directory

if TYPE_CHECKING:  # transformers takes seconds to import: only the functions that build models load it
    from transformers import LlamaConfig, LlamaForCausalLM

EMBEDDING_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def llama_config(shape: ModelShape, vocab_size: int, seq_len: int, eos_token_id: int | None = None) -> LlamaConfig:
    """A Hugging Face config for `shape`: no biases, no dropout, untied embeddings (as TinyLlama)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads or shape.heads,
        max_position_embeddings=seq_len,
        rope_theta=shape.rope_theta,
        rms_norm_eps=1e-5,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
    )
    config._attn_implementation = "sdpa"
    return config


def build_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised model, identical for a given (config, seed) on every rank.

    Transformers initialises weights from torch's global generator, so the seed is applied
    inside `fork_rng`: the caller's global RNG state is the same before and after.
    """
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def parameter_counts(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> dict[str, int]:
    """Total parameters, and those outside the input embedding and output projection.

    Count before ZeRO-3 partitions the model (afterwards each rank holds a slice).
    """
    total = embedding = 0
    for name, param in named_parameters:
        total += param.numel()
        embedding += param.numel() if name in EMBEDDING_NAMES else 0
    return {"total": total, "non_embedding": total - embedding}


def training_flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """Model FLOPs to train on one token (forward + backward), as in the PaLM MFU appendix.

    6 x every parameter used in a matrix product (all but the input embedding lookup), plus
    12 x layers x hidden x sequence for the attention scores and their weighted sum.
    """
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    matmul_params = layers * per_layer + h * vocab
    return 6.0 * matmul_params + 12.0 * layers * h * seq_len


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of `logits` [B, T, V] against the already shifted `targets` [B, T], in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


def split_inputs(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of packed samples [B, L+1] -> (inputs [B, L], next-token targets [B, L])."""
    return batch[:, :-1], batch[:, 1:]


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: matrices decay, norm gains (1-D) do not, as in LLaMA/TinyLlama."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_hf_model(
    config: LlamaConfig, state_dict: dict[str, torch.Tensor], tokenizer_path: str, out_dir: str | os.PathLike
) -> None:
    """Write `state_dict` as a Hugging Face model directory (safetensors + tokenizer).

    The directory is assembled beside `out_dir` and renamed into place, so a reader sees a
    complete model or none. The model shell is built on the meta device: no second random
    initialisation of a large model just to be overwritten.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with torch.device("meta"):
        shell = LlamaForCausalLM(config)
    shell.load_state_dict(state_dict, assign=True)
    shell.save_pretrained(staging)
    AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(staging)
    replace_directory(staging, out_dir)
