"""Adapter that exposes an ``open_clip`` CLIP model through hardneg's encoder interface.

- text tokens = the text transformer's output after ``ln_final`` (causal, so states before
  EOT never see padding), mask = positions up to the last non-pad token (SOT…EOT),
  pooled = ``text_projection`` of the pooled state (EOT for CLIP) — ``model.encode_text``;
- image tokens = the ViT's patch tokens after ``ln_post`` (CLS dropped), via the visual
  tower's ``forward_intermediates``, pooled = ``model.encode_image``.

Supported: ``open_clip.model.CLIP`` with a ViT visual tower (``open_clip.create_model(name,
pretrained=None)`` builds one offline; pretrained weights must be local files). The text
tokenizer is open_clip's ``SimpleTokenizer`` (its BPE vocabulary ships inside the package) or
any open_clip tokenizer for encoding; ``word_ids`` needs a tokenizer with ``encode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hardneg.models.freeze import FreezableModule
from hardneg.models.image import CLIP_MEAN, CLIP_STD, check_images, resize_and_normalize
from hardneg.models.outputs import ImageOutput, TextOutput
from hardneg.models.text import TextTower, check_texts


def _check_clip(model: Any) -> None:
    needed = ("visual", "token_embedding", "positional_embedding", "transformer", "ln_final")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ValueError(
            f"{type(model).__name__} lacks {missing}: OpenCLIPAdapter supports "
            "open_clip.model.CLIP (built-in text transformer), not CustomTextCLIP/CoCa"
        )
    if not hasattr(model.visual, "forward_intermediates") or not hasattr(model.visual, "conv1"):
        raise ValueError(
            f"visual tower {type(model.visual).__name__} is not a ViT with forward_intermediates;"
            " use a ViT model and an open_clip_torch version that has forward_intermediates"
        )


class OpenCLIPTextTower(TextTower):
    """Text half of an open_clip ``CLIP`` (shares its embedding, transformer, ``ln_final`` and
    ``text_projection``).

    Args:
        model: ``open_clip.model.CLIP``.
        tokenizer: open_clip tokenizer (callable ``texts -> LongTensor (B, context_length)``).
        pad_token_id: id used for padding (0 for ``SimpleTokenizer``).
    """

    def __init__(self, model: Any, tokenizer: Any, pad_token_id: int = 0) -> None:
        super().__init__()
        _check_clip(model)
        self.tokenizer = tokenizer
        self.context_length = int(model.context_length)
        self._pad = pad_token_id
        self.token_embedding = model.token_embedding
        self.positional_embedding = model.positional_embedding
        self.transformer = model.transformer
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.pool_type = model.text_pool_type
        self.eos_id = getattr(model, "text_eos_id", None)
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        self._vocab = int(model.vocab_size)
        self.token_dim = int(model.transformer.width)
        projection = model.text_projection
        if projection is None:
            self.pooled_dim = self.token_dim
        elif isinstance(projection, nn.Linear):
            self.pooled_dim = int(projection.out_features)
        else:
            self.pooled_dim = int(projection.shape[1])

    def input_embedding(self) -> nn.Embedding:
        return self.token_embedding

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        ids = self.tokenizer(check_texts(texts), context_length=self.context_length).long()
        if int(ids.max()) >= self._vocab:
            raise ValueError(
                f"tokenizer produced id {int(ids.max())} but the model has {self._vocab} "
                "embeddings; use the tokenizer that matches the model"
            )
        return {"input_ids": ids, "attention_mask": self._real_tokens(ids).long()}

    def _real_tokens(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        last = torch.where(ids != self._pad, positions, -1).amax(dim=1, keepdim=True)
        return positions <= last

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextOutput:
        """Same computation as ``CLIP.encode_text``, keeping the token states."""
        from open_clip.transformer import text_global_pool

        length = input_ids.shape[1]
        cast = self.transformer.get_cast_dtype()
        x = self.token_embedding(input_ids).to(cast) + self.positional_embedding[:length].to(cast)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        batch_first = getattr(self.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        x = self.transformer(x, attn_mask=mask)
        x = x if batch_first else x.transpose(0, 1)
        tokens = self.ln_final(x)
        pooled = text_global_pool(tokens, input_ids, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            pooled = self.text_projection(pooled)
        elif self.text_projection is not None:
            pooled = pooled @ self.text_projection
        return TextOutput(tokens, attention_mask.bool(), pooled, input_ids)

    def word_ids(self, texts: list[str]) -> list[list[int | None]]:
        """Token → word index by encoding each ``text.split()`` word alone (the BPE never
        merges across whitespace), with SOT/EOT/padding → None and the tokenizer's
        truncation (last kept position becomes EOT)."""
        encode = getattr(self.tokenizer, "encode", None)
        if encode is None:
            raise ValueError(
                f"{type(self.tokenizer).__name__} has no encode(); word_ids needs open_clip's "
                "SimpleTokenizer"
            )
        rows = []
        for text in check_texts(texts):
            ids: list[int | None] = [None]
            for k, word in enumerate(text.split()):
                ids += [k] * len(encode(word))
            ids = [*ids, None][: self.context_length]
            ids[-1] = None
            rows.append(ids + [None] * (self.context_length - len(ids)))
        return rows

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def mask_token_id(self) -> int | None:
        return None

    @property
    def pad_token_id(self) -> int:
        return self._pad

    @property
    def special_token_ids(self) -> tuple[int, ...]:
        return tuple(int(i) for i in getattr(self.tokenizer, "all_special_ids", ()))


class OpenCLIPImageTower(FreezableModule):
    """Visual half of an open_clip ``CLIP`` (its ViT ``visual`` module).

    Args:
        model: ``open_clip.model.CLIP`` with a ViT visual tower.
        image_mean, image_std: normalisation; default: ``model.visual.image_mean/std`` when
            open_clip set them, else CLIP's.
    """

    def __init__(
        self,
        model: Any,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_clip(model)
        visual = model.visual
        self.visual = visual
        self.image_size = tuple(visual.image_size)
        self.grid = tuple(visual.grid_size)
        self.image_mean = tuple(image_mean or getattr(visual, "image_mean", None) or CLIP_MEAN)
        self.image_std = tuple(image_std or getattr(visual, "image_std", None) or CLIP_STD)
        self.token_dim = int(visual.transformer.width)
        self.pooled_dim = int(visual.output_dim)

    def forward(self, images: Tensor) -> ImageOutput:
        """Images ``(B, 3, H, W)`` in [0, 1] → patch tokens and ``encode_image`` features."""
        check_images(images)
        pixels = resize_and_normalize(images, self.image_size, self.image_mean, self.image_std)
        pixels = pixels.to(self.visual.conv1.weight.dtype)
        out = self.visual.forward_intermediates(
            pixels, indices=1, normalize_intermediates=True, output_fmt="NLC"
        )
        return ImageOutput(out["image_intermediates"][-1], out["image_features"], self.grid)


class OpenCLIPAdapter(nn.Module):
    """An open_clip ``CLIP`` model as a pair of hardneg towers (``.text``, ``.image``).

    Args:
        model: ``open_clip.model.CLIP`` (ViT visual tower, built-in text transformer).
        tokenizer: ``open_clip.tokenizer.SimpleTokenizer()`` or ``open_clip.get_tokenizer(name)``.
        image_mean, image_std: optional normalisation override.

    Example:
        >>> import open_clip  # doctest: +SKIP
        >>> model = open_clip.create_model("ViT-B-32", pretrained=None)  # doctest: +SKIP
        >>> adapter = OpenCLIPAdapter(model, open_clip.get_tokenizer("ViT-B-32"))  # doctest: +SKIP
        >>> adapter.encode_text(["a red 3"]).pooled.shape  # doctest: +SKIP
        torch.Size([1, 512])
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.text = OpenCLIPTextTower(model, tokenizer)
        self.image = OpenCLIPImageTower(model, image_mean, image_std)
        self.logit_scale = model.logit_scale

    def encode_text(self, texts: list[str]) -> TextOutput:
        """Tokenise and encode captions (see :class:`OpenCLIPTextTower`)."""
        return self.text.encode_text(texts)

    def encode_image(self, images: Tensor) -> ImageOutput:
        """Encode images in [0, 1] (see :class:`OpenCLIPImageTower`)."""
        return self.image(images)
