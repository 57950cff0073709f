"""K Llama models of one shape computed as one: every weight stacked along a leading K axis.

A RegMix swarm trains hundreds of identical small models that differ only in their data. One
at a time, each matrix product is too small to keep a device busy and every operator pays its
launch cost K times; stacked, a layer of all K models is one batched product (`torch.bmm`).

The forward pass is Hugging Face's `LlamaForCausalLM` (as `model.llama_config` configures it:
RMSNorm, RoPE, causal attention with grouped KV heads, SwiGLU, untied head) written for stacked
weights, so member k computes what the HF model with member k's weights computes, to float
rounding. Weights keep HF's names and shapes with a K axis in front, so members move in and out
with `stack_state_dicts` / `member_state_dict`. Like `model`, this module never imports DeepSpeed.

The loss never holds the whole group's logits: at K = 64 proxy-1m members, vocabulary 50,432
and sequence 2048, `[K, B, T, V]` fp32 logits alone are 26 GB. `head_losses` and `HeadLoss`
compute the output projection and cross-entropy a chunk of members and tokens at a time
(`loss_chunk` logits at once), and in training `HeadLoss` takes the head's gradients in the same
pass (softmax minus one-hot, Liger-Kernel's fused linear cross-entropy), so nothing of a chunk
outlives it and no logit is computed twice.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from regmix_ds.train.model import split_inputs

if TYPE_CHECKING:
    from transformers import LlamaConfig

Params = Mapping[str, torch.Tensor]
LOSS_CHUNK = {"cpu": 2**25, "cuda": 2**28}
"""Logits the loss computes at once ([members, tokens, V] elements), by device: 2**25 is 128 MiB in
fp32 (with the log-softmax, 8 bytes a logit at most: `budget.CHUNK_BYTES`); a GPU takes larger
pieces, so that the loop's operators stay few (2 GiB at 2**28)."""


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
    loss_chunk: int = LOSS_CHUNK["cpu"]
    """Most logits the loss holds at once (see `LOSS_CHUNK`)."""
    compile: bool = False
    """Run the decoder layers and the loss's softmax through `torch.compile` (the chunking stays eager)."""

    @classmethod
    def from_config(cls, config: LlamaConfig, loss_chunk: int = LOSS_CHUNK["cpu"],
                    compile: bool = False) -> StackedLlama:
        """The shape every member shares, read from their HF `LlamaConfig`."""
        return cls(
            layers=config.num_hidden_layers, heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads, head_dim=config.hidden_size // config.num_attention_heads,
            rms_eps=config.rms_norm_eps, rope_theta=config.rope_parameters["rope_theta"],
            loss_chunk=loss_chunk, compile=compile,
        )

    def member_losses(self, params: Params, batch: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of each member on its own packed samples: [K, B, L+1] -> [K].

        Differentiable; the head's gradients are taken with the loss, chunk by chunk (`HeadLoss`).
        """
        hidden, targets = self.hidden_and_targets(params, batch)
        weight = params["lm_head.weight"]
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return HeadLoss.apply(hidden, weight, targets, self.loss_chunk, self.compile)
        return head_losses(hidden, weight, targets, self.loss_chunk).mean(dim=1)

    @torch.no_grad()
    def token_losses(self, params: Params, batch: torch.Tensor) -> torch.Tensor:
        """Per-token next-token losses in fp32, for evaluation (no gradients): [K, B, L+1] -> [K, B, L]."""
        hidden, targets = self.hidden_and_targets(params, batch)
        return head_losses(hidden, params["lm_head.weight"], targets, self.loss_chunk).view(*batch.shape[:2], -1)

    def hidden_and_targets(self, params: Params, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[K, B, L+1] packed samples -> final hidden states [K, B*L, H] and next-token targets [K, B*L]."""
        k, b = batch.shape[:2]
        inputs, targets = split_inputs(batch.reshape(k * b, -1))
        return self.hidden(params, inputs.reshape(k, b, -1)), targets.reshape(k, -1)

    def logits(self, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        """[K, B, T] token ids -> [K, B, T, V] logits (all at once: for tests and small groups)."""
        return linear(self.hidden(params, input_ids), params["lm_head.weight"]).view(*input_ids.shape, -1)

    def hidden(self, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        """[K, B, T] token ids -> the final normalised hidden states [K, B*T, H] (compiled if asked)."""
        forward = compiled_decoder() if self.compile else StackedLlama.decoder
        return forward(self, params, input_ids)

    def decoder(self, params: Params, input_ids: torch.Tensor) -> torch.Tensor:
        """Embedding, every decoder layer and the final norm: [K, B, T] -> [K, B*T, H]."""
        k, b, t = input_ids.shape
        x = self.embed(params["model.embed_tokens.weight"], input_ids.reshape(k, b * t))
        cos, sin = self.rotary(t, x.device, x.dtype)
        for layer in range(self.layers):
            prefix = f"model.layers.{layer}."
            x = x + self.attention(params, prefix, rms_norm(x, params[prefix + "input_layernorm.weight"], self.rms_eps),
                                   b, cos, sin)
            x = x + self.mlp(params, prefix,
                             rms_norm(x, params[prefix + "post_attention_layernorm.weight"], self.rms_eps))
        return rms_norm(x, params["model.norm.weight"], self.rms_eps)

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


@functools.cache
def compiled_decoder() -> Callable[..., torch.Tensor]:
    """`StackedLlama.decoder` through `torch.compile`, built once per process (shapes fixed per group)."""
    return torch.compile(StackedLlama.decoder, dynamic=False)


# ---- the loss, a chunk of logits at a time -----------------------------------------------------------


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matrix product on `tensor` runs in here: autocast's where it is on, else the tensor's."""
    kind = tensor.device.type
    on = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)  # not on "meta" (the planner)
    return torch.get_autocast_dtype(kind) if on else tensor.dtype


def chunks(members: int, tokens: int, vocab: int, budget: int) -> Iterator[tuple[slice, list[slice]]]:
    """Split [members, tokens, vocab] logits into pieces of at most `budget` elements (one token row
    at least): whole members together while they fit, else one member and a run of its tokens."""
    if tokens * vocab <= budget:
        step = budget // (tokens * vocab)
        for start in range(0, members, step):
            yield slice(start, min(start + step, members)), [slice(0, tokens)]
        return
    step = max(budget // vocab, 1)
    token_slices = [slice(start, min(start + step, tokens)) for start in range(0, tokens, step)]
    for member in range(members):
        yield slice(member, member + 1), token_slices


def head_losses(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, budget: int) -> torch.Tensor:
    """Each token's next-token loss in fp32 from final hidden states [K, N, H], head [K, V, H] and
    targets [K, N] -> [K, N], the output projection and cross-entropy a chunk at a time."""
    dtype, losses = compute_dtype(hidden), torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
    for members, token_slices in chunks(*targets.shape, weight.shape[1], budget):
        head = weight[members].to(dtype).transpose(1, 2)
        for tokens in token_slices:
            logits = torch.bmm(hidden[members, tokens].to(dtype), head).float()
            losses[members, tokens] = F.cross_entropy(logits.flatten(0, 1), targets[members, tokens].flatten(),
                                                      reduction="none").view(logits.shape[:2])
    return losses


class HeadLoss(torch.autograd.Function):
    """Each member's mean next-token loss [K] from final hidden states, with the gradients of the
    hidden states and of the head taken in the same pass, chunk by chunk (fused linear cross-entropy).

    The gradient of a member's mean loss with respect to its logits is (softmax - one-hot) / N: the
    products take softmax - one-hot, and the 1/N is applied to their results (a pass over [K, N, H]
    and [K, V, H] instead of over the logits); the backward pass only scales what the forward pass
    computed by each member's incoming gradient. In the dtypes of autograd through `logits` and
    `F.cross_entropy`: the products in the matmul dtype (autocast's), the softmax in fp32.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, budget: int,
                compiled: bool = False) -> torch.Tensor:
        """[K, N, H], [K, V, H], [K, N] -> [K] mean losses (fp32); the gradients are kept for `backward`.
        `compiled` runs each chunk's softmax and gradient through `torch.compile` (one fused pass)."""
        dtype, tokens_per_member = compute_dtype(hidden), targets.shape[1]
        losses = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
        grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight)
        loss_and_grad = compiled_softmax_loss() if compiled else softmax_loss
        for members, token_slices in chunks(*targets.shape, weight.shape[1], budget):
            head = weight[members].to(dtype)
            for tokens in token_slices:
                inputs = hidden[members, tokens].to(dtype)
                losses[members, tokens], grad_logits = loss_and_grad(torch.bmm(inputs, head.transpose(1, 2)),
                                                                     targets[members, tokens])
                grad_hidden[members, tokens] = torch.bmm(grad_logits, head)
                grad_weight[members].add_(torch.bmm(grad_logits.transpose(1, 2), inputs))
        ctx.save_for_backward(grad_hidden.div_(tokens_per_member), grad_weight.div_(tokens_per_member))
        return losses.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        """Scale each member's saved gradients by its incoming gradient (in place: they are used once)."""
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_losses.view(-1, 1, 1)
        return (grad_hidden.mul_(scale.to(grad_hidden.dtype)), grad_weight.mul_(scale.to(grad_weight.dtype)),
                None, None, None)


def softmax_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token losses (fp32) of a chunk of logits [M, T, V], and the gradient of their sum with
    respect to the logits, softmax - one-hot, in the logits' dtype. Three passes over the logits
    in eager mode (log-softmax in fp32 straight from them, exp, the cast), fused by `torch.compile`."""
    log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
    index = targets.unsqueeze(-1)
    losses = -log_probs.gather(-1, index).squeeze(-1)
    probs = log_probs.exp_()
    probs.scatter_add_(-1, index, torch.full(index.shape, -1.0, device=probs.device))
    return losses, probs.to(logits.dtype)


@functools.cache
def compiled_softmax_loss() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`softmax_loss` through `torch.compile`: the chunk's passes over its logits fused (fixed shapes)."""
    return torch.compile(softmax_loss, dynamic=False)
