"""The one training loop: step, log, evaluate every N, checkpoint every N or on a signal, finish.

Two things train through it: one model under DeepSpeed (`train.single`: train.py, a proxy on
its own) and K stacked proxies in one process (`train.group`). They differ only in what a step,
an evaluation, a save and the finish do, which each provides as a `Trainee`; the schedule of
those calls, the per-run bookkeeping (`Member`: sample counter, step counter, clocks,
`metrics.jsonl`) and the progress output are written once, here.

Every run keeps, in its own run directory (`core.layout.RunDir`):

    metrics.jsonl   one line per step (step, loss, lr, grad_norm, tokens, tokens_per_s, mfu) and
                    a line with per-set `valid_loss` at every evaluation
    result.json     written last, atomically: its presence means the run is complete

Exit codes: 0 done, 2 bad input, 75 (`EXIT_REQUEUE`, EX_TEMPFAIL) stopped by SIGTERM or SIGUSR1
after a checkpoint: requeue me, and the same command resumes.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from regmix_ds.core import faults
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import write_json_atomic, write_text_atomic
from regmix_ds.core.layout import RunDir
from regmix_ds.core.progress import clock, interactive
from regmix_ds.data.blend import BlendedSampler
from regmix_ds.train.plan import RunPlan
from regmix_ds.train.utilization import Utilization

EXIT_REQUEUE = 75
"""EX_TEMPFAIL from sysexits.h: the run saved a checkpoint on a signal and wants to be requeued."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Set by SIGTERM/SIGUSR1 (Slurm's warning before a time limit); acted on at the next step boundary."""

    def __init__(self) -> None:
        self.received: int | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    @property
    def flag(self) -> float:
        """1.0 once a signal arrived: summed over ranks, so every rank stops at the same step."""
        return 0.0 if self.received is None else 1.0


@dataclass
class Progress:
    """What a checkpoint carries besides the weights and optimizer (the client state)."""

    step: int = 0
    train_seconds: float = 0.0
    """Time in training steps, over every segment of a resumed run (tokens_per_s divides by it)."""
    wall_seconds: float = 0.0
    """Time from the first step to the end, over every segment (not counting start-up or requeue waits)."""

    def client_state(self, sampler: BlendedSampler, plan: RunPlan) -> dict:
        """The checkpoint's client state: these counters, the sampler's position and the run's signature."""
        return {**dataclasses.asdict(self), "sampler": sampler.state_dict(), "signature": plan.signature()}


def resume_progress(client_state: Mapping[str, Any], plan: RunPlan, sampler: BlendedSampler, where: object) -> Progress:
    """Check a checkpoint belongs to this run, then restore the sampler and the counters."""
    saved = client_state.get("signature", {})
    differing = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in plan.signature().items() if saved.get(k) != v]
    if differing:
        raise RegmixError(where, f"checkpoint is from a different run ({'; '.join(differing)}); use another --out")
    sampler.load_state_dict(client_state["sampler"])
    return Progress(client_state["step"], client_state["train_seconds"], client_state["wall_seconds"])


def parse_metrics_line(line: str) -> dict | None:
    """A metrics.jsonl entry, or None for the torn last line a machine crash mid-append leaves."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


class MetricsFile:
    """A run's `metrics.jsonl`, appended to by the main rank only."""

    def __init__(self, run: RunDir, is_main: bool):
        self.path, self.is_main = run.metrics, is_main

    def record(self, entry: Mapping[str, Any]) -> None:
        """Append `entry` as one JSON line (on the main rank; elsewhere nothing)."""
        if self.is_main:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

    def restart_at(self, step: int) -> None:
        """Keep lines up to `step`: those a killed run wrote after its last checkpoint go."""
        if not self.is_main:
            return
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if (entry := parse_metrics_line(line)) is not None and entry["step"] <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))


@dataclass
class Member:
    """One run being trained: its plan, its data stream and its counters."""

    plan: RunPlan
    sampler: BlendedSampler
    loader: Iterator[torch.Tensor]
    metrics: MetricsFile
    progress: Progress

    def next_batches(self) -> list[torch.Tensor]:
        """This rank's micro-batches of the next step."""
        return [next(self.loader) for _ in range(self.plan.batch.accumulation)]

    def took_step(self, loss: float, lr: float, grad_norm: float | None, seconds: float, segment_start: float,
                  utilization: Utilization) -> None:
        """Count the step just taken (`seconds` long) and log it to metrics.jsonl."""
        self.sampler.advance(self.plan.batch.global_batch)
        self.progress.step += 1
        self.progress.train_seconds += seconds
        self.progress.wall_seconds = time.monotonic() - segment_start
        tokens_per_s = self.plan.tokens_per_step / seconds
        self.metrics.record({
            "step": self.progress.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": self.progress.step * self.plan.tokens_per_step, "tokens_per_s": tokens_per_s,
            "mfu": utilization.mfu(tokens_per_s),
        })

    def result(self, valid_loss: Mapping[str, float], params: Mapping[str, int], utilization: Utilization,
               **how_trained: Any) -> dict:
        """The run's result.json: mixture, validation losses, budget, speed, model and batch."""
        plan, progress = self.plan, self.progress
        tokens = progress.step * plan.tokens_per_step
        tokens_per_s = tokens / progress.train_seconds
        return {
            "mixture": dict(plan.mixture.weights),
            "mixture_hash": plan.mixture.content_hash(),
            "valid_loss": dict(valid_loss),
            "tokens": tokens,
            "steps": progress.step,
            "wall_seconds": progress.wall_seconds,
            "tokens_per_s": tokens_per_s,
            "mfu": utilization.mfu(tokens_per_s),
            "matmul_peak_flops_per_s": utilization.peak_flops_per_s,
            "seed": plan.config.seed,
            "preset": plan.config.preset,
            "model": dataclasses.asdict(plan.shape),
            "params": dict(params),
            "seq_len": plan.config.seq_len,
            "global_batch": plan.batch.global_batch,
            "world_size": plan.batch.world,
            **how_trained,
        }

    def write_result(self, record: Mapping[str, Any]) -> None:
        """Write result.json atomically: written last, its presence means the run is done."""
        write_json_atomic(self.plan.run.result, record)


@dataclass(frozen=True)
class StepOutcome:
    """What one optimizer step of every member gave: per member, and whether to stop now."""

    losses: Sequence[float]
    grad_norms: Sequence[float | None]
    lrs: Sequence[float]
    stop: bool
    """A stop signal arrived (on any rank): checkpoint and exit `EXIT_REQUEUE`."""


class Trainee(Protocol):
    """What the loop drives: the members and the four things that differ between trainers."""

    members: list[Member]
    utilization: Utilization

    def train_step(self) -> StepOutcome:
        """One optimizer step of every member, at the members' current step."""

    def evaluate(self) -> list[dict[str, float]]:
        """Each member's mean loss on every validation set."""

    def save(self) -> None:
        """Checkpoint every member (each in its own run directory)."""

    def finish(self, valid_losses: list[dict[str, float]]) -> None:
        """Export what is asked, then write each member's result.json last."""


def every(interval: int, step: int) -> bool:
    """Whether a periodic action (0: never) falls on `step`."""
    return interval > 0 and step % interval == 0


class ProgressLog:
    """Progress of a loop that reads well where it goes (on stderr, on the main rank only).

    In a terminal: one bar redrawn in place. Elsewhere (a Slurm log, a pipe): a plain line
    every `log_interval` steps or `log_seconds` seconds, and at the last step, so a log file
    reads well with `less` or `tail` instead of growing one carriage-return line.
    """

    def __init__(self, label: str, plan: RunPlan, initial: int, enabled: bool = True):
        self.label, self.total, self.enabled = label, plan.steps, enabled
        self.every_steps, self.every_seconds = plan.config.log_interval, plan.config.log_seconds
        self.start_step, self.start = initial, time.monotonic()
        self.last_line = self.start
        self.bar = None
        if enabled and interactive():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=initial, desc=label, unit="step", mininterval=1.0)

    def update(self, step: int, loss: float, tokens_per_s: float, mfu: float) -> None:
        """Show step `step` (just taken) with its mean loss and the group's speed."""
        if not self.enabled:
            return
        summary = f"loss {loss:.4f} | {tokens_per_s:,.0f} tok/s | MFU {mfu:.1%}"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(summary, refresh=False)
            return
        now = time.monotonic()
        if every(self.every_steps, step) or now - self.last_line >= self.every_seconds or step == self.total:
            self.last_line = now
            print(f"{self.label}: step {step}/{self.total} | {summary} | ETA {self._eta(step, now)}",
                  file=sys.stderr, flush=True)

    def _eta(self, step: int, now: float) -> str:
        done = step - self.start_step
        seconds = (now - self.start) / done * (self.total - step) if done else 0.0
        return clock(seconds)

    def say(self, message: str) -> None:
        """A line on stdout, above the bar if there is one."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        """Close the progress bar, if there is one."""
        if self.bar is not None:
            self.bar.close()


def drive(trainee: Trainee, log: ProgressLog) -> bool:
    """Train the members (all at the same step) to the last step and finish them.

    Returns False when a stop signal ended it early, after every member checkpointed.
    """
    members = trainee.members
    plan = members[0].plan
    segment_starts = [time.monotonic() - m.progress.wall_seconds for m in members]
    try:
        while members[0].progress.step < plan.steps:
            tick = time.monotonic()
            outcome = trainee.train_step()
            seconds = time.monotonic() - tick
            for member, start, loss, lr, norm in zip(members, segment_starts, outcome.losses, outcome.lrs,
                                                      outcome.grad_norms):
                member.took_step(loss, lr, norm, seconds, start, trainee.utilization)
            faults.reached("step")
            step = members[0].progress.step
            tokens_per_s = len(members) * plan.tokens_per_step / seconds
            log.update(step, sum(outcome.losses) / len(members), tokens_per_s, trainee.utilization.mfu(tokens_per_s))
            if every(plan.config.eval_interval, step) and step < plan.steps:
                record_evaluation(members, trainee.evaluate(), log)
            if outcome.stop or every(plan.config.save_interval, step):
                trainee.save()
            if outcome.stop:
                log.say(f"stopped by a signal at step {step}: exit {EXIT_REQUEUE}; the same command resumes")
                return False
        valid_losses = trainee.evaluate()
        record_evaluation(members, valid_losses, log)
        for member, start in zip(members, segment_starts):
            member.progress.wall_seconds = time.monotonic() - start
        trainee.finish(valid_losses)
        return True
    finally:
        log.close()


def record_evaluation(members: list[Member], valid_losses: list[dict[str, float]], log: ProgressLog) -> None:
    """Log each member's validation losses to its metrics.jsonl (and show the first member's)."""
    for member, losses in zip(members, valid_losses):
        member.metrics.record({"step": member.progress.step, "valid_loss": losses})
    if len(members) == 1:
        log.say("valid " + " ".join(f"{name} {loss:.4f}" for name, loss in valid_losses[0].items()))
