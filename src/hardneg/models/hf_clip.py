"""Adapter that exposes a ``transformers.CLIPModel`` through hardneg's encoder interface.

- text tokens = ``text_model`` last hidden state (after its final LayerNorm), mask = the
  tokenizer's attention mask, pooled = ``text_projection(pooler_output)`` (EOS state);
- image tokens = ``vision_model`` last hidden state without CLS, after ``post_layernorm``,
  pooled = ``visual_projection(pooler_output)`` — i.e. ``CLIPModel.get_image_features``.

Images come in as ``(B, 3, H, W)`` tensors in [0, 1] and are resized/cropped to the model's
``image_size`` and normalised with the processor's (default: CLIP's) mean and std.
No weights are downloaded: :meth:`HFCLIPAdapter.from_pretrained` only reads a local directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from hardneg.models.freeze import FreezableModule
from hardneg.models.hf_text import HFTextTower, check_tokenizer_settings
from hardneg.models.image import CLIP_MEAN, CLIP_STD, check_images, resize_and_normalize
from hardneg.models.outputs import ImageOutput, TextOutput

if TYPE_CHECKING:
    from transformers import CLIPModel

#: Weight files ``CLIPModel.from_pretrained`` reads from a local directory.
WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


class HFCLIPTextTower(HFTextTower):
    """Text half of a ``CLIPModel`` (its ``text_model`` and ``text_projection``, shared).

    Args:
        model: the ``transformers.CLIPModel``.
        tokenizer: a fast tokenizer whose ids fit the model's text vocabulary and whose EOS id
            is the model's ``text_config.eos_token_id`` (the CLIP tokenizer of the checkpoint).
        max_length: truncation length (default: the model's ``max_position_embeddings``).
        padding: ``"longest"`` or ``"max_length"``.
    """

    def __init__(
        self,
        model: CLIPModel,
        tokenizer: Any,
        max_length: int | None = None,
        padding: str = "longest",
    ) -> None:
        super().__init__()
        config = model.config.text_config
        max_length = config.max_position_embeddings if max_length is None else max_length
        check_tokenizer_settings(tokenizer, max_length, padding)
        if max_length > config.max_position_embeddings:
            raise ValueError(
                f"max_length {max_length} exceeds the model's max_position_embeddings "
                f"{config.max_position_embeddings}"
            )
        if len(tokenizer) > config.vocab_size:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} ids but the text model only "
                f"{config.vocab_size} embeddings; use the checkpoint's own tokenizer"
            )
        _check_eos(tokenizer, config.eos_token_id)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding
        self.text_model = model.text_model
        self.projection = model.text_projection
        self.token_dim = int(config.hidden_size)
        self.pooled_dim = int(model.text_projection.out_features)

    def input_embedding(self) -> nn.Embedding:
        return self.text_model.get_input_embeddings()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextOutput:
        """Token states, projected EOS embedding; shapes ``(B, L)`` in."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        pooled = self.projection(out.pooler_output)
        return TextOutput(out.last_hidden_state, attention_mask.bool(), pooled, input_ids)


def _check_eos(tokenizer: Any, eos_token_id: int | None) -> None:
    """ValueError unless the tokenizer ends a caption with the model's EOS id.

    CLIP's text model pools the first ``eos_token_id`` position (``transformers`` reads the
    legacy id 2 as "the largest id" instead); a tokenizer that never writes that id makes it
    pool position 0 for every caption: identical features, a loss stuck at ln B.
    """
    if eos_token_id is None or eos_token_id == 2:
        return
    ids = tokenizer("a photo of a cat")["input_ids"]
    if eos_token_id not in ids:
        raise ValueError(
            f"the text model pools its EOS token (text_config.eos_token_id={eos_token_id}) but "
            f"the tokenizer never writes it (a caption tokenizes to {ids}): every caption would "
            "get the same feature. Use the checkpoint's own tokenizer, or set "
            f"text_config.eos_token_id to the id the tokenizer ends captions with ({ids[-1]})"
        )


class HFCLIPImageTower(FreezableModule):
    """Vision half of a ``CLIPModel`` (its ``vision_model`` and ``visual_projection``).

    Args:
        model: the ``transformers.CLIPModel``.
        image_mean, image_std: per-channel normalisation (CLIP's by default).
    """

    def __init__(
        self,
        model: CLIPModel,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        config = model.config.vision_config
        side = config.image_size // config.patch_size
        self.image_size = (config.image_size, config.image_size)
        self.grid = (side, side)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.vision_model = model.vision_model
        self.projection = model.visual_projection
        self.token_dim = int(config.hidden_size)
        self.pooled_dim = int(model.visual_projection.out_features)

    def forward(self, images: Tensor) -> ImageOutput:
        """Images ``(B, 3, H, W)`` in [0, 1] → patch tokens ``(B, P, D_v)`` and pooled."""
        check_images(images)
        pixels = resize_and_normalize(images, self.image_size, self.image_mean, self.image_std)
        out = self.vision_model(pixel_values=pixels.to(self.projection.weight.dtype))
        tokens = self.vision_model.post_layernorm(out.last_hidden_state[:, 1:])
        return ImageOutput(tokens, self.projection(out.pooler_output), self.grid)


class HFCLIPAdapter(nn.Module):
    """A ``transformers.CLIPModel`` as a pair of hardneg towers (``.text``, ``.image``).

    Plug the towers into :class:`~hardneg.models.dual.DualEncoder` (``embed_dim=None`` keeps
    CLIP's own projections) and the cross-modal transformer (``token_dim`` of each tower).

    Args:
        model: a ``CLIPModel`` (pretrained or randomly initialised).
        processor_or_tokenizer: a ``CLIPProcessor`` (tokenizer + image mean/std) or a fast
            tokenizer alone (CLIP's mean/std are then used).
        max_length, padding: see :class:`HFCLIPTextTower`.

    Example:
        >>> adapter = HFCLIPAdapter.from_pretrained("/models/clip-vit-b32")  # doctest: +SKIP
        >>> img = adapter.encode_image(torch.rand(2, 3, 224, 224))  # doctest: +SKIP
        >>> img.tokens.shape, img.pooled.shape  # doctest: +SKIP
        (torch.Size([2, 49, 768]), torch.Size([2, 512]))
    """

    def __init__(
        self,
        model: CLIPModel,
        processor_or_tokenizer: Any,
        max_length: int | None = None,
        padding: str = "longest",
    ) -> None:
        super().__init__()
        tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
        image_processor = getattr(processor_or_tokenizer, "image_processor", None)
        mean = getattr(image_processor, "image_mean", None) or CLIP_MEAN
        std = getattr(image_processor, "image_std", None) or CLIP_STD
        self.text = HFCLIPTextTower(model, tokenizer, max_length, padding)
        self.image = HFCLIPImageTower(model, mean, std)
        self.logit_scale = model.logit_scale

    def encode_text(self, texts: list[str]) -> TextOutput:
        """Tokenise and encode captions (see :class:`HFCLIPTextTower`)."""
        return self.text.encode_text(texts)

    def encode_image(self, images: Tensor) -> ImageOutput:
        """Encode images in [0, 1] (see :class:`HFCLIPImageTower`)."""
        return self.image(images)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFCLIPAdapter:
        """Load a CLIP checkpoint from a local directory (never from the Hub).

        Raises:
            FileNotFoundError: the directory, its config.json or its weights are missing
                (see :func:`load_hf_clip`).
        """
        return cls(*load_hf_clip(path), **kwargs)


def load_hf_clip(path: str | Path) -> tuple[CLIPModel, Any]:
    """``(CLIPModel, processor)`` of a local ``save_pretrained`` directory (never the Hub).

    The processor is the directory's ``AutoProcessor`` (tokenizer + image processor), or its
    tokenizer alone when it has no image processor.

    Raises:
        FileNotFoundError: the directory, its config.json or its weights are missing.
    """
    path = Path(path)
    has_weights = path.is_dir() and any((path / name).is_file() for name in WEIGHT_FILES)
    if not (path / "config.json").is_file() or not has_weights:
        raise FileNotFoundError(
            f"no CLIP checkpoint (config.json + model.safetensors/pytorch_model.bin) in "
            f"{str(path)!r}: download the weights on a machine with internet (e.g. "
            "`huggingface-cli download openai/clip-vit-base-patch32 --local-dir DIR`) and "
            "pass the local directory"
        )
    from transformers import AutoProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(path), local_files_only=True)
    try:
        processor: Any = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError):
        processor = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, processor
