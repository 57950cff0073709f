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
