"""The stacked model computes, for every member, what the Hugging Face Llama with its weights computes."""
import pytest
import torch

from regmix_ds.core.config import MODEL_PRESETS, ModelShape
from regmix_ds.train import model as models
from regmix_ds.train.stacked import StackedLlama, member_state_dict, stack_state_dicts

SHAPES = {
    "tiny": MODEL_PRESETS["tiny"],
    "grouped_kv": ModelShape(layers=2, heads=4, hidden=32, ffn=64, kv_heads=2, rope_theta=500.0),
}


def members_and_batch(shape, k=3, vocab=300, seq_len=24, batch=2):
    config = models.llama_config(shape, vocab, seq_len)
    hf_models = [models.build_model(config, seed) for seed in range(k)]
    tokens = torch.randint(0, vocab, (k, batch, seq_len + 1), generator=torch.Generator().manual_seed(5))
    return config, hf_models, tokens


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_each_member_matches_its_hf_model_forward_and_backward(shape):
    config, hf_models, tokens = members_and_batch(shape)
    params = {name: t.requires_grad_() for name, t in stack_state_dicts([m.state_dict() for m in hf_models]).items()}
    stacked = StackedLlama.from_config(config)
    logits = stacked.logits(params, tokens[:, :, :-1])
    losses = stacked.member_losses(params, tokens)
    losses.sum().backward()
    for k, hf in enumerate(hf_models):
        inputs, targets = models.split_inputs(tokens[k])
        hf_logits = hf(input_ids=inputs, use_cache=False).logits
        torch.testing.assert_close(logits[k], hf_logits, atol=2e-5, rtol=1e-5)
        hf_loss = models.next_token_loss(hf_logits, targets)
        assert losses[k].item() == pytest.approx(hf_loss.item(), abs=1e-6)
        hf_loss.backward()
        for name, param in hf.named_parameters():
            torch.testing.assert_close(params[name].grad[k], param.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_members_do_not_leak_into_each_other():
    config, hf_models, tokens = members_and_batch(SHAPES["tiny"])
    params = {name: t.requires_grad_() for name, t in stack_state_dicts([m.state_dict() for m in hf_models]).items()}
    StackedLlama.from_config(config).member_losses(params, tokens)[1].backward()
    for name, param in params.items():
        assert param.grad[0].abs().sum() == 0 and param.grad[2].abs().sum() == 0, name
        assert param.grad[1].abs().sum() > 0, name


def test_members_round_trip_through_the_stack():
    _, hf_models, _ = members_and_batch(SHAPES["tiny"])
    states = [m.state_dict() for m in hf_models]
    stacked = stack_state_dicts(states)
    assert all(t.shape[0] == 3 for t in stacked.values())
    for k, state in enumerate(states):
        back = member_state_dict(stacked, k)
        assert back.keys() == state.keys()
        assert all(torch.equal(back[n], state[n]) for n in state)


def unchunked_losses(stacked, params, tokens):
    """The loss as it was before chunking: all [K, B, T, V] logits at once, autograd through cross_entropy."""
    inputs, targets = models.split_inputs(tokens.reshape(-1, tokens.shape[-1]))
    logits = stacked.logits(params, inputs.view(*tokens.shape[:2], -1))
    per_token = models.next_token_loss(logits.reshape(-1, *logits.shape[2:]), targets, reduction="none")
    return per_token.view(tokens.shape[0], -1).mean(dim=1)


def losses_and_gradients(stacked, params, tokens, loss_fn, member_weights):
    for param in params.values():
        param.grad = None
    losses = loss_fn(stacked, params, tokens)
    (losses * member_weights).sum().backward()
    return losses.detach(), {name: param.grad.clone() for name, param in params.items()}


# Budgets (logits elements at once, vocabulary 300, 2 x 24 tokens a member): 7 tokens of one member
# (a ragged last piece), one member's 48 tokens, 2 members (of 3: a ragged last group), everything.
@pytest.mark.parametrize("budget", [7 * 300, 48 * 300, 2 * 48 * 300, 10**9], ids=["tokens", "member", "members", "all"])
def test_the_chunked_loss_equals_the_whole_logits_loss_and_its_gradients(budget):
    config, hf_models, tokens = members_and_batch(SHAPES["grouped_kv"])
    params = {name: t.requires_grad_() for name, t in stack_state_dicts([m.state_dict() for m in hf_models]).items()}
    whole, chunked = StackedLlama.from_config(config), StackedLlama.from_config(config, loss_chunk=budget)
    weights = torch.tensor([0.5, 1.0, 2.0])  # each member's incoming gradient differs, as backward allows
    ref_losses, ref_grads = losses_and_gradients(whole, params, tokens, unchunked_losses, weights)
    losses, grads = losses_and_gradients(chunked, params, tokens, StackedLlama.member_losses, weights)
    torch.testing.assert_close(losses, ref_losses, atol=1e-6, rtol=1e-6)
    for name in params:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-7, rtol=1e-5, msg=name)
    with torch.no_grad():
        per_token = chunked.token_losses(params, tokens)
        torch.testing.assert_close(per_token.mean(dim=(1, 2)), ref_losses, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(chunked.member_losses(params, tokens), ref_losses, atol=1e-6, rtol=1e-6)


def test_the_chunked_loss_under_bf16_autocast_matches_autograd_under_autocast():
    config, hf_models, tokens = members_and_batch(SHAPES["tiny"])
    params = {name: t.requires_grad_() for name, t in stack_state_dicts([m.state_dict() for m in hf_models]).items()}
    weights = torch.ones(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_losses, ref_grads = losses_and_gradients(StackedLlama.from_config(config), params, tokens,
                                                     unchunked_losses, weights)
        losses, grads = losses_and_gradients(StackedLlama.from_config(config, loss_chunk=5 * 300), params, tokens,
                                             StackedLlama.member_losses, weights)
    torch.testing.assert_close(losses, ref_losses, atol=1e-3, rtol=1e-3)  # bf16 logits: same rounding, summed apart
    for name in params:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-3, rtol=2e-2, msg=name)


@pytest.mark.slow
def test_compiled_losses_and_gradients_equal_eager():
    """`proxy.compile`: the decoder and the loss's softmax through torch.compile (about 40 s to compile here)."""
    config, hf_models, tokens = members_and_batch(SHAPES["grouped_kv"])
    params = {name: t.requires_grad_() for name, t in stack_state_dicts([m.state_dict() for m in hf_models]).items()}
    weights = torch.tensor([0.5, 1.0, 2.0])
    eager = losses_and_gradients(StackedLlama.from_config(config, loss_chunk=48 * 300), params, tokens,
                                 StackedLlama.member_losses, weights)
    compiled = losses_and_gradients(StackedLlama.from_config(config, loss_chunk=48 * 300, compile=True), params,
                                    tokens, StackedLlama.member_losses, weights)
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-6, rtol=1e-6)
    for name in params:
        torch.testing.assert_close(compiled[1][name], eager[1][name], atol=1e-7, rtol=1e-5, msg=name)
