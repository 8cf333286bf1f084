"""Autograd-aware collectives for contrastive losses under ``torch.distributed``.

The rule every hardneg loss follows (as open_clip's ``gather_features`` with
``gather_with_grad=True``): the local rows are the anchors, scored against the features of
all ranks gathered with an autograd-aware ``all_gather``. Its backward sums, into each rank's
input, the gradient that rank's features receive as candidates of *every* rank's anchors.
The tempting shortcut (plain ``all_gather`` and putting the local tensor back) drops that
gradient and silently trains a different objective.

With per-rank loss ``L_r`` averaging its local anchors, ``mean_r L_r`` equals the loss on
the concatenated batch, and DDP's gradient averaging turns the summed feature gradients into
exactly the single-process parameter update.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_info() -> tuple[int, int]:
    """Return ``(rank, world_size)``; ``(0, 1)`` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """``all_gather`` whose backward sums every rank's gradient and keeps the local slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        rank, world = world_info()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)  # gloo has no reduce_scatter; sum, then keep this rank's rows
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the gradient path to every rank.

    All ranks must pass tensors of the same shape. Returns ``x`` itself in a single process.
    """
    _, world = world_info()
    if world == 1:
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(
            f"every rank must pass the same local batch size to a distributed contrastive loss, "
            f"got {[int(s) for s in sizes]}; use drop_last=True in the sampler"
        )
    return _AllGather.apply(x)


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (e.g. integer ids) from all ranks along dim 0, without autograd."""
    _, world = world_info()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
