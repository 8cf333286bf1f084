r"""AEL — attention error localisation (BACL, arXiv:2511.08399, "Ablation Study").

For an (image, hard-negative caption) pair whose mismatch is annotated — the caption tokens
that were perturbed and the image region they refer to — AEL asks whether the cross-modal
transformer's strongest cross-attention cell (caption token × image patch) falls on that
mismatch. The helpers turn the annotations into masks: a pixel box into a patch mask, a word
span into a token mask (through a tokenizer's ``word_ids``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from hardneg.eval.checks import check_finite, check_mask

__all__ = [
    "attention_error_hits",
    "attention_error_localisation",
    "box_to_patch_mask",
    "word_span_to_token_mask",
]


def attention_error_localisation(
    attn: Tensor,
    token_mask: Tensor,
    patch_mask: Tensor,
    valid_tokens: Tensor | None = None,
    k: int = 1,
) -> float:
    r"""AEL in percent: ``100 ·`` the mean of :func:`attention_error_hits` over the pairs.

    .. math::
        \mathrm{AEL} = \frac{100}{P}\sum_{p=1}^{P} \frac1k \sum_{c\in\mathrm{top}_k(A_p)}
        \mathbb 1[c \in M_p]

    Arguments as :func:`attention_error_hits`.

    Example:
        >>> import torch
        >>> attn = torch.tensor([[[0.1, 0.7], [0.1, 0.1]], [[0.6, 0.2], [0.1, 0.1]]])
        >>> tokens = torch.tensor([[True, False], [True, False]])
        >>> patches = torch.tensor([[False, True], [False, True]])
        >>> attention_error_localisation(attn, tokens, patches)
        50.0
    """
    hits = attention_error_hits(attn, token_mask, patch_mask, valid_tokens=valid_tokens, k=k)
    return 100.0 * float(hits.mean())


def attention_error_hits(
    attn: Tensor,
    token_mask: Tensor,
    patch_mask: Tensor,
    valid_tokens: Tensor | None = None,
    k: int = 1,
) -> Tensor:
    r"""Per pair: the share of its top-k cross-attention cells inside mismatch tokens × region.

    With ``A_p`` the (T, Q) head-averaged cross-attention of pair ``p`` (caption tokens attend to
    image patches) restricted to valid tokens, and ``M_p = tokens_p × patches_p`` the annotated
    mismatch cells,

    .. math::
        \mathrm{AEL} = \frac{100}{P}\sum_{p=1}^{P} \frac1k \sum_{c\in\mathrm{top}_k(A_p)}
        \mathbb 1[c \in M_p],

    which for the default ``k = 1`` is the share of pairs whose argmax cell is a mismatch cell
    (the BACL metric); ``k > 1`` is the softer variant "fraction of the top-k cells inside".
    Cells are ranked by attention, then by flat index ``t·Q + q`` (lower first) on ties, so
    the result is deterministic.

    Args:
        attn: (P, T, Q) cross-attention maps, already averaged over heads.
        token_mask: (P, T) bool, the annotated mismatch tokens of each hard-negative caption
            (see :func:`word_span_to_token_mask`).
        patch_mask: (P, Q) bool, patches overlapping the annotated region
            (see :func:`box_to_patch_mask`).
        valid_tokens: (P, T) bool, False for padding tokens (never ranked); default all valid.
        k: number of top cells per pair, ``1 ≤ k ≤`` the valid cells of every pair.

    Returns:
        AEL in percent (0–100).

    Example:
        >>> import torch
        >>> attn = torch.tensor([[[0.1, 0.7], [0.1, 0.1]], [[0.6, 0.2], [0.1, 0.1]]])
        >>> tokens = torch.tensor([[True, False], [True, False]])
        >>> patches = torch.tensor([[False, True], [False, True]])
        >>> attention_error_localisation(attn, tokens, patches)
        50.0
    """
    if not isinstance(attn, Tensor) or attn.dim() != 3 or 0 in attn.shape:
        shape = tuple(attn.shape) if isinstance(attn, Tensor) else type(attn).__name__
        raise ValueError(f"attn must be a non-empty (pairs, tokens, patches) tensor, got {shape}")
    n_pairs, n_tokens, n_patches = attn.shape
    check_finite("attn", attn)
    device = attn.device
    token_mask = check_mask("token_mask", token_mask, (n_pairs, n_tokens)).to(device)
    patch_mask = check_mask("patch_mask", patch_mask, (n_pairs, n_patches)).to(device)
    if valid_tokens is None:
        valid = torch.ones(n_pairs, n_tokens, dtype=torch.bool, device=device)
    else:
        valid = check_mask("valid_tokens", valid_tokens, (n_pairs, n_tokens)).to(device)
    for name, bad in (
        ("token_mask (among valid_tokens)", ~(token_mask & valid).any(dim=1)),
        ("patch_mask", ~patch_mask.any(dim=1)),
    ):
        if bool(bad.any()):
            raise ValueError(
                f"{name} is empty for pair(s) {bad.nonzero().squeeze(1)[:5].tolist()}: every "
                "pair needs an annotated mismatch; drop pairs without one"
            )
    n_cells = valid.sum(dim=1) * n_patches
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k > int(n_cells.min()):
        raise ValueError(
            f"k must be an integer in [1, {int(n_cells.min())}] (the fewest valid cells of a "
            f"pair), got {k!r}"
        )
    scores = attn.masked_fill(~valid[:, :, None], -torch.inf).reshape(n_pairs, -1)
    top = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
    inside = (token_mask[:, :, None] & patch_mask[:, None, :]).reshape(n_pairs, -1)
    return inside.gather(1, top).double().mean(dim=1)


def _positive_pair(name: str, value: object, what: str) -> tuple[int, int]:
    """An int or a pair of ints (Python, numpy or 0-d torch), both positive, as a pair."""
    try:
        pair = (value, value) if not isinstance(value, Sequence) else tuple(value)
        if len(pair) != 2:
            raise TypeError
        first, second = _as_index(pair[0]), _as_index(pair[1])
    except TypeError as err:
        raise ValueError(f"{name} must be {what}, got {value!r}") from err
    if first <= 0 or second <= 0:
        raise ValueError(f"{name} must be positive ({what}), got {value!r}")
    return first, second


def box_to_patch_mask(
    box: Sequence[float],
    image_size: int | tuple[int, int],
    grid: int | tuple[int, int],
) -> Tensor:
    r"""Boolean mask of the patches of a grid that overlap a pixel box.

    The image ``[0, W) × [0, H)`` is cut into ``rows × cols`` equal patches, flattened
    row-major (patch ``r·cols + c``, the ViT token order); patch ``(r, c)`` covers
    ``[c·W/cols, (c+1)·W/cols) × [r·H/rows, (r+1)·H/rows)``. A patch is selected iff its
    overlap with the box has positive area (touching edges do not count).

    Args:
        box: ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive (pixel column ``c``
            covers ``[c, c+1)``), inside the image.
        image_size: ``W`` for a square image or ``(W, H)`` (PIL's ``Image.size`` order).
        grid: patches per side, or ``(rows, cols)``.

    Returns:
        (rows·cols,) bool tensor on the CPU.

    Example:
        >>> box_to_patch_mask((0, 0, 10, 5), image_size=20, grid=2)
        tensor([ True, False, False, False])
    """
    width, height = _positive_pair("image_size", image_size, "W or (W, H) in pixels")
    rows, cols = _positive_pair("grid", grid, "patches per side or (rows, cols)")
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(
            f"box {tuple(box)!r} must satisfy 0 ≤ x0 < x1 ≤ {width} and 0 ≤ y0 < y1 ≤ {height} "
            "(x0, y0, x1, y1 in pixels, right/bottom exclusive); clip it to the image first"
        )
    c = torch.arange(cols, dtype=torch.float64)
    r = torch.arange(rows, dtype=torch.float64)
    in_x = (c * width / cols < x1) & ((c + 1) * width / cols > x0)
    in_y = (r * height / rows < y1) & ((r + 1) * height / rows > y0)
    return (in_y[:, None] & in_x[None, :]).reshape(-1)


def _as_index(value: object) -> int:
    """``value`` as a Python int if it is integer-like (int, numpy or 0-d torch integer)."""
    if isinstance(value, bool):
        raise TypeError("bool is not a word index")
    return operator.index(value)


def _as_index_pair(span: Sequence) -> tuple[int, int]:
    try:
        if len(span) != 2:
            raise TypeError
        return _as_index(span[0]), _as_index(span[1])
    except TypeError as err:
        raise ValueError(f"span must be a (start, end) pair of word indices, got {span!r}") from err


def word_span_to_token_mask(word_ids: Sequence[int | None], span: tuple[int, int]) -> Tensor:
    """Boolean mask of the tokens that belong to the words ``span[0] ≤ w < span[1]``.

    ``word_ids`` is what a Hugging Face fast tokenizer returns for one caption
    (``tokenizer(caption).word_ids()``): the word index of each token, ``None`` for special
    and padding tokens (never selected). Sub-word pieces of a word are all selected.

    Args:
        word_ids: word index of each token, or None.
        span: ``(start, end)`` word indices of the mismatch, end exclusive (Python, numpy or
            0-d torch integers).

    Returns:
        (T,) bool tensor on the CPU, ``T = len(word_ids)``.

    Example:
        >>> word_span_to_token_mask([None, 0, 1, 1, 2, None], (1, 2))
        tensor([False, False,  True,  True, False, False])
    """
    start, end = _as_index_pair(span)
    if not 0 <= start < end:
        raise ValueError(
            f"span must be (start, end) word indices with 0 ≤ start < end, got {span!r}"
        )
    try:
        words = [None if w is None else _as_index(w) for w in word_ids]
    except TypeError as err:
        raise ValueError(
            "word_ids must hold integer word indices or None, as tokenizer.word_ids()"
        ) from err
    mask = torch.tensor([w is not None and start <= w < end for w in words], dtype=torch.bool)
    if not bool(mask.any()):
        raise ValueError(
            f"no token of word_ids belongs to the word span {span!r}; the span must index words "
            "of the same caption that was tokenized (max word index "
            f"{max((w for w in words if w is not None), default=None)})"
        )
    return mask
