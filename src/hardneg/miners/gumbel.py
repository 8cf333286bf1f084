r"""Straight-through Gumbel top-k: pick k candidates per row, differentiably.

References: Kool, van Hoof & Welling 2019 ("Stochastic Beams and Where to Find Them", the
Gumbel-top-k trick: the top-k of ``logits + Gumbel noise`` is a sample without replacement from
``softmax(logits)``); Xie & Ermon 2019 ("Reparameterizable Subset Sampling via Continuous
Relaxations", Alg. 1: the relaxed k-hot vector). Used by BACL's boundary-aware sampler
(arXiv:2511.08399, §3).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gumbel_noise(
    shape: torch.Size, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """Standard Gumbel noise ``−log(−log U)``, drawn on ``generator``'s device then moved.

    Drawing on the generator's device keeps a seeded CPU generator usable for CUDA logits
    (same numbers on every device).
    """
    source = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=source, dtype=torch.float32)
    tiny = torch.finfo(torch.float32).tiny
    return (-torch.log(-torch.log(u.clamp(min=tiny, max=1.0 - 1e-7)))).to(device)


def gumbel_topk(
    logits: Tensor,
    k: int,
    tau: float = 1.0,
    mask: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise_rows: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Sample k distinct allowed candidates per row; straight-through relaxed k-hot.

    With perturbed scores ``g_ij = ℓ_ij + G_ij`` (``G`` standard Gumbel, disallowed → −∞):

    - **hard**: the k-hot of ``top-k_j g_ij`` — an exact sample of k candidates without
      replacement from ``softmax(ℓ_i)`` over the allowed ones (independent of τ);
    - **soft**: the relaxed k-hot of Xie & Ermon (2019, Alg. 1), ``Σ_{t=1..k} a_t`` with
      ``a_t = softmax(g^{(t)}/τ)``, ``g^{(1)} = g``, ``g^{(t+1)} = g^{(t)} + log(1 − a_t)``
      (each step softly removes what the previous ones chose). ``soft → hard`` as ``τ → 0``
      and each row of ``soft`` sums to k.

    The returned ``hard`` is straight-through: its value is the 0/1 k-hot, its gradient is the
    gradient of ``soft`` (``hard + (soft − sg(soft))``).

    Args:
        logits: (B, C) selection logits ℓ.
        k: number of candidates to pick per row (1 ≤ k ≤ allowed candidates of every row).
        tau: relaxation temperature τ > 0 of ``soft``.
        mask: optional (B, C) bool, True where a candidate MAY be picked (e.g. ``~positives``).
        generator: optional ``torch.Generator`` for the Gumbel noise (seeded, deterministic).
        noise_rows: ``(offset, total)``: the rows are rows ``offset … offset + B`` of a batch of
            ``total`` rows; the noise of all ``total`` rows is drawn and these rows' slice used
            (a DDP shard with the same generator on every rank then picks exactly what a single
            process picks for these rows). None: ``(0, B)``.

    Returns:
        ``(hard, soft, indices)``: (B, C) straight-through k-hot, (B, C) relaxed weights in
        [0, 1] (zero where disallowed), (B, k) long indices of the picks sorted by perturbed
        score, largest first.

    Example:
        >>> logits = torch.zeros(2, 5, requires_grad=True)
        >>> allowed = torch.tensor([[0, 1, 1, 1, 1], [1, 0, 1, 1, 1]], dtype=torch.bool)
        >>> hard, soft, idx = gumbel_topk(logits, k=2, tau=0.5, mask=allowed)
        >>> hard.sum(dim=1).tolist()
        [2.0, 2.0]
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, C), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating tensor, got dtype {logits.dtype}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits contain NaN or inf; check the policy output and the similarities")
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (relaxation temperature), got {tau}")
    if mask is None:
        mask = torch.ones_like(logits, dtype=torch.bool)
    elif mask.shape != logits.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(logits.shape)} (True = may be picked), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    allowed_count = int(mask.sum(dim=1).min()) if logits.shape[0] > 0 else 0
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > allowed_count:
        raise ValueError(
            f"k={k} but some row has only {allowed_count} allowed candidates; lower k or add "
            "candidates (a larger batch or extra hard negatives)"
        )
    dtype = torch.promote_types(logits.dtype, torch.float32)
    offset, total = noise_rows or (0, logits.shape[0])
    if not 0 <= offset <= total - logits.shape[0]:
        raise ValueError(
            f"noise_rows={noise_rows} cannot hold {logits.shape[0]} rows; pass (offset, total) "
            "with offset + rows ≤ total"
        )
    shape = torch.Size((total, logits.shape[1]))
    noise = gumbel_noise(shape, logits.device, generator)[offset : offset + logits.shape[0]]
    noise = noise.to(dtype)
    neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=logits.device)
    scores = torch.where(mask, logits.to(dtype) + noise, neg_inf)

    indices = scores.detach().topk(k, dim=1).indices
    hard = torch.zeros_like(scores).scatter_(1, indices, 1.0)

    eps = torch.finfo(dtype).eps
    soft = torch.zeros_like(scores)
    relaxed = scores
    for _ in range(k):
        weights = torch.softmax(relaxed / tau, dim=1)
        soft = soft + weights
        relaxed = relaxed + torch.log((1.0 - weights).clamp(min=eps))
    soft = soft.to(logits.dtype)
    hard = hard.to(logits.dtype)
    return hard + (soft - soft.detach()), soft, indices  # value exactly 0/1
