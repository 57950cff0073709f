"""One model under DeepSpeed: the target run (train.py) and a proxy trained on its own.

`train` plans the run (every bad input fails before a process group exists), decides whether
it is finished, resumes or starts (`decide_start`), builds the model and the DeepSpeed engine
(`train.engine`, the only module that imports DeepSpeed), and hands an `EngineTrainee` to the
training loop (`train.loop.drive`). A run directory gets, besides the loop's `metrics.jsonl`
and `result.json`: `run.json` (resolved settings and versions, when training starts),
`checkpoints/` (DeepSpeed's, `step########/` each with `complete.json`) and `hf/` (the final
model and tokenizer as a Hugging Face directory).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from regmix_ds.core.config import TrainConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import write_json_atomic
from regmix_ds.train import engine
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
from regmix_ds.train.utilization import PRECISIONS, Utilization, measure_matmul_peak


def decide_start(plan: RunPlan) -> str:
    """'done', 'resume' or 'fresh', from what the run directory already holds; refuse to clobber a run."""
    run, auto = plan.run, plan.config.resume == "auto"
    if run.is_done():
        if auto:
            return "done"
        raise RegmixError("--out", f"{run.path} already holds a finished run (result.json); choose another directory")
    if engine.newest_checkpoint(run.checkpoints) is not None:
        if auto:
            return "resume"
        raise RegmixError("--out", f"{run.path} holds checkpoints of an earlier run; pass --resume auto to continue it")
    return "fresh"


# ---- one step, one evaluation ------------------------------------------------------------------


def forward_loss(ds_engine: Any, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The engine model's next-token loss on packed samples [B, L+1] (`reduction` as in cross_entropy)."""
    inputs, targets = models.split_inputs(batch.to(ds_engine.device))
    logits = ds_engine(input_ids=inputs, use_cache=False).logits
    return models.next_token_loss(logits, targets, reduction)


def engine_step(ds_engine: Any, batches: list[torch.Tensor], lr: float) -> tuple[float, float | None]:
    """One optimizer step over this rank's micro-batches: (mean local loss, global grad norm)."""
    engine.set_learning_rate(ds_engine, lr)
    losses, measured = [], None
    for index, batch in enumerate(batches):
        loss = forward_loss(ds_engine, batch)
        ds_engine.backward(loss)
        if index == len(batches) - 1:
            measured = engine.gradient_norm_before_step(ds_engine)
        ds_engine.step()
        losses.append(loss.item())
    return sum(losses) / len(losses), engine.reported_gradient_norm(ds_engine, measured)


def rank_share(samples: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s samples and their weights, padded so every rank runs as many forwards.

    ZeRO-3 gathers parameters inside each forward, so all ranks must take part in every one;
    a rank short of samples repeats its first one with weight 0.
    """
    mine = samples[rank::world]
    size = math.ceil(len(samples) / world)
    weights = torch.zeros(size, dtype=torch.float64)
    weights[: len(mine)] = 1.0
    filler = samples[:1].expand(size - len(mine), -1)
    return torch.cat([mine, filler]), weights


def weighted_loss_sum(ds_engine: Any, samples: torch.Tensor, weights: torch.Tensor, micro: int) -> float:
    """Sum of the token losses of `samples`, each sample's scaled by its weight (1, or 0 for padding)."""
    total = 0.0
    for start in range(0, len(samples), micro):
        batch = samples[start : start + micro]
        per_token = forward_loss(ds_engine, batch, reduction="none").double().view(len(batch), -1)
        total += float(per_token.sum(dim=1) @ weights[start : start + micro])
    return total


@torch.no_grad()
def evaluate(ds_engine: Any, sets: Mapping[str, torch.Tensor], micro: int, rank: int, world: int) -> dict[str, float]:
    """Mean next-token loss on each fixed validation set, over all ranks."""
    ds_engine.eval()
    sums = [weighted_loss_sum(ds_engine, *rank_share(samples, rank, world), micro) for samples in sets.values()]
    ds_engine.train()
    totals = engine.all_reduce_sum(sums)
    return {name: total / sets[name][:, 1:].numel() for name, total in zip(sets, totals)}


# ---- the trainee ---------------------------------------------------------------------------------


@dataclass
class EngineTrainee:
    """One member trained by a DeepSpeed engine, on every rank of the job."""

    members: list[Member]
    utilization: Utilization
    ds_engine: Any
    dist: engine.DistEnv
    valid_sets: dict[str, torch.Tensor]
    stop: StopRequest
    hf_config: Any
    params: Mapping[str, int]

    @property
    def member(self) -> Member:
        return self.members[0]

    def train_step(self) -> StepOutcome:
        """One DeepSpeed optimizer step: the loss averaged over ranks, a stop signal on any rank seen by all."""
        plan = self.member.plan
        lr = learning_rate(self.member.progress.step, plan)
        local_loss, grad_norm = engine_step(self.ds_engine, self.member.next_batches(), lr)
        # The stop flag travels with the loss: every rank learns of a signal at the same step.
        loss_sum, stop_votes = engine.all_reduce_sum([local_loss, self.stop.flag])
        return StepOutcome([loss_sum / self.dist.world_size], [grad_norm], [lr], stop=stop_votes > 0)

    def evaluate(self) -> list[dict[str, float]]:
        """The member's mean loss on each validation set, over all ranks."""
        plan = self.member.plan
        return [evaluate(self.ds_engine, self.valid_sets, plan.batch.micro, self.dist.rank, self.dist.world_size)]

    def save(self) -> None:
        """A DeepSpeed checkpoint with the member's client state, saved on every rank; the main rank prints it."""
        member = self.member
        path = engine.save_checkpoint(
            self.ds_engine, member.plan.run.checkpoints, member.progress.step,
            member.progress.client_state(member.sampler, member.plan), self.dist.is_main,
            member.plan.config.keep_checkpoints,
        )
        if self.dist.is_main:
            print(f"checkpoint {path}", flush=True)

    def finish(self, valid_losses: list[dict[str, float]]) -> None:
        """Export the model, then write result.json last (its presence means the run is complete)."""
        state = engine.full_state_dict(self.ds_engine, self.dist.is_main)
        member = self.member
        if self.dist.is_main:
            models.save_hf_model(self.hf_config, state, member.plan.manifest.tokenizer_path, member.plan.run.hf)
            member.write_result(member.result(valid_losses[0], self.params, self.utilization,
                                              zero_stage=member.plan.deepspeed.zero_stage))
        engine.barrier()


def measure_utilization(plan: RunPlan, hf_config: Any, world_size: int) -> Utilization:
    """Model FLOPs per token, and the matmul peak of this rank's device times the ranks.

    Every rank probes at the same moment, so ranks sharing a machine's cores see the same
    contention they will see in training.
    """
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    peak = measure_matmul_peak(device, PRECISIONS[plan.deepspeed.precision])
    return Utilization(models.training_flops_per_token(hf_config, plan.config.seq_len), peak * world_size)


def run_record(plan: RunPlan, dist_env: engine.DistEnv, settings: dict, params: Mapping[str, int]) -> dict:
    """The resolved settings and software versions, kept beside the run."""
    return {
        "config": dataclasses.asdict(plan.config),
        "steps": plan.steps,
        "peak_lr": plan.peak_lr,
        "batch": dataclasses.asdict(plan.batch),
        "model": dataclasses.asdict(plan.shape),
        "params": dict(params),
        "mixture": plan.mixture.to_json(),
        "launcher": dataclasses.asdict(dist_env),
        "deepspeed_config": settings,
        "versions": engine.versions(),
    }


def checked_plan(config: TrainConfig, world_size: int) -> RunPlan:
    """The run's plan once every input and DeepSpeed setting is checked; writes nothing."""
    plan = plan_run(config, world_size)
    engine.check_settings(plan.deepspeed)
    return plan


def train(config: TrainConfig, dist_env: engine.DistEnv, plan: RunPlan | None = None) -> int:
    """Run (or resume, or skip when finished) one training run; returns the process exit code.

    Everything that can reject the input runs before the process group starts, identically
    on every rank, so a bad flag ends every rank with exit 2 instead of leaving one waiting
    (`plan`: the caller's `checked_plan` of this config and world, when it already checked).
    """
    plan = plan or checked_plan(config, dist_env.world_size)
    start = decide_start(plan)
    if start == "done":
        if dist_env.is_main:
            print(f"{plan.run.result} exists: run already finished", flush=True)
        return 0
    dataset, sampler = training_data(plan, dist_env.rank)
    valid_sets = validation_sets(plan)
    hf_config = models.llama_config(
        plan.shape, plan.manifest.vocab_size, config.seq_len, plan.manifest.tokenizer.get("eos_token_id")
    )
    model = models.build_model(hf_config, config.seed)
    params = models.parameter_counts(model.named_parameters())
    stop = StopRequest()
    utilization = measure_utilization(plan, hf_config, dist_env.world_size)

    engine.init_distributed(dist_env)
    settings = plan.deepspeed.for_world(dist_env.world_size, plan.peak_lr)
    ds_engine = engine.initialize(model, models.weight_decay_groups(model, plan.deepspeed.weight_decay), settings)
    if dist_env.is_main:
        plan.run.path.mkdir(parents=True, exist_ok=True)
    progress, directory = Progress(), None
    if start == "resume":
        directory = engine.newest_checkpoint(plan.run.checkpoints)
        progress = resume_progress(engine.load_checkpoint(ds_engine, directory), plan, sampler, directory)
    log = ProgressLog("train", plan, initial=progress.step, enabled=dist_env.is_main)
    if directory is not None:
        log.say(f"resumed from {directory} at step {progress.step}")
    metrics = MetricsFile(plan.run, dist_env.is_main)
    metrics.restart_at(progress.step)
    if dist_env.is_main:
        write_json_atomic(plan.run.run_record, run_record(plan, dist_env, settings, params))
    log.say(
        f"{config.preset or config.model_config}: {params['total']:,} parameters "
        f"({params['non_embedding']:,} without embeddings); {plan.steps} steps of {plan.tokens_per_step:,} tokens; "
        f"ZeRO {plan.deepspeed.zero_stage}, {dist_env.world_size} rank(s) via {dist_env.launcher}"
    )
    member = Member(plan, sampler, batch_loader(dataset, sampler, plan.batch.micro), metrics, progress)
    trainee = EngineTrainee([member], utilization, ds_engine, dist_env, valid_sets, stop, hf_config, params)
    if not drive(trainee, log):
        return EXIT_REQUEUE
    if dist_env.is_main:
        print(f"done: {plan.run.result}", flush=True)
    return 0
