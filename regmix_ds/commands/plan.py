"""`regmix-ds plan`: what the swarm and the target run will cost, before anything runs.

Arguments only, and the `sbatch` line (spelled by `pipeline.proxies`, as `swarm` and `collect`
spell it); the arithmetic is `train.budget`'s.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math

from regmix_ds.core.config import PlanConfig
from regmix_ds.core.settings import add_flags, apply_flags, flags_given, named_by_flags

ORDER = 25
TIME_MARGIN = 1.5
"""The sbatch line's --time: the predicted time of one group times this (the model's error, start-up, evaluation)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="plan the swarm on N GPUs: FLOPs, the group that fits, hours, the sbatch line",
        description=(
            "Training FLOPs per proxy and for the target run; the swarm size advised for the number of domains; "
            "the largest proxy group one device holds (its predicted peak memory) and the group to use; "
            "wall-clock and device-hours at a stated or predicted MFU; the sbatch line. Without --gpu-peak-tflops "
            "the device is this machine's (its GPU, else its CPU), measured. Settings: flags override the exp.yaml "
            "plan: section. Writes nothing."
        ),
    )
    parser.add_argument("--config", required=True, metavar="EXP_YAML",
                        help="experiment config: proxy: settings, data: domains, swarm: size, plan: section")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object instead")
    add_flags(parser, PlanConfig, overrides=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from regmix_ds.core.config import ExperimentConfig
    from regmix_ds.train import budget

    experiment = ExperimentConfig.load(args.config)
    given = flags_given(args, PlanConfig)
    with named_by_flags(PlanConfig, given, experiment.path):
        settings = apply_flags(PlanConfig, given, experiment.plan, experiment.path)
        experiment.require_proxy()
        device = describe_device(settings, experiment)
        plan = budget.plan_swarm(experiment, settings, device)
    line = sbatch_line(experiment, plan, settings, device)
    if args.json:
        print(json.dumps({**dataclasses.asdict(plan), "device": dataclasses.asdict(device), "sbatch": line}))
        return
    for text in report(plan, settings, device):
        print(text)
    print(f"submit: {line}")


def describe_device(settings: PlanConfig, experiment) -> object:
    """The device of the plan: stated by the gpu_ settings, else this machine's, measured."""
    from regmix_ds.core.dsconfig import load_ds_config
    from regmix_ds.train import budget

    if settings.gpu_peak_tflops is not None:
        return budget.stated_gpu("the stated GPU", settings.gpu_peak_tflops, settings.gpu_memory_gib,
                                 settings.gpu_bandwidth_tbs)
    return budget.this_machine(load_ds_config(experiment.require_proxy().deepspeed_config).precision)


def sbatch_line(experiment, plan, settings: PlanConfig, device) -> str:
    """The array that trains the swarm at the advised group size, one group per GPU at a time."""
    from regmix_ds.pipeline import proxies

    proxy = dataclasses.replace(experiment.require_proxy(), group_size=plan.group_size)
    planned = dataclasses.replace(experiment, proxy=proxy)
    swarm = experiment.work.swarm
    if swarm.path.is_dir() and swarm.indices():
        line = proxies.sbatch_line(planned, swarm.indices(), throttle=settings.gpus)
    else:  # no swarm drawn yet: `regmix-ds swarm` will number it 1..n
        step = f":{plan.group_size}" if plan.group_size > 1 and plan.swarm > plan.group_size else ""
        array = f"1-{plan.swarm}{step}" if plan.swarm > 1 else "1"
        line = f"sbatch --array={array}%{settings.gpus} {proxies.PROXY_SCRIPT} {experiment.path}"
    options = f"--time={clock(plan.group_seconds * TIME_MARGIN)}"
    if device.gpu:
        options = f"--gpus-per-task=1 {options}"
    return line.replace("sbatch ", f"sbatch {options} ", 1)


def clock(seconds: float) -> str:
    """Slurm's D-HH:MM:SS, rounded up to a whole minute."""
    minutes = max(math.ceil(seconds / 60), 1)
    days, minutes = divmod(minutes, 24 * 60)
    return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00"


def si(value: float, unit: str) -> str:
    """`value` with a G or T prefix: 95.3 GFLOP/s, 4.80 TB/s."""
    return f"{value / 1e12:.3g} T{unit}" if value >= 1e12 else f"{value / 1e9:.3g} G{unit}"


def report(plan, settings: PlanConfig, device) -> list[str]:
    """The plan as lines a person reads."""
    w, gib = plan.workload, 2**30
    sizes = w.sizes
    measured = f"measured: {', '.join(device.measured)}" if device.measured else "stated"
    bandwidth = (si(device.bandwidth_bytes_per_s, "B/s") if math.isfinite(device.bandwidth_bytes_per_s)
                 else "bandwidth not given")
    lines = [
        f"device: {device.name}: matmul {si(device.peak_flops_per_s, 'FLOP/s')}, {bandwidth}, "
        f"{device.op_seconds * 1e6:.1f} us an operator, {device.memory_bytes / gib:.1f} GiB ({measured}); "
        f"{settings.gpus} of them",
        f"proxy: {w.shape.layers} layers x {w.shape.hidden}, vocabulary {w.vocab:,}: {sizes.total:,} parameters "
        f"({sizes.total - 2 * w.vocab * w.shape.hidden:,} outside the embeddings); {plan.proxy_tokens:,} tokens = "
        f"{plan.proxy_steps:,} steps of {w.micro} x {w.accumulation} x {w.seq_len} tokens, {w.precision}",
        f"  training FLOPs: {plan.proxy_flops:.3g} a proxy, {plan.proxy_flops * plan.swarm:.3g} for the swarm",
        f"swarm: {plan.swarm} proxies for {plan.domains} domains; advised at least {plan.advised_swarm} "
        f"(RegMix trained 512 for 17 domains; Olmix: the swarm needed grows linearly with the domains)",
        f"group: at most {plan.largest_group} proxies fit one device ({device.usable_fraction:.0%} of its memory); "
        f"advised proxy.group_size {plan.group_size}",
        f"  peak memory of a group of {plan.group_size}: {plan.memory['peak'] / gib:.2f} GiB ("
        + ", ".join(f"{name.replace('_', ' ')} {value / gib:.2f}" for name, value in plan.memory.items()
                    if name != "peak" and value) + ")",
    ]
    step = plan.step
    model = (f" (model: matmul {step['matmul'] * 1e3:.1f} ms + memory {step['memory'] * 1e3:.1f} ms + "
             f"page faults {step['page_faults'] * 1e3:.1f} ms + operators {step['overhead'] * 1e3:.1f} ms)"
             if "matmul" in step else "")
    lines += [
        f"  step: {step['planned'] * 1e3:.1f} ms at MFU {plan.mfu:.1%} ({'stated' if plan.mfu_stated else 'predicted'})"
        + model,
        f"time: {plan.groups} groups on {settings.gpus} devices: {plan.group_seconds / 3600:.2f} h a group, "
        f"{plan.wall_seconds / 3600:.2f} h wall-clock, {plan.device_hours:.1f} device-hours",
        f"target: {plan.target['preset']}, {plan.target['params']:,} parameters, {plan.target['tokens']:,} tokens: "
        f"{plan.target['flops']:.3g} FLOPs; at MFU {plan.target['mfu']:.0%} (stated) on {settings.gpus} devices "
        f"{plan.target['wall_seconds'] / 3600:.1f} h wall-clock, {plan.target['device_hours']:.1f} device-hours "
        f"(the swarm: {plan.device_hours / plan.target['device_hours']:.1%} of it)",
    ]
    return lines
