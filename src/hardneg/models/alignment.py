"""The model every recipe trains: a dual encoder and a cross-modal transformer over its towers.

The dual encoder embeds each side for the contrastive loss; the cross-modal transformer reads
the image tower's patch tokens and the text tower's *non-contextual* token embeddings (so a
masked word leaves no trace in its inputs; see :mod:`hardneg.models.crossmodal`) for ITM, MLM
and BACL's contrastive local attention loss.
"""

from __future__ import annotations

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
    """

    def __init__(
        self,
        dual: DualEncoder,
        crossmodal: CrossModalTransformer | None,
        reloaded_prefixes: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.dual = dual
        self.crossmodal = crossmodal
        self.reloaded_prefixes = reloaded_prefixes

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
        """Captions as the cross-modal head reads them: the text tower's non-contextual token
        embeddings of ``text.input_ids`` (see :mod:`hardneg.models.crossmodal`), so a masked
        word leaves no trace. Only the ids and the mask are read, so :class:`Texts` need no
        text-tower pass; the pooled vector (a TextOutput's own, else the first token's
        embedding) is not read by the head."""
        tokens = self.dual.text_tower.embed_tokens(text.input_ids)
        pooled = text.pooled if isinstance(text, TextOutput) else tokens[:, 0]
        return TextOutput(tokens, text.mask, pooled, text.input_ids)

    def match(self, text: TextOutput | Texts, image: ImageOutput) -> CrossModalOutput:
        """The cross-modal transformer on row-aligned (caption, image) pairs: ``text`` as
        :meth:`encode_texts` returns it (or :class:`Texts`: only ids and mask are read) and
        ``image`` as :meth:`encode_images` returns it. The pair scorer of ITM, re-ranking and
        the compositional ITM probes."""
        if self.crossmodal is None:
            raise ValueError(
                "this model has no cross-modal head; train it with a method that has "
                "cross-modal terms (crossmodal.itm_weight > 0)"
            )
        return self.crossmodal(self.crossmodal_text(text), image.tokens)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The state a checkpoint keeps (without the parts reloaded from their package)."""
        return {
            k: v for k, v in self.state_dict().items() if not k.startswith(self.reloaded_prefixes)
        }
