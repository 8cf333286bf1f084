"""The dual encoder: an image tower and a text tower with one projection head each."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hardneg.models.heads import AttentionPoolHead, ProjectionHead
from hardneg.models.outputs import ImageOutput, TextOutput
from hardneg.models.text import TextTower, check_texts


@dataclass
class DualEncoderOutput:
    """Embeddings ``(B, E)`` of both sides (unnormalised) and the towers' full outputs."""

    image_emb: Tensor
    text_emb: Tensor
    image: ImageOutput
    text: TextOutput


_HEADS = ("linear", "attention")


def _pooled_dim(tower: nn.Module, argument: str) -> int:
    dim = getattr(tower, "pooled_dim", None)
    if not isinstance(dim, int):
        raise ValueError(
            f"{argument} ({type(tower).__name__}) has no integer attribute pooled_dim; use a "
            "tower from hardneg.models (or set pooled_dim to the size of its pooled vector)"
        )
    return dim


class DualEncoder(nn.Module):
    r"""CLIP-style dual encoder, :math:`u = g_v(f_v(x))`, :math:`v = g_t(f_t(T))`.

    ``f_v``/``f_t`` are the towers, ``g_v``/``g_t`` :class:`ProjectionHead`\ s from each
    tower's ``pooled_dim`` to ``embed_dim`` (Radford et al. 2021 §2.4). Embeddings are
    returned unnormalised (the losses normalise). The text side also accepts a precomputed
    :class:`TextOutput` — with a frozen text tower the token states are cached once and only
    the head runs during training.

    Args:
        image_tower: module with ``forward(images) -> ImageOutput`` and ``pooled_dim``.
        text_tower: a :class:`~hardneg.models.text.TextTower`.
        embed_dim: joint embedding size ``E``; None uses the pooled vectors as they are
            (both towers must then share ``pooled_dim``, e.g. already-projected CLIP towers).
        head_hidden: hidden width for 2-layer MLP heads (None: linear heads).
        head: ``"linear"`` (a :class:`ProjectionHead` of the pooled vector) or ``"attention"``
            (an :class:`AttentionPoolHead` over each tower's tokens: can represent word order
            and attribute binding, which a mean-pooled text vector cannot).
        head_width, head_layers, max_tokens: width, transformer layers and the longest token
            sequence of the attention heads.

    Example:
        >>> from hardneg.models import ConvPatchEncoder, ImageTowerConfig, MiniLMTextTower
        >>> image_tower = ConvPatchEncoder(ImageTowerConfig())
        >>> model = DualEncoder(image_tower, MiniLMTextTower())  # doctest: +SKIP
        >>> img_emb, img_out = model.encode_image(torch.rand(4, 3, 48, 48))  # doctest: +SKIP
        >>> txt_emb, txt_out = model.encode_text(["a red 3"] * 4)  # doctest: +SKIP
        >>> img_emb.shape, txt_emb.shape  # doctest: +SKIP
        (torch.Size([4, 256]), torch.Size([4, 256]))
    """

    def __init__(
        self,
        image_tower: nn.Module,
        text_tower: TextTower,
        embed_dim: int | None = 256,
        head_hidden: int | None = None,
        head: str = "linear",
        head_width: int = 128,
        head_layers: int = 1,
        max_tokens: int = 64,
    ) -> None:
        super().__init__()
        if head not in _HEADS:
            raise ValueError(f"head must be one of {_HEADS}, got {head!r}")
        image_dim = _pooled_dim(image_tower, "image_tower")
        text_dim = _pooled_dim(text_tower, "text_tower")
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.token_heads = head == "attention"
        if self.token_heads:
            if embed_dim is None:
                raise ValueError("head='attention' needs an embed_dim (its output size)")
            self.image_head = AttentionPoolHead(
                image_tower.token_dim, embed_dim, head_width, head_layers, max_tokens=max_tokens
            )
            self.text_head = AttentionPoolHead(
                text_tower.token_dim, embed_dim, head_width, head_layers, max_tokens=max_tokens
            )
            self.embed_dim = embed_dim
        elif embed_dim is None:
            if image_dim != text_dim:
                raise ValueError(
                    f"embed_dim=None needs equal pooled sizes, but image_tower gives {image_dim} "
                    f"and text_tower {text_dim}; pass embed_dim to add projection heads"
                )
            self.image_head: nn.Module = nn.Identity()
            self.text_head: nn.Module = nn.Identity()
            self.embed_dim = image_dim
        else:
            self.image_head = ProjectionHead(image_dim, embed_dim, head_hidden)
            self.text_head = ProjectionHead(text_dim, embed_dim, head_hidden)
            self.embed_dim = embed_dim

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        first = next(self.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def embed_image(self, out: ImageOutput) -> Tensor:
        """The image head on a tower output (e.g. cached features of a frozen tower)."""
        if self.token_heads:
            return self.image_head(out.tokens)
        return self.image_head(out.pooled)

    def embed_text(self, out: TextOutput) -> Tensor:
        """The text head on a tower output (e.g. cached states of a frozen tower)."""
        if self.token_heads:
            return self.text_head(out.tokens, out.mask)
        return self.text_head(out.pooled)

    def encode_image(self, images: Tensor) -> tuple[Tensor, ImageOutput]:
        """Images ``(B, 3, H, W)`` in [0, 1] → (embeddings ``(B, E)``, :class:`ImageOutput`)."""
        out = self.image_tower(images)
        return self.embed_image(out), out

    def encode_text(self, texts: list[str] | TextOutput) -> tuple[Tensor, TextOutput]:
        """Captions (strings, or a cached :class:`TextOutput`) → (``(B, E)``, TextOutput)."""
        if isinstance(texts, TextOutput):
            out = texts.to(self.device)
        else:
            out = self.text_tower.encode_text(check_texts(texts))
        return self.embed_text(out), out

    def forward(self, images: Tensor, texts: list[str] | TextOutput) -> DualEncoderOutput:
        """Encode a batch of pairs in one call (the entry point under DDP)."""
        image_emb, image = self.encode_image(images)
        text_emb, text = self.encode_text(texts)
        if len(image) != len(text):
            raise ValueError(
                f"got {len(image)} images but {len(text)} captions; pass one caption per image"
            )
        return DualEncoderOutput(image_emb, text_emb, image, text)
