"""The model every recipe trains: a dual encoder and a cross-modal transformer over it.

The dual encoder embeds each side for the contrastive loss; the cross-modal transformer scores
(caption, image) pairs for ITM, MLM and BACL's contrastive local attention loss. What it reads
(``crossmodal_input``):

- ``"tokens"``: the image tower's patch tokens and the text tower's *non-contextual* token
  embeddings (a masked word is replaced by a learned [MASK] vector and leaves no trace; see
  :mod:`hardneg.models.crossmodal`). With frozen towers no parameter of the dual encoder's
  heads enters the cross-modal terms.
- ``"heads"`` (ALBEF's fusion, arXiv:2107.07651 §3.1): the token states of the attention heads
  (:meth:`AttentionPoolHead.states`) over each tower's tokens: the parameters ITC trains, so
  ITC, ITM and MLM train shared parameters. For MLM the caption is encoded with its chosen
  words replaced by the tokenizer's [MASK] token *before* the text tower (a contextual state
  of a neighbour would otherwise carry the masked word), then through the text head.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from hardneg.models.crossmodal import CrossModalOutput, CrossModalTransformer
from hardneg.models.dual import DualEncoder
from hardneg.models.inputs import Images, Texts
from hardneg.models.outputs import ImageOutput, TextOutput


class AlignmentModel(nn.Module):
    """Dual encoder + cross-modal transformer (ITM / MLM heads, attention maps).

    Args:
        dual: the dual encoder (towers + heads).
        crossmodal: the cross-modal transformer over the towers' tokens (None: a dual
            encoder alone, for methods without ITM / CLA / MLM terms).
        reloaded_prefixes: state-dict prefixes left out of checkpoints because they are
            reloaded from their own package (the frozen builtin MiniLM text tower).
        crossmodal_input: what the cross-modal transformer reads: ``"tokens"`` (the towers')
            or ``"heads"`` (the attention heads' token states, ALBEF's fusion; needs
            attention heads and a text tower with a [MASK] token). See the module docstring.
    """

    def __init__(
        self,
        dual: DualEncoder,
        crossmodal: CrossModalTransformer | None,
        reloaded_prefixes: tuple[str, ...] = (),
        crossmodal_input: Literal["tokens", "heads"] = "tokens",
    ) -> None:
        super().__init__()
        if crossmodal_input not in ("tokens", "heads"):
            raise ValueError(
                f"crossmodal_input must be 'tokens' or 'heads', got {crossmodal_input!r}"
            )
        if crossmodal_input == "heads":
            if not dual.token_heads:
                raise ValueError(
                    "crossmodal_input='heads' reads the attention heads' token states; build "
                    "the dual encoder with head='attention' (model.head=attention)"
                )
            if dual.text_tower.mask_token_id is None:
                raise ValueError(
                    f"crossmodal_input='heads' masks MLM words with the tokenizer's [MASK] "
                    f"token, and {type(dual.text_tower).__name__}'s tokenizer has none; use "
                    "crossmodal_input='tokens'"
                )
        self.dual = dual
        self.crossmodal = crossmodal
        self.reloaded_prefixes = reloaded_prefixes
        self.crossmodal_input = crossmodal_input

    @property
    def fusion(self) -> bool:
        """Whether the cross-modal transformer reads the heads' token states (ALBEF)."""
        return self.crossmodal_input == "heads"

    def encode_images(self, images: Images) -> tuple[Tensor, ImageOutput]:
        """Embeddings and tower outputs: the head on cached features, else tower + head."""
        if images.features is not None:
            return self.dual.embed_image(images.features), images.features
        return self.dual.encode_image(images.pixels)

    def text_states(self, texts: Texts) -> TextOutput:
        """The text tower's output: the cached states, else the tower run on the ids."""
        if texts.states is not None:
            return texts.states
        return self.dual.text_tower(texts.input_ids, texts.mask.long())

    def encode_texts(self, texts: Texts) -> tuple[Tensor, TextOutput]:
        """Embeddings and text-tower outputs of ``texts``."""
        out = self.text_states(texts)
        return self.dual.embed_text(out), out

    def crossmodal_text(self, text: TextOutput | Texts) -> TextOutput:
        """Captions as the cross-modal transformer reads them (ids and mask kept).

        ``"tokens"``: the text tower's non-contextual token embeddings of ``text.input_ids``
        (only the ids and the mask are read, so :class:`Texts` need no text-tower pass).
        ``"heads"``: the text head's token states over the tower's states (``text`` as
        :meth:`encode_texts` returns it, or :class:`Texts`: the tower runs if not cached).
        """
        if self.fusion:
            states = text if isinstance(text, TextOutput) else self.text_states(text)
            tokens = self.dual.text_head.states(states.tokens, states.mask)
            return TextOutput(tokens, states.mask, states.pooled, states.input_ids)
        tokens = self.dual.text_tower.embed_tokens(text.input_ids)
        pooled = text.pooled if isinstance(text, TextOutput) else tokens[:, 0]
        return TextOutput(tokens, text.mask, pooled, text.input_ids)

    def crossmodal_image(self, image: ImageOutput) -> Tensor:
        """Images as the cross-modal transformer reads them: the tower's patch tokens
        (``"tokens"``) or the image head's token states over them (``"heads"``)."""
        if self.fusion:
            return self.dual.image_head.states(image.tokens)
        return image.tokens

    def match(self, text: TextOutput | Texts, image: ImageOutput) -> CrossModalOutput:
        """The cross-modal transformer on row-aligned (caption, image) pairs: ``text`` as
        :meth:`encode_texts` returns it (or :class:`Texts`) and ``image`` as
        :meth:`encode_images` returns it. The pair scorer of ITM, re-ranking and the
        compositional ITM probes."""
        if self.crossmodal is None:
            raise ValueError(
                "this model has no cross-modal head; train it with a method that has "
                "cross-modal terms (crossmodal.itm_weight > 0)"
            )
        return self.crossmodal(self.crossmodal_text(text), self.crossmodal_image(image))

    def mlm_loss(
        self,
        text: TextOutput | Texts,
        image: ImageOutput,
        chosen: Tensor,
        num_targets: Tensor | float | None = None,
        masked: Texts | None = None,
    ) -> Tensor:
        """The cross-modal MLM loss of ``text`` given ``image`` on the targets ``chosen``
        ``(B, T)`` (see :meth:`CrossModalTransformer.mlm_loss`).

        ``"heads"``: the caption enters the text tower with its chosen words replaced by the
        tokenizer's [MASK] token; ``masked`` passes those captions already encoded (e.g. a
        cache of masked variants; their ids must be ``text``'s with [MASK] at ``chosen``),
        else the tower runs on them.
        """
        if not self.fusion:
            return self.crossmodal.mlm_loss(
                self.crossmodal_text(text), self.crossmodal_image(image), chosen=chosen,
                num_targets=num_targets,
            )  # fmt: skip
        if masked is None:
            ids = text.input_ids.masked_fill(chosen, self.dual.text_tower.mask_token_id)
            masked = Texts(ids, text.mask)
        inputs = self.crossmodal_text(masked)
        return self.crossmodal.mlm_loss(
            TextOutput(inputs.tokens, inputs.mask, inputs.pooled, text.input_ids),
            self.crossmodal_image(image),
            chosen=chosen,
            num_targets=num_targets,
            premasked=True,
        )

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The state a checkpoint keeps (without the parts reloaded from their package)."""
        return {
            k: v for k, v in self.state_dict().items() if not k.startswith(self.reloaded_prefixes)
        }
