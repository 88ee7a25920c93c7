"""Data-parallel training across processes (torchrun), StyleGAN2-ADA style.

Every rank holds full copies of G and D, draws its share of each global batch, and after
each backward the gradients are averaged across ranks with one all-reduce over a flat
buffer (NCCL on GPU, gloo on CPU). This is the gradient synchronisation that
``DistributedDataParallel`` performs, done explicitly: DDP's reducer hooks fire on
``backward()`` only, while a gradient penalty first runs
``autograd.grad(create_graph=True)`` and several forwards of D before the one backward of
the step, a pattern DDP's bookkeeping does not expect. Explicit all-reduce is exact for it:
every rank's penalty is the mean over its equal share, so the average over ranks is the
penalty of the global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: object = None  # the process group of host-side decisions (gloo; None: the default group)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """The number of processes torchrun started (WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).
    On CUDA (NCCL) a gloo group is created too, for ``max_over_ranks``."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return DistInfo(rank, world, local, control)


def max_over_ranks(values: list, info: DistInfo) -> list[int]:
    """Each of ``values`` (ints or bools, the same list length on every rank) maximised over the
    ranks: the host-side agreement that makes every rank take the same decision (stop, and why).
    A CPU all-reduce over the gloo group: no GPU synchronisation."""
    values = [int(v) for v in values]
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control)
    return t.tolist()


def sum_over_ranks_(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over the ranks in place (an all-reduce on t's device; no-op for one process)."""
    if info.enabled:
        dist.all_reduce(t)
    return t


def broadcast_module_(module: torch.nn.Module, info: DistInfo) -> None:
    """Make every rank's parameters and buffers equal to rank 0's."""
    if not info.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def broadcast_buffers_(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's buffers (batch-norm running statistics) to every rank, as DDP's
    ``broadcast_buffers=True`` does, so replicas stay identical."""
    if not info.enabled:
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def average_gradients_(params, info: DistInfo) -> None:
    """Average .grad across ranks with one all-reduce over a flat buffer."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_objects(obj, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (one all_gather_object)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
