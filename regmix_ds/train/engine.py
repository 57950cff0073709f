"""Everything DeepSpeed: rank discovery, process groups, the engine, checkpoints, shutdown.

This is the only module that imports DeepSpeed; the model and the training loop talk to it
through the small functions below.

Launchers and how each one is recognised (first match wins):

- `env`: RANK and WORLD_SIZE are set (the `deepspeed` launcher, torchrun, or by hand);
- `mpi`: started by `mpirun`/`mpiexec` (Open MPI, MPICH, PMIx variables); rank, size and
  local rank come from mpi4py, rank 0's host name is broadcast for MASTER_ADDR;
- `slurm`: a task of an `srun` step (SLURM_STEP_NUM_TASKS, SLURM_PROCID);
- `single`: plain `python train.py`, one process on a free local port.

Whatever the launcher, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_SIZE (never empty: DeepSpeed's
CPU op crashes on an empty one), MASTER_ADDR and MASTER_PORT are exported before
`deepspeed.init_distributed`, so DeepSpeed never runs its own MPI discovery (which takes the
address from `hostname -I` rather than loopback).
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle  # only for its exception type: checkpoints load with weights_only=True
import re
import shutil
import socket
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import torch

from regmix_ds.core import faults
from regmix_ds.core.dsconfig import DeepSpeedSettings
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import entries, one_line, read_json, size_or_none, write_json_atomic
from regmix_ds.core.names import check_safe_name

T = TypeVar("T")

DEFAULT_PORT = 29500
COMPLETE_MARKER = "complete.json"
"""Written into a checkpoint directory after every rank's save returned: no marker, no resume.
It lists every file of the checkpoint with its size, so a lost or cut shard is found before
DeepSpeed reads anything."""
TAG_PATTERN = re.compile(r"step(\d{8})")
"""Matched in full (`fullmatch`)."""
MPI_MARKERS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
SHM_BUFFER = "/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}"


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    local_size: int
    master_addr: str
    master_port: int
    launcher: str
    """'env', 'mpi', 'slurm' or 'single' (see the module docstring)."""

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.world_size and 0 <= self.local_rank < self.local_size <= self.world_size):
            raise RegmixError(f"launcher {self.launcher}", f"inconsistent ranks {self}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def exported(self) -> dict[str, str]:
        """The environment variables torch.distributed and DeepSpeed read."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_SIZE": str(self.local_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def discover_launch(environ: Mapping[str, str] | None = None, local_rank_flag: int | None = None) -> DistEnv:
    """Work out rank, world size and rendezvous address from the launcher's environment."""
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return _from_env(environ, local_rank_flag)
    if any(environ.get(name) for name in MPI_MARKERS):
        return _from_mpi(environ)
    if "SLURM_STEP_NUM_TASKS" in environ and "SLURM_PROCID" in environ:
        return _from_slurm(environ)
    port = int(environ.get("MASTER_PORT") or free_port())
    return DistEnv(0, 1, 0, 1, environ.get("MASTER_ADDR") or "127.0.0.1", port, "single")


def _from_env(environ: Mapping[str, str], local_rank_flag: int | None) -> DistEnv:
    world = _int_env(environ, "WORLD_SIZE")
    local_rank = int(environ.get("LOCAL_RANK") or (local_rank_flag if local_rank_flag is not None else 0))
    # Without a local size, claim none of the others share this node: DeepSpeed then skips
    # its shared-memory op rather than wait forever for ranks that are elsewhere.
    local_size = int(environ.get("LOCAL_SIZE") or environ.get("LOCAL_WORLD_SIZE") or 1)
    if world > 1 and not environ.get("MASTER_ADDR"):
        raise RegmixError("MASTER_ADDR", "not set, but WORLD_SIZE > 1: set it to rank 0's host")
    return DistEnv(
        _int_env(environ, "RANK"), world, local_rank, max(local_size, local_rank + 1),
        environ.get("MASTER_ADDR") or "127.0.0.1", int(environ.get("MASTER_PORT") or DEFAULT_PORT), "env",
    )


def _from_mpi(environ: Mapping[str, str]) -> DistEnv:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    one_node = node.Get_size() == world.Get_size()
    addr = environ.get("MASTER_ADDR") or ("127.0.0.1" if one_node else world.bcast(socket.gethostname(), root=0))
    port = int(environ.get("MASTER_PORT") or DEFAULT_PORT)
    return DistEnv(world.Get_rank(), world.Get_size(), node.Get_rank(), node.Get_size(), addr, port, "mpi")


def _from_slurm(environ: Mapping[str, str]) -> DistEnv:
    nodes = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
    if nodes > 1 and not environ.get("MASTER_ADDR"):
        raise RegmixError("MASTER_ADDR",
                          "not set for a multi-node srun step: export the first host of scontrol show hostnames")
    node_id = int(environ.get("SLURM_NODEID") or 0)
    local_size = tasks_on_node(environ.get("SLURM_STEP_TASKS_PER_NODE") or environ["SLURM_STEP_NUM_TASKS"], node_id)
    return DistEnv(
        _int_env(environ, "SLURM_PROCID"), _int_env(environ, "SLURM_STEP_NUM_TASKS"),
        int(environ.get("SLURM_LOCALID") or 0), local_size, environ.get("MASTER_ADDR") or "127.0.0.1",
        int(environ.get("MASTER_PORT") or DEFAULT_PORT), "slurm",
    )


def tasks_on_node(spec: str, node_id: int) -> int:
    """Tasks on node `node_id` from Slurm's compressed list, e.g. '2(x3),1' -> 2, 2, 2, 1."""
    counts: list[int] = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise RegmixError("SLURM_STEP_TASKS_PER_NODE", f"cannot parse {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if not 0 <= node_id < len(counts):
        raise RegmixError("SLURM_NODEID", f"{node_id} is outside {spec!r}")
    return counts[node_id]


def _int_env(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except (KeyError, ValueError):
        raise RegmixError(name, f"expected an integer, got {environ.get(name)!r}") from None


def free_port() -> int:
    """A TCP port nobody listens on now: several single-process runs may share a machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def quiet_deepspeed() -> None:
    """DeepSpeed logs every config key at INFO and torch 2.13 warns on every ZeRO-3 collective."""
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"deepspeed|torch\.distributed")


def init_distributed(dist_env: DistEnv) -> None:
    """Export the rank variables and start the process group (gloo on CPU, the device's backend on GPU)."""
    os.environ.update(dist_env.exported())
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    quiet_deepspeed()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    backend = "gloo" if accelerator.device_name() == "cpu" else accelerator.communication_backend_name()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


def check_settings(settings: DeepSpeedSettings) -> None:
    """Have DeepSpeed's own config classes read `settings` now, before any process group or file:
    an unknown ZeRO key or a wrong type is then a one-line error naming the file, not a pydantic
    report seconds into start-up."""
    from deepspeed.runtime.config import DeepSpeedConfig

    try:
        # Resolved for one rank: before the process group exists DeepSpeedConfig takes the world
        # to be 1 and would refuse the real world's batch size; that arithmetic is `for_world`'s own.
        DeepSpeedConfig(settings.for_world(1))
    except Exception as err:
        raise RegmixError(settings.path, f"DeepSpeed refuses this config: {_first_problem(err)}") from None


def _first_problem(err: Exception) -> str:
    """A pydantic report's first error as `section.key: message`, else the exception's first line."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        section = getattr(err, "title", "")
        return one_line(f"{section} {'.'.join(map(str, first['loc']))}: {first['msg']}")
    return one_line(str(err).splitlines()[0] if str(err) else type(err).__name__)


def initialize(model: torch.nn.Module, param_groups: list[dict], settings: dict) -> Any:
    """Wrap `model` in a DeepSpeed engine; the optimizer comes from `settings` (already resolved)."""
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups, config=settings)
    return engine


def zero_stage(engine: Any) -> int:
    """The engine's ZeRO optimization stage (0: ZeRO off)."""
    return int(engine.zero_optimization_stage())


def set_learning_rate(engine: Any, lr: float) -> None:
    """The schedule is a pure function of the step, applied before each optimizer step."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


def gradient_norm_before_step(engine: Any) -> float | None:
    """The global gradient norm where DeepSpeed does not report it (ZeRO stage 0 in fp32).

    Call it at the accumulation boundary, after `backward` (which all-reduced the gradients)
    and before `step` (which clips them).
    """
    if zero_stage(engine) > 0 or engine.bfloat16_enabled() or engine.fp16_enabled():
        return None
    grads = [p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0


def reported_gradient_norm(engine: Any, measured: float | None) -> float | None:
    """DeepSpeed's global gradient norm, else `measured` (`gradient_norm_before_step`); None if neither has one."""
    norm = engine.get_global_grad_norm()
    norm = measured if norm is None else norm
    return None if norm is None else float(norm)


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few floats over all ranks (float64, so summing losses loses nothing)."""
    import deepspeed.comm as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    """Wait until every rank has reached this point."""
    import deepspeed.comm as dist

    dist.barrier()


# ---- checkpoints --------------------------------------------------------------------------


def checkpoint_tag(step: int) -> str:
    """The checkpoint directory name of `step`, zero-padded so that names sort by step."""
    return f"step{step:08d}"


def save_checkpoint(engine: Any, root: Path, step: int, client_state: dict, is_main: bool, keep: int) -> Path:
    """Save on every rank, then mark the directory complete and drop all but the newest `keep`."""
    tag = checkpoint_tag(step)
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state)
    barrier()
    faults.reached("checkpoint")
    if is_main:
        write_json_atomic(root / tag / COMPLETE_MARKER, {"step": step, "files": _file_sizes(root / tag)})
        for old in complete_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return root / tag


def complete_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories under `root` whose save finished, oldest first."""
    found = [p for p in entries(root) if TAG_PATTERN.fullmatch(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def newest_checkpoint(root: Path) -> Path | None:
    """What `--resume auto` continues from; a checkpoint killed mid-save has no marker and is skipped."""
    found = complete_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(engine: Any, directory: Path) -> dict:
    """Restore model, optimizer and ZeRO partitions; return the client state saved with them.

    Every failure is one RegmixError naming `directory` (or the refused file): a damaged
    checkpoint stops the run rather than letting it start over or continue from garbage.
    """
    step = on_every_rank(lambda: verify_checkpoint(directory), directory)
    return on_every_rank(lambda: _deepspeed_load(engine, directory, step), directory)


def _deepspeed_load(engine: Any, directory: Path, step: int) -> dict:
    try:
        with weights_only_loading(engine):
            path, client_state = engine.load_checkpoint(
                str(directory.parent), tag=directory.name, load_lr_scheduler_states=False
            )
    except RegmixError:
        raise
    except Exception as err:  # DeepSpeed's own errors are tracebacks from deep inside it
        raise RegmixError(directory, f"DeepSpeed could not load this checkpoint ({_first_line(err)})") from None
    if path is None or client_state is None or client_state.get("step") != step:
        raise RegmixError(directory, "DeepSpeed could not load this checkpoint")
    return client_state


def on_every_rank(check: Callable[[], T], where: Path) -> T:
    """`check()` on every rank, which then all stop if any rank's check failed: a rank that stopped
    alone (its own shard of a checkpoint refused, say) would leave the others waiting in their next
    collective until it timed out. The failing rank raises its own error; the others name `where`."""
    problem = None
    try:
        result = check()
    except RegmixError as err:
        problem = err
    failed = all_reduce_sum([float(problem is not None)])[0]
    if problem is not None:
        raise problem
    if failed:
        raise RegmixError(where, f"refused by {int(failed)} other rank(s); their own errors name the file")
    return result


def verify_checkpoint(directory: Path) -> int:
    """The step of a complete checkpoint whose files are all there with the sizes saved."""
    marker = directory / COMPLETE_MARKER
    if not marker.is_file():
        raise RegmixError(directory, f"not a complete checkpoint (no {COMPLETE_MARKER})")
    record = read_json(marker)
    files = record.get("files", {}) if isinstance(record, dict) else None
    if not isinstance(files, dict) or not isinstance(record.get("step"), int):
        raise RegmixError(marker, "not a checkpoint marker (expected an integer step and a files mapping)")
    # Markers of older runs list no files; DeepSpeed's own failure is then the check.
    for name, size in files.items():
        check_safe_name(name, marker, "checkpoint file name")
        actual = size_or_none(directory / name)
        if actual != size:
            found = "is missing" if actual is None else f"has {actual} bytes, {size} were saved"
            raise RegmixError(
                directory, f"damaged checkpoint: {name} {found}; delete this directory to resume from an older one"
            )
    return record["step"]


def _file_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != COMPLETE_MARKER}


def checkpoint_globals() -> list[type]:
    """The only classes a checkpoint may construct: what DeepSpeed pickles besides tensors and
    plain values (listed by `torch.serialization.get_unsafe_globals_in_checkpoint` on ZeRO 0-3
    checkpoints in fp32 and bf16; DynamicLossScaler is fp16's loss scaler)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def weights_only_loading(engine: Any) -> Iterator[None]:
    """Make this engine read checkpoint files with `torch.load(weights_only=True)`.

    DeepSpeed's TorchCheckpointEngine unpickles with weights_only=False, which runs whatever
    code a crafted file names. For the duration, this engine's checkpoint engine loads through
    `load_weights_only` instead (an instance attribute, removed afterwards).
    """
    checkpoint_engine = engine.checkpoint_engine
    checkpoint_engine.load = load_weights_only
    try:
        yield
    finally:
        del checkpoint_engine.load


def load_weights_only(path: str, map_location: Any = None) -> Any:
    """`torch.load` that constructs tensors, plain values and `checkpoint_globals()` only."""
    with torch.serialization.safe_globals(checkpoint_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise RegmixError(path, "checkpoint file not found") from None
        except pickle.UnpicklingError as err:  # weights_only met a type it may not construct
            refused = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), _first_line(err))
            raise RegmixError(path, f"refused to load: not plain tensors and values ({refused})") from None
        except Exception as err:
            raise RegmixError(path, f"cannot read this checkpoint file ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__)[:300]


def full_state_dict(engine: Any, is_main: bool) -> dict[str, torch.Tensor] | None:
    """The whole model as fp32 CPU tensors on rank 0 (None elsewhere).

    Under ZeRO-3 each parameter is gathered in turn (every rank must take part), so at most
    one full parameter is materialised at a time.
    """
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    for name, param in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=zero_stage(engine) == 3):
            if is_main:
                state[name] = param.detach().to("cpu", torch.float32).clone()
    return state if is_main else None


# ---- shutdown -----------------------------------------------------------------------------


def shutdown(code: int) -> NoReturn:
    """Leave the process group and exit at once with `code`.

    About one run in ten of two gloo ranks aborts at interpreter exit after all the work is
    done (a PyTorch gloo teardown problem, exit 250). Destroying the group, flushing and
    `os._exit` avoids it; MPI is finalised first so `mpirun` sees a clean exit, and this
    rank's DeepSpeed shared-memory buffer (66 MB in /dev/shm) is removed instead of leaked.
    """
    try:
        _leave_process_group()
        _finalize_mpi()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _leave_process_group() -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    torch.distributed.destroy_process_group()
    buffer = SHM_BUFFER.format(
        uid=os.getuid(), addr=os.environ.get("MASTER_ADDR", ""), port=os.environ.get("MASTER_PORT", ""),
        rank=os.environ.get("RANK", "0"),
    )
    Path(buffer).unlink(missing_ok=True)


def _finalize_mpi() -> None:
    if "mpi4py.MPI" in sys.modules:
        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized():
            MPI.Finalize()


def versions() -> dict[str, str]:
    """Versions of the libraries a run depends on, for run.json."""
    import deepspeed
    import transformers

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "transformers": transformers.__version__}
