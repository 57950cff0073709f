"""Train a group of proxies in one process: K mixtures, one stacked model (`regmix-ds proxy --indices`).

RegMix proxies are many copies of one small model that differ only in their data. Trained one
per process, each matrix product is too small to fill the device; trained as a group, the K
members' weights are stacked (`stacked.StackedLlama`) and every layer of all K is one batched
product. The loop is `train.loop`'s, with `GroupTrainee` taking the steps. Nothing else is
shared: each member is an ordinary proxy run with its own mixture, blended-sampler stream,
AdamW moments, learning-rate schedule, evaluation, checkpoint, `metrics.jsonl` and
`result.json` in its own run directory, in the format `train.single` writes (plus
`group_size`), so `collect` and `fit` cannot tell the difference.

Same numbers as separate runs: member k starts from the weights `model.build_model` gives its
seed, sees the batches its own sampler gives, and takes the step DeepSpeed takes with the
`torch_adam` AdamW of the proxy's DeepSpeed config: the loss scaled by the accumulation steps,
the gradient clipped by its own global norm, then AdamW with decoupled weight decay on matrices
only. ZeRO and data parallelism do not apply (one process, one device); the config's
micro-batch, accumulation, optimizer, clipping and precision do.

Checkpoints: every `save_interval` steps and on SIGTERM/SIGUSR1, each member writes
`checkpoints/group-step########.pt` (weights, AdamW moments, sampler, counters: tensors and
plain values only, read back with `torch.load(weights_only=True)`), atomically. A group killed
between two members' saves resumes members at different steps; they train as sub-groups, one
after another, each in lockstep, so every member still repeats its uninterrupted run.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from regmix_ds.core import faults
from regmix_ds.core.config import TrainConfig
from regmix_ds.core.dsconfig import DeepSpeedSettings
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import atomic_output, entries
from regmix_ds.core.layout import RunDir
from regmix_ds.train import model as models
from regmix_ds.train.loop import (
    EXIT_REQUEUE,
    Member,
    MetricsFile,
    Progress,
    ProgressLog,
    StepOutcome,
    StopRequest,
    drive,
    resume_progress,
)
from regmix_ds.train.plan import RunPlan, batch_loader, learning_rate, plan_run, training_data, validation_sets
from regmix_ds.train.stacked import LOSS_CHUNK, StackedLlama, is_matrix, member_state_dict
from regmix_ds.train.utilization import PRECISIONS, Utilization, measure_matmul_peak

CHECKPOINT = re.compile(r"group-step(\d{8})\.pt")
STATE_KEYS = ("params", "exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class AdamW:
    """The optimizer step of a DeepSpeed config with a torch AdamW, for stacked weights."""

    betas: tuple[float, float]
    eps: float
    weight_decay: float
    clip: float

    @classmethod
    def from_deepspeed(cls, deepspeed: DeepSpeedSettings) -> AdamW:
        """The optimizer block (betas, eps, weight decay) and gradient clipping of a DeepSpeed config."""
        params = deepspeed.optimizer_params
        if deepspeed.settings["optimizer"]["type"] == "Adam" and not params.get("adam_w_mode", True):
            raise RegmixError(deepspeed.path, "a proxy group trains with AdamW; remove adam_w_mode: false")
        beta1, beta2 = params.get("betas", (0.9, 0.999))
        return cls((float(beta1), float(beta2)), float(params.get("eps", 1e-8)), deepspeed.weight_decay,
                   deepspeed.gradient_clipping)

    def clip_gradients(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Scale each member's gradients to global norm <= clip; returns the norms before [K].

        In DeepSpeed's order of operations (`deepspeed.runtime.utils.clip_grad_norm_`): the norm
        of each tensor, then the norm of those, then the factor min(1, clip / (norm + 1e-6)).
        """
        per_tensor = torch.stack([g.detach().float().flatten(1).norm(dim=1) for g in grads])
        norms = per_tensor.pow(2).sum(dim=0).pow(0.5)
        if self.clip > 0:
            scale = torch.clamp(self.clip / (norms + 1e-6), max=1.0)
            for grad in grads:
                grad.mul_(scale.view(-1, *[1] * (grad.ndim - 1)).to(grad.dtype))
        return norms

    def step(self, state: GroupState, lrs: torch.Tensor, step: int) -> None:
        """One AdamW step (step counts from 1) of every member, each at its own learning rate.

        torch.optim.AdamW's arithmetic, in its order, with the scalar factors computed in float64
        as it computes them in Python, so a member rounds as a single run does. The update is built
        in one scratch tensor (in place, the same operations): one temporary of the largest weight,
        not three, at the group's peak memory.
        """
        beta1, beta2 = self.betas
        correction1, correction2 = 1 - beta1**step, (1 - beta2**step) ** 0.5
        lrs = lrs.double()
        decay, step_size = (1 - lrs * self.weight_decay).float(), (lrs / correction1).float()
        for name, param in state.params.items():
            shape = (-1, *[1] * (param.ndim - 1))
            grad, exp_avg, exp_avg_sq = param.grad, state.exp_avg[name], state.exp_avg_sq[name]
            if is_matrix(param):
                param.data.mul_(decay.view(shape))
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            update = exp_avg_sq.sqrt().div_(correction2).add_(self.eps)  # the denominator, then the update
            torch.div(exp_avg, update, out=update)
            param.data.sub_(update.mul_(step_size.view(shape)))
            param.grad = None


@dataclass
class GroupState:
    """The stacked weights and AdamW moments of the members training together."""

    params: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]

    @classmethod
    def stack(cls, members: Sequence[Mapping[str, Mapping[str, torch.Tensor]]], device: torch.device) -> GroupState:
        """Stack the members' `{"params", "exp_avg", "exp_avg_sq"}` dicts on `device` (member by member:
        the host never holds the whole stack)."""
        def stacked(key: str) -> dict[str, torch.Tensor]:
            return {name: stack_on(device, [m[key][name] for m in members]) for name in members[0][key]}

        params = {name: tensor.requires_grad_() for name, tensor in stacked("params").items()}
        return cls(params, stacked("exp_avg"), stacked("exp_avg_sq"))

    def member(self, k: int) -> dict[str, dict[str, torch.Tensor]]:
        """Member k's weights and moments on the CPU (what its checkpoint holds)."""
        return {key: {n: t.cpu() for n, t in member_state_dict(getattr(self, key), k).items()} for key in STATE_KEYS}


def stack_on(device: torch.device, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """`torch.stack(tensors)` built on `device` one member at a time, with no other copy of the stack."""
    stacked = torch.empty((len(tensors), *tensors[0].shape), dtype=tensors[0].dtype, device=device)
    for k, tensor in enumerate(tensors):
        stacked[k].copy_(tensor)
    return stacked


# ---- planning ---------------------------------------------------------------------------------


def plan_group(configs: Sequence[TrainConfig]) -> list[RunPlan]:
    """Plan every member (all bad input fails here) and check they can train in lockstep."""
    plans = [plan_run(config, world_size=1) for config in configs]
    reference = without_mixture(plans[0].signature())
    for plan in plans[1:]:
        differing = sorted(k for k, v in without_mixture(plan.signature()).items() if reference[k] != v)
        if differing:
            raise RegmixError(plan.run.path, f"cannot train in one group with {plans[0].run.path}: "
                                             f"{', '.join(differing)} differ")
    paths = [plan.run.path.resolve() for plan in plans]
    if len(set(paths)) != len(paths):
        raise RegmixError("--indices", "two members of the group share a run directory")
    if plans[0].deepspeed.precision == "fp16":  # fp16 needs a loss scaler the group step does not have
        raise RegmixError(plans[0].deepspeed.path, "a proxy group trains in fp32 or bf16, not fp16")
    AdamW.from_deepspeed(plans[0].deepspeed)
    return plans


def without_mixture(signature: Mapping[str, Any]) -> dict[str, Any]:
    """A run signature minus its mixture hash: what every member of one group must share."""
    return {key: value for key, value in signature.items() if key != "mixture_hash"}


# ---- checkpoints ------------------------------------------------------------------------------


def checkpoint_path(run: RunDir, step: int) -> Path:
    """Where `run` keeps its group checkpoint of `step` (zero-padded, so names sort by step)."""
    return run.checkpoints / f"group-step{step:08d}.pt"


def newest_group_checkpoint(run: RunDir) -> Path | None:
    """The run's group checkpoint of the highest step, or None if it has none."""
    found = sorted(p for p in entries(run.checkpoints) if CHECKPOINT.fullmatch(p.name))
    return found[-1] if found else None


def save_member(member: Member, state: GroupState, k: int) -> None:
    """Write member k's checkpoint atomically, then drop its older ones."""
    path = checkpoint_path(member.plan.run, member.progress.step)
    payload = {**state.member(k), "client_state": member.progress.client_state(member.sampler, member.plan)}
    with atomic_output(path, "wb") as handle:
        torch.save(payload, handle)
    faults.reached("member checkpoint")
    for old in entries(path.parent):
        if CHECKPOINT.fullmatch(old.name) and old.name < path.name:
            old.unlink(missing_ok=True)


def load_member(path: Path) -> dict:
    """A member checkpoint: tensors and plain values only (no pickled objects are ever run)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or unsafe file
        raise RegmixError(path, "unreadable group checkpoint "
                                f"({type(err).__name__}: {(str(err).splitlines() or [''])[0]})") from None
    if not isinstance(payload, dict) or set(payload) != {*STATE_KEYS, "client_state"}:
        raise RegmixError(path, "not a group checkpoint (expected params, exp_avg, exp_avg_sq, client_state)")
    return payload


def fresh_start(hf_config: Any, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """A new member: the weights `model.build_model` gives `seed` (as a single run starts), zero AdamW moments."""
    weights = models.build_model(hf_config, seed).state_dict()
    return {"params": weights, "exp_avg": {n: torch.zeros_like(t) for n, t in weights.items()},
            "exp_avg_sq": {n: torch.zeros_like(t) for n, t in weights.items()}}


# ---- one step ---------------------------------------------------------------------------------


def stacked_step(model: StackedLlama, adamw: AdamW, state: GroupState, batches: torch.Tensor, lrs: torch.Tensor,
                 step: int, dtype: torch.dtype = torch.float32) -> tuple[list[float], list[float]]:
    """One optimizer step (number `step`, from 1) of every member on `batches` [accumulation, K, micro, L+1].

    Returns each member's mean loss and its gradient norm before clipping. As in DeepSpeed, each
    micro-batch's loss is divided by the accumulation steps before its backward.
    """
    accumulation, device = len(batches), batches.device
    losses = torch.zeros(batches.shape[1], dtype=torch.float64, device=device)
    for batch in batches:
        with autocast(device, dtype):
            member_losses = model.member_losses(state.params, batch)
        (member_losses.sum() / accumulation).backward()
        losses += member_losses.detach().double()
    norms = adamw.clip_gradients([p.grad for p in state.params.values()])
    adamw.step(state, lrs, step)
    return (losses / accumulation).tolist(), norms.tolist()


def autocast(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 configs compute in that precision on a GPU; weights and AdamW stay fp32."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


# ---- the run ---------------------------------------------------------------------------------


@dataclass
class Group:
    """What every member of a group shares: the model's shape, optimizer rule, device and eval sets."""

    hf_config: Any
    stacked: StackedLlama
    adamw: AdamW
    device: torch.device
    dtype: torch.dtype
    valid_sets: dict[str, torch.Tensor]
    stop: StopRequest
    save_model: bool
    utilization: Utilization
    fresh_starts: dict[int, dict] = field(default_factory=dict)
    """`fresh_start` per seed, built once: new members share it (stacking copies it)."""

    def member(self, plan: RunPlan) -> tuple[Member, dict[str, dict[str, torch.Tensor]]]:
        """A member ready to train and the weights and AdamW moments it starts from: fresh, or the
        state of its newest group checkpoint (writes nothing)."""
        dataset, sampler = training_data(plan, rank=0)
        checkpoint = newest_group_checkpoint(plan.run)
        if checkpoint is None:
            seed = plan.config.seed
            if seed not in self.fresh_starts:
                self.fresh_starts[seed] = fresh_start(self.hf_config, seed)
            start, progress = self.fresh_starts[seed], Progress()
        else:
            payload = load_member(checkpoint)
            progress = resume_progress(payload["client_state"], plan, sampler, checkpoint)
            start = {key: payload[key] for key in STATE_KEYS}
            print(f"{plan.run.path}: resumed from {checkpoint} at step {progress.step}", flush=True)
        member = Member(plan, sampler, batch_loader(dataset, sampler, plan.batch.micro),
                        MetricsFile(plan.run, is_main=True), progress)
        return member, start


@dataclass
class GroupTrainee:
    """Members at the same step, their weights and AdamW moments stacked: one model to the loop."""

    group: Group
    members: list[Member]
    state: GroupState

    @property
    def utilization(self) -> Utilization:
        return self.group.utilization

    def train_step(self) -> StepOutcome:
        """One optimizer step of every member at once, each on its own batches at its own learning rate."""
        group, step = self.group, self.members[0].progress.step
        lrs = [learning_rate(step, m.plan) for m in self.members]
        batches = torch.stack([torch.stack(m.next_batches()) for m in self.members], dim=1)
        losses, norms = stacked_step(group.stacked, group.adamw, self.state, batches.to(group.device),
                                     torch.tensor(lrs, dtype=torch.float64, device=group.device), step + 1, group.dtype)
        return StepOutcome(losses, norms, lrs, stop=group.stop.received is not None)

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        """Each member's mean loss on every validation set (the same fixed samples for all)."""
        group, size = self.group, len(self.members)
        micro = self.members[0].plan.batch.micro
        results: list[dict[str, float]] = [{} for _ in self.members]
        for name, samples in group.valid_sets.items():
            total = torch.zeros(size, dtype=torch.float64)
            for start in range(0, len(samples), micro):
                batch = samples[start : start + micro].to(group.device).expand(size, -1, -1)
                with autocast(group.device, group.dtype):
                    total += group.stacked.token_losses(self.state.params, batch).double().sum(dim=(1, 2)).cpu()
            for k in range(size):
                results[k][name] = float(total[k]) / samples[:, 1:].numel()
        return results

    def save(self) -> None:
        """Checkpoint every member into its own run directory."""
        for k, member in enumerate(self.members):
            save_member(member, self.state, k)

    def finish(self, valid_losses: list[dict[str, float]]) -> None:
        """Export models if asked, then write each result.json last."""
        params = models.parameter_counts((name, tensor[0]) for name, tensor in self.state.params.items())
        for k, (member, valid_loss) in enumerate(zip(self.members, valid_losses)):
            run = member.plan.run
            if self.group.save_model:
                models.save_hf_model(self.group.hf_config, member_state_dict(self.state.params, k),
                                     member.plan.manifest.tokenizer_path, run.hf)
            member.write_result(member.result(valid_loss, params, self.utilization, zero_stage=None,
                                              group_size=len(self.members)))
            print(f"done: {run.result}", flush=True)
        progress = self.members[0].progress
        tokens_per_s = len(self.members) * progress.step * self.members[0].plan.tokens_per_step / progress.train_seconds
        print(f"group of {len(self.members)}: {tokens_per_s:,.0f} training tokens/s in all, "
              f"MFU {self.utilization.mfu(tokens_per_s):.1%} of a measured "
              f"{self.utilization.peak_flops_per_s / 1e9:,.1f} GFLOP/s", flush=True)


def train_group(configs: Sequence[TrainConfig], save_model: bool = False, compile: bool = False) -> int:
    """Train (or resume, or skip when finished) the proxies of `configs` as one group.

    Returns 0 when every member is done, or `EXIT_REQUEUE` after a stop signal (each member
    checkpointed). `save_model` also writes each member's `hf/` model directory; `compile` runs the
    decoder layers through `torch.compile` (`proxy.compile`). Members whose
    checkpoints are at different steps train as sub-groups, one after another, each in lockstep.
    """
    plans = plan_group(configs)
    todo = [plan for plan in plans if not plan.run.is_done()]
    print(f"group of {len(plans)}: {len(plans) - len(todo)} already done, training {len(todo)}", flush=True)
    if not todo:
        return 0
    first = todo[0]
    hf_config = models.llama_config(first.shape, first.manifest.vocab_size, first.config.seq_len,
                                    first.manifest.tokenizer.get("eos_token_id"))
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    # On a CPU a bf16/fp16 config still trains in fp32 (CPU autocast would be slower, not faster).
    dtype = PRECISIONS[first.deepspeed.precision] if device.type == "cuda" else torch.float32
    group = Group(
        hf_config=hf_config, stacked=StackedLlama.from_config(hf_config, LOSS_CHUNK[device.type], compile),
        adamw=AdamW.from_deepspeed(first.deepspeed),
        device=device, dtype=dtype, valid_sets=validation_sets(first), stop=StopRequest(), save_model=save_model,
        utilization=Utilization(models.training_flops_per_token(hf_config, first.config.seq_len),
                                measure_matmul_peak(device, dtype)),
    )
    members = [group.member(plan) for plan in todo]
    for member, _ in members:  # only now that every checkpoint has been read and accepted
        member.plan.run.path.mkdir(parents=True, exist_ok=True)
        member.metrics.restart_at(member.progress.step)
    for step in sorted({m.progress.step for m, _ in members}):
        at_step = [(m, start) for m, start in members if m.progress.step == step]
        state = GroupState.stack([start for _, start in at_step], device)
        trainee = GroupTrainee(group, [m for m, _ in at_step], state)
        log = ProgressLog(f"group of {len(at_step)}", first, initial=step)
        if not drive(trainee, log):
            return EXIT_REQUEUE
    return 0
