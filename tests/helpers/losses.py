"""Random embedding pairs and a loss's value and gradients (test helpers)."""

from __future__ import annotations

import torch


def pair(b=12, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, generator=g, dtype=dtype)
    v = torch.randn(b, d, generator=g, dtype=dtype)
    return u, v


def grads(loss_fn, u, v, **kw):
    u = u.clone().requires_grad_(True)
    v = v.clone().requires_grad_(True)
    loss = loss_fn(u, v, **kw)
    loss.backward()
    return loss.detach(), u.grad, v.grad
