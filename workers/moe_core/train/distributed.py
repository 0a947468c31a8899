"""Processes and parallelism, applied to a plain model from outside: torchrun's environment, FSDP2.

The model never imports anything from here (torchtitan's rule). One process trains alone; several, started
by torchrun, shard the model with FSDP2 (`fully_shard`) per transformer block, over NCCL on GPUs or gloo on
CPUs, and split each global batch between them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    checkpoint_group: Any = None  # a gloo group for checkpoint collectives, apart from the training traffic

    @property
    def fsdp(self) -> bool:
        """FSDP2 shards across processes; on a GPU it also gives one process bf16 compute over fp32 weights."""
        return self.world_size > 1 or self.device.type == "cuda" or os.environ.get("MOE_FORCE_FSDP") == "1"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


def init_distributed(device: str = "auto") -> Dist:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK (absent: one process) and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is visible")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    d = Dist(rank, local_rank, world, dev)
    if d.fsdp:
        timeout = datetime.timedelta(seconds=int(os.environ.get("MOE_DIST_TIMEOUT_S", "1800")))
        backend = "nccl" if use_cuda else "gloo"
        device_id = dev if use_cuda else None
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, timeout=timeout, device_id=device_id)
        else:  # one process not started by torchrun: a group of one
            init = f"tcp://127.0.0.1:{_free_port()}"
            dist.init_process_group(
                backend, init_method=init, rank=0, world_size=1, timeout=timeout, device_id=device_id
            )
        d.checkpoint_group = dist.new_group(backend="gloo", timeout=timeout)
    return d


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def apply_fsdp(
    model: torch.nn.Module, d: Dist, param_dtype: torch.dtype | None, *, mesh=None, ignored: set | None = None
) -> torch.nn.Module:
    """Shard every block, the MTP blocks and then the root (embedding, norm, head) with FSDP2.

    Stacked routed-expert weights [E, ...] are sharded on dim 0, the expert dimension, so each rank holds
    whole experts between all-gathers; with expert parallelism they are ``ignored`` here (already split by
    expert). On GPU parameters are gathered in bf16 and gradients reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    kwargs = {"mp_policy": mp, "mesh": mesh}
    if ignored:
        kwargs["ignored_params"] = ignored
    for block in model.layers:
        fully_shard(block, **kwargs)
    for m in model.mtp:
        fully_shard(m, **kwargs)
    fully_shard(model, **kwargs)
    # The trainer calls model.loss(), not forward(): FSDP2 must gather the root's parameters for it too.
    register_fsdp_forward_method(model, "loss")
    return model


def world_mesh(d: Dist):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(d.device.type, (d.world_size,))


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
    if d.world_size == 1:
        return flag
    t = torch.tensor([1 if flag else 0], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        dist.barrier()
