"""K Llama models of one shape computed as one: every weight stacked along a leading K axis.

A RegMix swarm trains hundreds of identical small models that differ only in their data. One
at a time, each matrix product is too small to keep a device busy and every operator pays its
launch cost K times; stacked, a layer of all K models is one batched product (`torch.bmm`).

The forward pass is Hugging Face's `LlamaForCausalLM` (as `model.llama_config` configures it:
RMSNorm, RoPE, causal attention with grouped KV heads, SwiGLU, untied head) written for stacked
weights, so member k computes what the HF model with member k's weights computes, to float
rounding. Weights keep HF's names and shapes with a K axis in front, so members move in and out
with `stack_state_dicts` / `member_state_dict`. Like `model`, this module never imports DeepSpeed.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from regmix_ds.train.model import split_inputs

if TYPE_CHECKING:
    from transformers import LlamaConfig

Params = Mapping[str, torch.Tensor]


def stack_state_dicts(states: list[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K HF state dicts of one shape -> one dict of [K, ...] tensors (HF names)."""
    return {name: torch.stack([state[name] for state in states]) for name in states[0]}


def member_state_dict(params: Params, k: int) -> dict[str, torch.Tensor]:
    """Member k's weights as an ordinary HF state dict (copies, detached)."""
    return {name: tensor[k].detach().clone() for name, tensor in params.items()}


def is_matrix(stacked: torch.Tensor) -> bool:
    """Whether a stacked weight holds matrices: they decay, norm gains do not (the rule of
    `model.weight_decay_groups`, one axis further in)."""
    return stacked.ndim - 1 >= 2


@dataclass(frozen=True)
class StackedLlama:
    """The forward pass of K stacked Llama models (no state: weights are passed in)."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rms_eps: float
    rope_theta: float

    @classmethod
    def from_config(cls, config: LlamaConfig) -> StackedLlama:
        """The shape every member shares, read from their HF `LlamaConfig`."""
        return cls(
            layers=config.num_hidden_layers, heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads, head_dim=config.hidden_size // config.num_attention_heads,
            rms_eps=config.rms_norm_eps, rope_theta=config.rope_parameters["rope_theta"],
        )

    def member_losses(self, params: Params, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of each member on its own packed samples: [K, B, L+1] -> [K]."""
        return self.token_losses(params, batch).mean(dim=(1, 2))

    def token_losses(self, params: Params, batch: torch.Tensor) -> torch.Tensor:
        """Per-token next-token losses in fp32: [K, B, L+1] -> [K, B, L]."""
        k, b = batch.shape[:2]
        inputs, targets = split_inputs(batch.reshape(k * b, -1))
        logits = self.logits(params, inputs.reshape(k, b, -1))
        losses = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
        return losses.view(k, b, -1)

    def logits(self, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        """[K, B, T] token ids -> [K, B, T, V] logits."""
        k, b, t = input_ids.shape
        x = self.embed(params["model.embed_tokens.weight"], input_ids.reshape(k, b * t))
        cos, sin = self.rotary(t, x.device, x.dtype)
        for layer in range(self.layers):
            prefix = f"model.layers.{layer}."
            x = x + self.attention(params, prefix, rms_norm(x, params[prefix + "input_layernorm.weight"], self.rms_eps),
                                   b, cos, sin)
            x = x + self.mlp(params, prefix,
                             rms_norm(x, params[prefix + "post_attention_layernorm.weight"], self.rms_eps))
        x = rms_norm(x, params["model.norm.weight"], self.rms_eps)
        return linear(x, params["lm_head.weight"]).view(k, b, t, -1)

    @staticmethod
    def embed(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """[K, V, H] tables, [K, N] ids -> [K, N, H]: member k looks up in its own table."""
        k, vocab, hidden = table.shape
        offsets = torch.arange(k, device=ids.device).unsqueeze(1) * vocab
        return F.embedding(ids + offsets, table.reshape(k * vocab, hidden))

    def rotary(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin [T, head_dim], computed in fp32 as HF's default rotary embedding does."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        inv_freq = 1.0 / (self.rope_theta ** exponents)
        freqs = torch.arange(length, device=device).float()[:, None] * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def attention(self, params: Params, prefix: str, x: torch.Tensor, batch: int,
                  cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Causal grouped-query self-attention with RoPE, each member on its own: [K, B*T, H] -> [K, B*T, H]."""
        k, n, hidden = x.shape
        length = n // batch

        def heads(name: str, count: int) -> torch.Tensor:
            # [K, B*T, count*D] -> [K*B, count, T, D]: the K members become more batch rows.
            projected = linear(x, params[f"{prefix}self_attn.{name}.weight"])
            return projected.view(k * batch, length, count, self.head_dim).transpose(1, 2)

        q = apply_rotary(heads("q_proj", self.heads), cos, sin)
        key = apply_rotary(heads("k_proj", self.kv_heads), cos, sin)
        value = heads("v_proj", self.kv_heads)
        repeats = self.heads // self.kv_heads
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
        out = F.scaled_dot_product_attention(q, key, value, is_causal=True, scale=self.head_dim ** -0.5)
        out = out.transpose(1, 2).reshape(k, n, hidden)
        return linear(out, params[f"{prefix}self_attn.o_proj.weight"])

    @staticmethod
    def mlp(params: Params, prefix: str, x: torch.Tensor) -> torch.Tensor:
        """Each member's SwiGLU feed-forward layer: down(silu(gate(x)) * up(x))."""
        gate = F.silu(linear(x, params[prefix + "mlp.gate_proj.weight"]))
        return linear(gate * linear(x, params[prefix + "mlp.up_proj.weight"]), params[prefix + "mlp.down_proj.weight"])


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[K, N, in] x [K, out, in] -> [K, N, out]: one batched product for all members."""
    return torch.bmm(x, weight.transpose(1, 2))


def rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's LlamaRMSNorm with a gain per member: [K, N, H], [K, H]."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return gain.unsqueeze(1) * (x.float() * torch.rsqrt(variance + eps)).to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the last axis: `x * cos + rotate_half(x) * sin`, as HF's `apply_rotary_pos_emb` does."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
