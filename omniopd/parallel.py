"""Process group, FSDP2 sharding, collectives and the full-state gather for the weight sync.

Always runs inside a process group (world size 1 when started without torchrun), so the trainer has
one code path: all-reduces are cheap no-ops on one rank, and torch.distributed.checkpoint works alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from omniopd.config import ParallelConfig


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(cfg: ParallelConfig) -> Dist:
    """Join torchrun's process group (NCCL on GPUs, gloo on CPU), or make a 1-rank one."""
    # Plain `python -m omniopd.train`: a 1-rank group on an in-process store. No TCP rendezvous (a port picked
    # free and bound later can be taken by another run started at the same moment: EADDRINUSE), and nothing
    # written to os.environ (a child process would inherit RANK and look for a rendezvous that is not there).
    single = "RANK" not in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        store = {"store": dist.HashStore(), "rank": 0, "world_size": 1} if single else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **store)
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)


_failed = False


def mark_failed() -> None:
    """This rank hit an error: from now on barrier() and shutdown() issue no collective. A collective on a
    broken device (after an OOM, say) hangs or fails with its own error, hiding the one the user needs."""
    global _failed
    _failed = True


def barrier() -> None:
    if dist.is_initialized() and not _failed:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (if something, e.g. a vLLM engine's shutdown, has not already)."""
    if dist.is_initialized():
        if not _failed:
            dist.barrier()  # without it gloo may abort while a peer is still sending
        dist.destroy_process_group()


def all_reduce_sum(values: list[float] | torch.Tensor) -> torch.Tensor:
    """Sum float64 values over ranks in one collective."""
    t = torch.as_tensor(values, dtype=torch.float64).clone()
    if dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = t.to(device)
        dist.all_reduce(t)
    return t.cpu()


class PeerFailed(RuntimeError):
    """Another rank's part of a collective step failed; that rank reports what and why."""


def every_rank(part: Callable[[], object]) -> None:
    """Run this rank's `part`, then learn whether every rank's succeeded (one collective, which is also a
    barrier): a failure on any rank is raised on all of them (`PeerFailed` where it did not happen), not left
    for the others to wait out at the next collective until torchrun or the group's timeout ends them."""
    error: BaseException | None = None
    try:
        part()
    except BaseException as e:  # re-raised below, once the other ranks have heard of it
        error = e
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if error is not None:
            raise error
        return
    flags = [0.0] * dist.get_world_size()
    flags[dist.get_rank()] = float(error is not None)
    try:
        failed = [rank for rank, flag in enumerate(all_reduce_sum(flags).tolist()) if flag > 0]
    except Exception as collective:  # a peer already gone: this rank's own error is the one to report
        if error is not None:
            raise error from collective
        raise
    if error is not None:
        raise error
    if failed:
        names = ", ".join(str(rank) for rank in failed)
        raise PeerFailed(f"rank {names} failed (its error is in its own log)")


def all_gather_object(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order."""
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shard(model: nn.Module, *, param_dtype: torch.dtype | None = None, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2: `fully_shard` every transformer block, then the root (embeddings, norm, head).

    `param_dtype`: the compute dtype. Below the parameters' own dtype, the parameters (fp32 master weights the
    optimizer updates) are gathered in it for compute and gradients are reduced in fp32; None or the parameters'
    dtype computes in that dtype. float16 is refused: it needs loss scaling, which this trainer does not do
    (`model.dtype=float16` with `parallel.fsdp=true` is refused at config load already).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if param_dtype == torch.float16:
        raise ValueError("parallel.shard: param_dtype=torch.float16 needs loss scaling, which is not implemented; "
                         "use torch.bfloat16")
    kwargs = {}
    own = next(model.parameters()).dtype
    if param_dtype is not None and param_dtype != own:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in transformer_blocks(model):
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kwargs)
    # The root keeps its parameters gathered after forward (FSDP2's default for it): the fused loss reads the
    # LM head's weight outside the forward, as a plain tensor whose gradient FSDP reduces with the rest.
    fully_shard(model, **kwargs)
    return model


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder layers of an HF causal LM (`model.model.layers` for Llama-style models)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return list(obj)
    raise ValueError(f"{type(model).__name__}: cannot find its transformer blocks to shard")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights, on CPU, on every rank (all ranks must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                broadcast_from_rank0=False))
