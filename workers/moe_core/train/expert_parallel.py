"""Expert parallelism, applied to a plain model from outside: each process keeps E/P whole routed experts.

Tokens go to the process that owns their expert and come back by two all-to-alls (autograd-aware), so the
expert weights are never gathered. Expert weights become DTensors sharded on the expert dimension over the
same mesh as FSDP2 (which leaves them alone), so DCP checkpoints and the full-state export see whole tensors.
The router, the shared experts and everything else stay as they were (FSDP2-sharded).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from moe_core.model import RoutedExperts

EXPERT_WEIGHTS = ("w1", "w2", "w3")


class ExpertParallelError(ValueError):
    """The model's experts cannot be split over this many processes."""


def _local(w: Tensor, dtype: torch.dtype) -> Tensor:
    w = w.to_local() if isinstance(w, DTensor) else w
    return w.to(dtype)


class ExpertParallelRoutedExperts(RoutedExperts):
    """RoutedExperts whose forward sends each (token, expert) pair to the expert's owner and back."""

    ep_group: dist.ProcessGroup

    def forward(self, x: Tensor, topk_idx: Tensor, topk_weight: Tensor) -> Tensor:
        n_tokens, k = topk_idx.shape
        group = self.ep_group
        world = dist.get_world_size(group)
        per_rank = self.n_experts // world
        flat = topk_idx.flatten()
        order = flat.argsort(stable=True)  # (token, slot) pairs sorted by expert, so by owner too
        counts = torch.bincount(flat, minlength=self.n_experts)
        # How many rows each owner gets from us, per local expert; every rank learns what it receives.
        received = funcol.all_to_all_single(counts, [per_rank] * world, [per_rank] * world, group)
        received = received.view(world, per_rank)
        send_splits = counts.view(world, per_rank).sum(1).tolist()
        recv_splits = received.sum(1).tolist()
        x_sent = funcol.all_to_all_single_autograd(x[order // k], recv_splits, send_splits, group)
        # Arrived grouped by source rank, then expert: regroup by local expert for one grouped GEMM.
        src_major = torch.arange(world * per_rank, device=x.device)
        key = ((src_major % per_rank) * world + src_major // per_rank).repeat_interleave(received.flatten())
        by_expert = key.argsort(stable=True)
        y_local = self._local_experts(x_sent[by_expert], received.sum(0))
        y_back = torch.empty_like(y_local).index_copy(0, by_expert, y_local)
        y_sorted = funcol.all_to_all_single_autograd(y_back, send_splits, recv_splits, group)
        y = torch.empty_like(y_sorted).index_copy(0, order, y_sorted).view(n_tokens, k, -1)
        return torch.bmm(topk_weight.unsqueeze(1).to(y.dtype), y).squeeze(1)

    def _local_experts(self, x: Tensor, counts: Tensor) -> Tensor:
        w1, w2, w3 = (_local(getattr(self, n), x.dtype) for n in EXPERT_WEIGHTS)
        if self._grouped(x):
            offs = counts.cumsum(0).to(torch.int32)
            gate, up = torch._grouped_mm(x, torch.cat([w1, w3], dim=1).transpose(-2, -1), offs=offs).chunk(
                2, -1
            )
            return torch._grouped_mm(F.silu(gate) * up, w2.transpose(-2, -1), offs=offs)
        outs = [
            (F.silu(xe @ w1[e].T) * (xe @ w3[e].T)) @ w2[e].T for e, xe in enumerate(x.split(counts.tolist()))
        ]
        return torch.cat(outs)


def apply_expert_parallel(model: nn.Module, mesh) -> list[nn.Parameter]:
    """Shard every routed-expert block's weights by expert over ``mesh``; return those parameters (FSDP2
    must ignore them, and their gradients need :func:`scale_expert_grads`)."""
    world = mesh.size()
    params: list[nn.Parameter] = []
    for module in model.modules():
        if not isinstance(module, RoutedExperts):
            continue
        if module.n_experts % world:
            raise ExpertParallelError(
                f"{module.n_experts} routed experts do not split evenly over {world} processes"
            )
        for name in EXPERT_WEIGHTS:
            full = getattr(module, name)
            sharded = nn.Parameter(distribute_tensor(full.detach(), mesh, [Shard(0)]))
            setattr(module, name, sharded)
            params.append(sharded)
        module.__class__ = ExpertParallelRoutedExperts
        module.ep_group = mesh.get_group()
    return params


@torch.no_grad()
def scale_expert_grads(params: list[nn.Parameter], world: int) -> None:
    """An expert's gradient arrives summed over every rank's tokens (all-to-all backward), while FSDP2
    averages the other gradients over ranks: divide so both are the gradient of the mean loss."""
    for p in params:
        if p.grad is not None:
            p.grad.div_(world)
