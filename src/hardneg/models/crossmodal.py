r"""Cross-modal transformer: caption tokens attend to image patch tokens (BACL seed 001, §Model).

Each of the ``num_layers`` pre-LN layers is

.. math::
    x \leftarrow x + \mathrm{SelfAttn}(\mathrm{LN}(x); \text{key padding mask}),\quad
    x \leftarrow x + \mathrm{CrossAttn}(\mathrm{LN}(x), M),\quad
    x \leftarrow x + \mathrm{MLP}(\mathrm{LN}(x)),

with ``x`` the projected caption token states (+ learned positions) and ``M`` the projected
image patch tokens. Attention is written out (``softmax(q kᵀ / √d_h)``) so that the
cross-attention maps ``A ∈ (B, H, T, P)`` are returned exactly — post-softmax, before
dropout, differentiable — for the contrastive local attention loss (CLA) and AEL.

Heads: ITM (image–text match logit from the first token or a masked mean, as ALBEF/BLIP) and
MLM (masked-token prediction, used by FALCON's reward, arXiv:2505.11192 §3). The text input
is the text tower's *non-contextual* token embeddings (``TextTower.embed_tokens``), not its
last-layer states: a contextual state of a neighbouring word encodes the masked word (a
linear probe on two neighbours' MiniLM states recovers a masked colour every time), so MLM
could be solved without the image. Masked positions' embeddings are replaced by a learned
[MASK] vector (always; no 80/10/10 split); the four self-attention layers contextualise the
rest, and the only source of the masked word is the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hardneg.models.crossmodal_config import CrossModalConfig
from hardneg.models.crossmodal_layers import CrossModalLayer, init_weights
from hardneg.models.outputs import ImageOutput, TextOutput

__all__ = ["CrossModalOutput", "CrossModalTransformer", "last_layer_attention"]


@dataclass
class CrossModalOutput:
    """Result of :class:`CrossModalTransformer` on B (caption, image) pairs.

    Args:
        hidden: ``(B, T, d_model)`` final (layer-normed) caption token states.
        cross_attentions: per layer ``(B, H, T, P)`` text→image attention, rows sum to 1.
        self_attentions: per layer ``(B, H, T, T)`` text self-attention.
        itm_logit: ``(B,)`` match score (logit; > 0 means "matched").
        text_mask: ``(B, T)`` True for real caption tokens (rows of padding queries in the
            attention maps are computed but meaningless).
    """

    hidden: Tensor
    cross_attentions: list[Tensor]
    self_attentions: list[Tensor]
    itm_logit: Tensor
    text_mask: Tensor


def last_layer_attention(out: CrossModalOutput) -> Tensor:
    """Head-averaged last-layer cross-attention ``(B, T, P)`` (the map CLA and AEL use).

    Example:
        >>> cfg = CrossModalConfig(text_dim=8, image_dim=4, d_model=16, vocab_size=10)
        >>> model = CrossModalTransformer(cfg)
        >>> out = model(torch.randn(2, 5, 8), torch.randn(2, 9, 4))
        >>> last_layer_attention(out).shape
        torch.Size([2, 5, 9])
    """
    return out.cross_attentions[-1].mean(dim=1)


class CrossModalTransformer(nn.Module):
    """Caption-over-image transformer with ITM and MLM heads (see the module docstring).

    Inputs are token states from the towers: text ``(B, T, D_t)`` with a padding mask and
    image patches ``(B, P, D_v)``; both are projected to ``d_model`` (Linear + LayerNorm) and
    learned positions are added to the text side (the [MASK] vector has no position of its
    own); patch tokens already carry their tower's positional embedding. Weights start as
    BERT's (normal, std 0.02), so attention is near-uniform and the MLM loss ≈ ln(vocab) at
    initialisation. Build the config from the towers: ``text_dim=text_tower.token_dim``,
    ``image_dim=image_tower.token_dim``, ``vocab_size=text_tower.vocab_size``,
    ``special_token_ids=text_tower.special_token_ids``.

    Args:
        config: :class:`CrossModalConfig`.

    Example:
        >>> cfg = CrossModalConfig(text_dim=8, image_dim=4, d_model=16, vocab_size=10)
        >>> model = CrossModalTransformer(cfg)
        >>> text = TextOutput(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool),
        ...                   torch.randn(2, 8), torch.randint(0, 10, (2, 5)))
        >>> image = ImageOutput(torch.randn(2, 9, 4), torch.randn(2, 4), (3, 3))
        >>> out = model(text, image)
        >>> out.itm_logit.shape, out.cross_attentions[0].shape
        (torch.Size([2]), torch.Size([2, 4, 5, 9]))
        >>> model.mlm_loss(text, image, torch.Generator().manual_seed(0)).dim()
        0
    """

    def __init__(self, config: CrossModalConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.text_in = nn.Sequential(nn.Linear(config.text_dim, d), nn.LayerNorm(d))
        self.image_in = nn.Sequential(nn.Linear(config.image_dim, d), nn.LayerNorm(d))
        self.text_pos = nn.Parameter(torch.zeros(1, config.max_text_len, d))
        self.mask_embedding = nn.Parameter(torch.zeros(config.text_dim))
        self.layers = nn.ModuleList(CrossModalLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(d)
        self.itm_head = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
        self.mlm_head = nn.Sequential(
            nn.Linear(d, d),
            nn.GELU(),
            nn.LayerNorm(d),
            nn.Linear(d, len(config.mlm_vocab) or config.vocab_size),
        )
        # token id → row of the MLM head's output (identity for the whole vocabulary)
        rows = torch.arange(config.vocab_size)
        if config.mlm_vocab:
            rows = torch.full((config.vocab_size,), -1, dtype=torch.long)
            rows[list(config.mlm_vocab)] = torch.arange(len(config.mlm_vocab))
        self.register_buffer("mlm_rows", rows, persistent=False)
        self.register_buffer(
            "special_ids",
            torch.tensor(config.special_token_ids, dtype=torch.long),
            persistent=False,
        )
        self.apply(init_weights)
        nn.init.normal_(self.text_pos, std=0.02)
        nn.init.normal_(self.mask_embedding, std=0.02)

    def forward(
        self,
        text: TextOutput | Tensor,
        image: ImageOutput | Tensor,
        text_mask: Tensor | None = None,
    ) -> CrossModalOutput:
        """Run B (caption, image) pairs.

        Args:
            text: a :class:`TextOutput` or token states ``(B, T, D_t)`` (e.g. masked states).
            image: an :class:`ImageOutput` or patch tokens ``(B, P, D_v)``.
            text_mask: ``(B, T)`` bool, True = real token; defaults to ``text.mask`` for a
                TextOutput and to all-True for a tensor.
        """
        tokens = text.tokens if isinstance(text, TextOutput) else text
        if text_mask is None:
            text_mask = text.mask if isinstance(text, TextOutput) else None
        patches = image.tokens if isinstance(image, ImageOutput) else image
        text_mask = self._check_inputs(tokens, text_mask, patches)

        x = self.text_in(tokens) + self.text_pos[:, : tokens.shape[1]]
        memory = self.image_in(patches)
        self_maps, cross_maps = [], []
        for layer in self.layers:
            x, self_probs, cross_probs = layer(x, text_mask, memory)
            self_maps.append(self_probs)
            cross_maps.append(cross_probs)
        hidden = self.norm(x)
        if self.config.itm_pool == "cls":
            pooled = hidden[:, 0]
        else:
            weights = text_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        itm_logit = self.itm_head(pooled).squeeze(-1)
        return CrossModalOutput(hidden, cross_maps, self_maps, itm_logit, text_mask)

    def _check_inputs(self, tokens: Tensor, text_mask: Tensor | None, patches: Tensor) -> Tensor:
        cfg = self.config
        if tokens.dim() != 3 or tokens.shape[-1] != cfg.text_dim:
            raise ValueError(
                f"text tokens must be (B, T, text_dim={cfg.text_dim}), got "
                f"{tuple(tokens.shape)}; set CrossModalConfig.text_dim to the tower's token_dim"
            )
        if patches.dim() != 3 or patches.shape[-1] != cfg.image_dim:
            raise ValueError(
                f"image tokens must be (B, P, image_dim={cfg.image_dim}), got "
                f"{tuple(patches.shape)}; set CrossModalConfig.image_dim to the tower's token_dim"
            )
        if patches.shape[0] != tokens.shape[0]:
            raise ValueError(
                f"{tokens.shape[0]} captions but {patches.shape[0]} images; pass one image per "
                "caption (use TextOutput.select / ImageOutput.select to build pairs)"
            )
        if tokens.shape[1] > cfg.max_text_len:
            raise ValueError(
                f"captions have {tokens.shape[1]} tokens but max_text_len is {cfg.max_text_len};"
                " raise CrossModalConfig.max_text_len or tokenize with a smaller max_length"
            )
        if text_mask is None:
            return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        if text_mask.shape != tokens.shape[:2] or text_mask.dtype != torch.bool:
            raise ValueError(
                f"text_mask must be bool {tuple(tokens.shape[:2])}, got {text_mask.dtype} "
                f"{tuple(text_mask.shape)}"
            )
        return text_mask

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Logits ``(..., V)`` over the MLM vocabulary (``V = len(mlm_vocab)`` or
        ``vocab_size``; :attr:`mlm_rows` maps a token id to its column) for hidden states
        ``(..., d_model)``."""
        return self.mlm_head(hidden)

    def choose_mask(
        self,
        text: TextOutput,
        prob: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Choose MLM targets: a ``(B, T)`` bool mask of the positions to predict.

        Each real, non-special token is chosen independently with probability ``prob``
        (default ``config.mask_prob``); a caption with no chosen token gets its maskable token
        of smallest draw, so every caption with a maskable token contributes (BERT §3.1 masks
        15% of tokens; short captions would otherwise often have none). Random draws come from
        ``generator`` (same seed ⇒ same mask).
        """
        prob = self.config.mask_prob if prob is None else prob
        if not 0.0 < prob < 1.0:
            raise ValueError(f"prob must be in (0, 1), got {prob}")
        ids = text.input_ids
        maskable = text.mask & ~torch.isin(ids, self.special_ids.to(ids.device))
        draw_device = generator.device if generator is not None else ids.device
        draws = torch.rand(ids.shape, generator=generator, device=draw_device).to(ids.device)
        chosen = (draws < prob) & maskable
        fallback = draws.masked_fill(~maskable, 2.0).argmin(dim=1)
        needs = maskable.any(dim=1) & ~chosen.any(dim=1)
        return chosen | (F.one_hot(fallback, ids.shape[1]).bool() & needs.unsqueeze(1))

    def apply_mask(self, tokens: Tensor, chosen: Tensor) -> Tensor:
        """Replace the input vectors at ``chosen`` ``(B, T)`` by the learned [MASK] vector."""
        if chosen.shape != tokens.shape[:2] or chosen.dtype != torch.bool:
            raise ValueError(
                f"chosen must be bool {tuple(tokens.shape[:2])} like the tokens, got "
                f"{chosen.dtype} {tuple(chosen.shape)}"
            )
        mask_vec = self.mask_embedding.to(tokens.dtype)
        return torch.where(chosen.unsqueeze(-1), mask_vec, tokens)

    def mlm_loss(
        self,
        text: TextOutput,
        image: ImageOutput | Tensor,
        generator: torch.Generator | None = None,
        prob: float | None = None,
        chosen: Tensor | None = None,
        num_targets: Tensor | float | None = None,
        premasked: bool = False,
    ) -> Tensor:
        r"""Cross-entropy of the masked tokens given the image.

        .. math:: \mathcal L_{MLM} = \frac{1}{N}\sum_{(b,t)\in\text{chosen}}
            -\log p_\theta(\mathrm{id}_{bt} \mid \tilde T_b, I_b)

        Args:
            text: captions whose ``tokens`` are the cross-modal input vectors (non-contextual
                embeddings, see the module docstring) and whose ``input_ids`` are the labels.
            image: the paired images' patch tokens.
            generator, prob: draw the targets with :meth:`choose_mask` (when ``chosen`` is None).
            chosen: ``(B, T)`` bool targets drawn beforehand (e.g. once per training step, so
                that FALCON's before/after losses score the same targets).
            num_targets: the normaliser ``N`` (default: the number of chosen tokens; under DDP
                pass the global count ÷ world so the mean over ranks is the global token mean).
            premasked: ``text.tokens`` are already masked at ``chosen`` (e.g. the states of a
                caption whose chosen words were [MASK] tokens before its encoder): the learned
                [MASK] vector is not applied.

        Returns 0 (not NaN) when nothing is maskable. Logits are computed for the masked
        positions only (B·T·vocab would not fit in memory).
        """
        if chosen is None:
            chosen = self.choose_mask(text, prob, generator)
        if premasked and chosen is None:
            raise ValueError("premasked=True needs the chosen targets the inputs were masked at")
        tokens = text.tokens if premasked else self.apply_mask(text.tokens, chosen)
        out = self(tokens, image, text_mask=text.mask)
        logits = self.mlm_logits(out.hidden[chosen]).float()
        labels = self.mlm_rows[text.input_ids[chosen]]
        if bool((labels < 0).any()):
            token = int(text.input_ids[chosen][labels < 0][0])
            raise ValueError(
                f"MLM target token id {token} is not in CrossModalConfig.mlm_vocab; build the "
                "vocabulary from every caption the model will score (or pass mlm_vocab=())"
            )
        total = F.cross_entropy(logits, labels, reduction="sum")
        if num_targets is None:
            num_targets = chosen.sum().clamp_min(1)
        return total / num_targets
