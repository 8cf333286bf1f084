"""The pre-training stage's object-grounded auxiliary loss: which digit and colour sit where.

A contrastive stage on DigitScenes never needs "which digit is where" (the bag of digits already
identifies a scene), so its image tower does not learn it, and no fine-tuning method can read
binding from tokens that do not hold it (docs/results/compositional_diagnosis.md). A supervised
backbone's features do hold it, as probes find in a real CLIP's image features (Lewis et al.
2022, "Does CLIP bind concepts?"). So the stage may also ask the tower's patch tokens inside each
object's box, mean pooled, to tell that object's digit and colour to two linear heads
(:class:`ObjectHeads`, owned by the stage and discarded after it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.data.digitscenes.semantics import COLOURS

__all__ = ["ObjectHeads", "ObjectTargets", "object_loss", "object_patch_masks", "warp_boxes"]


def warp_boxes(boxes: Tensor, theta: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Where pixel boxes ``(x0, y0, x1, y1)`` (B, K, 4) land when their images are resampled by
    :func:`~hardneg.train.stage.warp` with ``theta`` (B, 2, 3): the bounding box of the four
    moved corners, clipped to the image (float pixels).

    Example:
        >>> shift = torch.tensor([[[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]]])  # content moves right
        >>> warp_boxes(torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]), shift, (16, 16))
        tensor([[[ 4.,  0., 12.,  8.]]])
    """
    size = torch.tensor(image_size, dtype=torch.float32)
    x0, y0, x1, y1 = boxes.float().unbind(-1)
    corners = (
        torch.stack(  # (B, K, 4, 2) in normalised input coordinates
            [torch.stack(c, -1) for c in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))], -2
        )
        * (2 / size)
        - 1
    )
    a, t = theta[:, :, :2].float(), theta[:, :, 2].float()
    # input q = A·p + t  ⇒  output p = A⁻¹·(q − t)
    moved = torch.einsum("bij,bkcj->bkci", torch.linalg.inv(a), corners - t[:, None, None, :])
    pixels = (moved + 1) * (size / 2)
    lo = torch.minimum(pixels.amin(-2), size).clamp(min=0)
    hi = torch.minimum(pixels.amax(-2), size).clamp(min=0)
    return torch.cat([lo, hi], -1)


def object_patch_masks(
    boxes: Tensor, present: Tensor, image_size: tuple[int, int], grid: tuple[int, int]
) -> Tensor:
    """(B, K, P) bool: the patches each present object's box overlaps with positive area
    (none for an absent object or a box clipped to nothing), with the cells of
    :func:`~hardneg.eval.localisation.box_to_patch_mask` (patch ``(r, c)`` covers
    ``[c·W/cols, (c+1)·W/cols) × [r·H/rows, (r+1)·H/rows)``), for the whole batch at once.
    ``boxes`` (B, K, 4) are pixel ``(x0, y0, x1, y1)`` inside the image, right/bottom
    exclusive."""
    (width, height), (rows, cols) = image_size, grid
    x0, y0, x1, y1 = boxes.double().unbind(-1)  # (B, K) each
    c = torch.arange(cols, dtype=torch.float64)
    r = torch.arange(rows, dtype=torch.float64)
    in_x = (c * width / cols < x1[..., None]) & ((c + 1) * width / cols > x0[..., None])
    in_y = (r * height / rows < y1[..., None]) & ((r + 1) * height / rows > y0[..., None])
    masks = in_y[..., :, None] & in_x[..., None, :]  # (B, K, rows, cols)
    keep = present.cpu() & (x1 > x0) & (y1 > y0)
    return (masks & keep[..., None, None]).reshape(*present.shape, rows * cols)


class ObjectHeads(torch.nn.Module):
    """Linear digit (10-way) and colour classifiers on an object's pooled patch tokens: the
    stage's auxiliary probe, trained with it and discarded after it.

    Example:
        >>> digit, colour = ObjectHeads(8)(torch.zeros(5, 8))
        >>> digit.shape, colour.shape
        (torch.Size([5, 10]), torch.Size([5, 6]))
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.digit = torch.nn.Linear(dim, 10)
        self.colour = torch.nn.Linear(dim, len(COLOURS))

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        return self.digit(pooled), self.colour(pooled)


def object_loss(
    heads: ObjectHeads, tokens: Tensor, masks: Tensor, digits: Tensor, colours: Tensor
) -> Tensor:
    """Digit CE + colour CE, each averaged over the objects, of ``heads`` on the mean of the
    patch ``tokens`` (B, P, D) inside each object's patch mask (``masks`` (B, K, P), from
    :func:`object_patch_masks`; objects with an empty mask are skipped). ``digits`` /
    ``colours`` are (B, K) class indices (−1 = no object). The gradient reaches the tower
    through exactly the tokens inside the boxes."""
    weights = masks.to(tokens)
    count = weights.sum(-1)
    valid = (count > 0) & (digits >= 0)
    if not bool(valid.any()):
        return tokens.sum() * 0.0
    pooled = torch.einsum("bkp,bpd->bkd", weights, tokens) / count.clamp(min=1)[..., None]
    digit_logits, colour_logits = heads(pooled[valid])
    return F.cross_entropy(digit_logits, digits[valid].to(tokens.device)) + F.cross_entropy(
        colour_logits, colours[valid].to(tokens.device)
    )


@dataclass
class ObjectTargets:
    """A batch's objects, as :func:`object_loss` reads them.

    Attributes:
        boxes: ``(B, K, 4)`` pixel boxes ``(x0, y0, x1, y1)`` in the images the tower sees
            (moved with the images by the stage's jitter, see :func:`warp_boxes`).
        present: ``(B, K)`` bool, the object exists.
        digits, colours: ``(B, K)`` class indices (−1 = no object).
        image_size: the images' ``(width, height)``.
    """

    boxes: Tensor
    present: Tensor
    digits: Tensor
    colours: Tensor
    image_size: tuple[int, int]

    def loss(self, heads: ObjectHeads, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """:func:`object_loss` of ``heads`` on the patch ``tokens`` (B, P, D) of a ``grid``."""
        masks = object_patch_masks(self.boxes, self.present, self.image_size, grid)
        return object_loss(heads, tokens, masks.to(tokens.device), self.digits, self.colours)
