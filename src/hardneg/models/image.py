"""Small image towers trained from scratch that produce patch tokens + a pooled vector.

- :class:`ConvPatchEncoder`: stride-2 conv blocks (Conv-BN-GELU) down to a ``grid × grid``
  feature map whose cells are the patch tokens (6×6 for 48×48 input by default).
- :class:`TinyViT`: non-overlapping ``patch_size`` patches linearly embedded (ViT, Dosovitskiy
  et al. 2021, §3.1).

Both then add a learned positional embedding, optionally a CLS token, run ``num_layers``
pre-LN transformer layers and a final LayerNorm; pooled = CLS state or mean of patch tokens.
Input: ``(B, 3, H, W)`` float images in [0, 1] (mapped to [-1, 1] inside).
:func:`build_image_tower` picks one from an :class:`ImageTowerConfig`.

Helpers shared with the CLIP adapters: :func:`check_images`, :func:`resize_and_normalize`,
``CLIP_MEAN`` / ``CLIP_STD``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.models.freeze import FreezableModule
from hardneg.models.outputs import ImageOutput

#: Per-channel mean / std CLIP was trained with (OpenAI CLIP, used by both CLIP adapters).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: Architectures of the from-scratch image tower (``ImageTowerConfig.arch``).
ImageArch = Literal["conv", "vit"]
_ARCHS = get_args(ImageArch)
_POOLS = ("mean", "cls")


def check_images(images: Tensor, name: str = "images") -> None:
    """Raise ValueError unless ``images`` is a float ``(B, 3, H, W)`` tensor."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor in [0, 1], got {shape}")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} has dtype {images.dtype}; convert to float in [0, 1] (e.g. x.float() / 255)"
        )


def resize_and_normalize(
    images: Tensor, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """CLIP preprocessing for tensors: resize the short side, center-crop, standardise.

    Images in [0, 1] are resized (bicubic, antialiased) so that they cover ``size`` while
    keeping their aspect ratio, center-cropped to ``size`` and normalised per channel,
    ``(x - mean) / std`` — the tensor version of CLIP's PIL pipeline. Already-sized images are
    only normalised.

    Example:
        >>> x = torch.rand(2, 3, 48, 64)
        >>> resize_and_normalize(x, (32, 32), [0.5] * 3, [0.5] * 3).shape
        torch.Size([2, 3, 32, 32])
    """
    check_images(images)
    height, width = images.shape[-2:]
    if (height, width) != tuple(size):
        scale = max(size[0] / height, size[1] / width)
        new = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
        images = F.interpolate(
            images, size=new, mode="bicubic", align_corners=False, antialias=True
        )
        top, left = (new[0] - size[0]) // 2, (new[1] - size[1]) // 2
        images = images[..., top : top + size[0], left : left + size[1]]
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


@dataclass
class ImageTowerConfig:
    """Configuration of the from-scratch image towers.

    Args:
        arch: ``"conv"`` (:class:`ConvPatchEncoder`) or ``"vit"`` (:class:`TinyViT`).
        image_size: input side in pixels (square images).
        width: token dimension ``D_v``.
        grid: conv only — side of the output patch grid (``P = grid²``); stride-2 blocks halve
            the map while it stays at least ``grid``, an adaptive average pool does the rest.
        patch_size: vit only — patch side; ``image_size`` must be a multiple of it.
        num_layers: transformer layers after the stem (0 = none; ``"cls"`` pooling needs ≥ 1).
        num_heads: attention heads of those layers.
        mlp_ratio: hidden size of their MLPs relative to ``width``.
        dropout: dropout inside the transformer layers.
        pool: ``"mean"`` of patch tokens or a learned ``"cls"`` token.

    Example:
        >>> ImageTowerConfig(arch="vit", patch_size=8).image_size
        48
    """

    arch: ImageArch = "conv"
    image_size: int = 48
    width: int = 128
    grid: int = 6
    patch_size: int = 8
    num_layers: int = 1
    num_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    pool: str = "mean"

    def __post_init__(self) -> None:
        if self.arch not in _ARCHS:
            raise ValueError(f"arch must be one of {_ARCHS}, got {self.arch!r}")
        if self.pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {self.pool!r}")
        if self.pool == "cls" and self.num_layers < 1:
            raise ValueError("pool='cls' needs num_layers >= 1 (the CLS token must attend)")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.arch == "conv" and not 1 <= self.grid <= self.image_size:
            raise ValueError(f"grid must be in [1, image_size={self.image_size}], got {self.grid}")
        if self.arch == "vit" and self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the patch-token grid."""
        side = self.grid if self.arch == "conv" else self.image_size // self.patch_size
        return side, side


class PatchTokenEncoder(FreezableModule):
    """Shared trunk: stem → tokens + positional embedding (+CLS) → transformer → LayerNorm.

    Subclasses build ``self.stem`` mapping ``(B, 3, H, W)`` to a ``(B, width, h, w)`` map.
    """

    stem: nn.Module

    def __init__(self, config: ImageTowerConfig) -> None:
        super().__init__()
        self.config = config
        self.grid = config.grid_shape
        self.token_dim = self.pooled_dim = config.width
        patches = self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.randn(1, patches, config.width) * 0.02)
        self.cls_token = (
            nn.Parameter(torch.randn(1, 1, config.width) * 0.02) if config.pool == "cls" else None
        )
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.width,
                config.num_heads,
                dim_feedforward=int(config.width * config.mlp_ratio),
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.width)

    def forward(self, images: Tensor) -> ImageOutput:
        """Encode images ``(B, 3, H, W)`` in [0, 1] into :class:`ImageOutput`."""
        check_images(images)
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but the tower was built for "
                f"{(size, size)}; resize them or set ImageTowerConfig.image_size"
            )
        feats = self.stem(images * 2.0 - 1.0)
        tokens = feats.flatten(2).transpose(1, 2) + self.pos_embed
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        if self.cls_token is not None:
            return ImageOutput(tokens[:, 1:], tokens[:, 0], self.grid)
        return ImageOutput(tokens, tokens.mean(1), self.grid)


class ConvPatchEncoder(PatchTokenEncoder):
    """Conv stem whose final ``grid × grid`` map gives the patch tokens, fast on CPU.

    Blocks are Conv → BatchNorm → GELU: a patchifying conv (kernel = stride = 4, or the whole
    downsampling factor when it is smaller), then 3×3 stride-2 convs while the map stays at
    least ``grid`` wide, channels doubling up to ``width``; an adaptive average pool fixes
    the last non-power-of-two step. 48×48 → 12×12 → 6×6 by default (8×8 grid: 12×12 pooled).

    Args:
        config: :class:`ImageTowerConfig` with ``arch="conv"``.

    Example:
        >>> enc = ConvPatchEncoder(ImageTowerConfig(width=32, num_layers=0))
        >>> out = enc(torch.rand(2, 3, 48, 48))
        >>> out.tokens.shape, out.pooled.shape, out.grid
        (torch.Size([2, 36, 32]), torch.Size([2, 32]), (6, 6))
    """

    def __init__(self, config: ImageTowerConfig) -> None:
        super().__init__(config)
        factor = config.image_size // config.grid
        first = 4 if factor >= 4 else max(factor, 1)  # patchify stride of the first block
        strides = [first]
        while config.image_size // math.prod(strides) // 2 >= config.grid:
            strides.append(2)
        channels = [3] + [
            max(config.width >> (len(strides) - 1 - k), 16) for k in range(len(strides))
        ]
        channels[-1] = config.width
        layers: list[nn.Module] = []
        for k, stride in enumerate(strides):
            kernel, pad = (stride, 0) if k == 0 else (3, 1)
            layers += [
                nn.Conv2d(channels[k], channels[k + 1], kernel, stride, pad, bias=False),
                nn.BatchNorm2d(channels[k + 1]),
                nn.GELU(),
            ]
        layers.append(nn.AdaptiveAvgPool2d(config.grid))
        self.stem = nn.Sequential(*layers)


class TinyViT(PatchTokenEncoder):
    """ViT patch embedding (Conv with kernel = stride = ``patch_size``) + the shared trunk.

    Args:
        config: :class:`ImageTowerConfig` with ``arch="vit"``.

    Example:
        >>> vit = TinyViT(ImageTowerConfig(arch="vit", width=32, patch_size=8, pool="cls"))
        >>> vit(torch.rand(2, 3, 48, 48)).tokens.shape
        torch.Size([2, 36, 32])
    """

    def __init__(self, config: ImageTowerConfig) -> None:
        super().__init__(config)
        self.stem = nn.Conv2d(3, config.width, config.patch_size, config.patch_size)


def build_image_tower(config: ImageTowerConfig | None = None) -> PatchTokenEncoder:
    """The image tower named by ``config.arch`` (default: the 6×6-token conv encoder).

    Example:
        >>> build_image_tower(ImageTowerConfig(arch="vit")).grid
        (6, 6)
    """
    config = config or ImageTowerConfig()
    return ConvPatchEncoder(config) if config.arch == "conv" else TinyViT(config)
