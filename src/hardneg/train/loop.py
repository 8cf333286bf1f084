"""The training loop: any recipe (data + model) × the objective × hooks, one optimizer step at a
time; AMP, gradient accumulation, DDP gradient averaging, checkpoint / exact resume, logging.

A step: the batch sampler (random | GRIT | FALCON | …) yields a global batch of item indices;
the recipe draws the step's random choices once (:class:`~hardneg.train.batch.StepDraw`) and
builds each micro-batch's shard for this rank; the objective computes the loss (its contrastive
loss gathers features from every rank with gradient); gradients are averaged over ranks
explicitly after backward; then one optimizer step and the hooks
(:mod:`hardneg.train.hooks`: BNS policy step, FALCON reward, …), which see only the loop's
:class:`~hardneg.train.hooks.TrainState`.

Why an explicit all-reduce and not ``torch.nn.parallel.DistributedDataParallel``: DDP prepares
its gradient averaging in its own ``forward`` and expects each wrapped parameter's gradient once
per ``forward``; it averages only the wrapped module's parameters. Here

- the model has no ``forward``: the objective calls it through several entry points
  (``encode_images``, ``encode_texts`` — twice with hard-negative captions — and the
  cross-modal head's ITM / MLM), and FALCON's reward calls it again in eval mode. Parameters
  reached outside ``forward`` break DDP's bookkeeping silently (measured with two gloo ranks and
  a module with ``forward`` plus a second entry point: after a backward through ``forward`` the
  ranks' gradients stayed unequal, 3.0 vs 6.0, because the bucket waited for the parameter only
  the other entry point reaches; the next backward, through that entry point, averaged the
  pending bucket instead, 4.5 on both ranks);
- GradCache (``optim.gradcache_chunk``) runs one backward per chunk of a micro-batch: after one
  DDP ``forward`` the second backward fails ("Expected to mark a variable ready only once"),
  so every entry point would need a ``forward`` of its own, ``no_sync`` on every pass but the
  last, and ``find_unused_parameters`` for the heads a method leaves unused;
- the loss's temperature and the BNS policy are parameters outside the model, averaged by the
  same all-reduce.

The all-reduce runs once per optimizer step (after the last micro-batch's backward), as DDP's
``no_sync`` accumulation would.

Runs single-process or under ``torchrun`` (gloo on CPU, nccl on CUDA). AMP (bf16/fp16
autocast) is used on CUDA only.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from hardneg.data.atomic_files import atomic_write
from hardneg.train.batch import Batch, StepDraw, micro_slices
from hardneg.train.builders import (
    build_batch_sampler,
    build_loss,
    build_miner,
    build_optimizer,
)
from hardneg.train.config import TrainConfig, config_from_dict
from hardneg.train.finite import non_finite_message
from hardneg.train.hooks import (
    Diagnostics,
    FalconReward,
    Hook,
    MinerPolicyStep,
    StoreRefresh,
    TrainState,
    has_train_eval_difference,
)
from hardneg.train.logwriter import LogWriter
from hardneg.train.objective import Objective
from hardneg.train.overflow import GradNormOverflow
from hardneg.train.recipes import BatchSampler, Recipe
from hardneg.train.rng import rng_state, set_rng_state
from hardneg.train.schedule import warmup_cosine


class Engine:
    """Train a recipe's model with ``cfg``'s objective; resumable; single process or DDP.

    Args:
        cfg: a validated :class:`TrainConfig`.
        recipe: the data and the model (:class:`Recipe`).
        rank, world: this process's rank and the world size.
        device: where the model runs.
        objective: the objective, its loss's parameters on ``device`` (default: the one
            ``cfg`` configures: its loss, miner and cross-modal terms).
    """

    #: figures averaged over every step trained, resumed runs included (see :meth:`summary`)
    SUMMARY_KEYS = ("selected_fn_rate", "batch_fn_rate")

    def __init__(
        self,
        cfg: TrainConfig,
        recipe: Recipe,
        rank: int,
        world: int,
        device: torch.device,
        objective: Objective | None = None,
    ) -> None:
        self.cfg, self.recipe = cfg, recipe
        self.rank, self.world, self.device = rank, world, device
        self.model = recipe.model
        if objective is None:
            loss_fn = build_loss(cfg, recipe.logit_scale).to(device)
            miner = build_miner(cfg)
            objective = Objective(
                loss_fn,
                cfg.crossmodal,
                None if miner is None else miner.to(device),
                cfg.miner.denominator,
                contrastive_weight=cfg.loss.weight,
            )
        self.objective = objective
        self.loss_fn = objective.loss_fn
        # a stream brings its own batches; map-style data is indexed by the hardness sampler
        hardness = None
        self.sampler: BatchSampler
        if recipe.batch_sampler is None:
            self.sampler = hardness = build_batch_sampler(
                cfg, recipe.train_size(), recipe.semantic_ids()
            )
        else:
            self.sampler = recipe.batch_sampler
        self.steps_per_epoch = max(1, len(self.sampler))
        self.state = TrainState(
            step=0,
            epoch=0,
            steps_per_epoch=self.steps_per_epoch,
            max_steps=cfg.steps,
            rank=rank,
            world=world,
            device=device,
        )
        self.diagnostics = Diagnostics(self.sampler)
        self.hooks: list[Hook] = [self.diagnostics]
        if hardness is not None and hardness.config.mode != "random":
            self.hooks.append(
                StoreRefresh(hardness, recipe.embed_untrained, self.autocast, cfg.batch_size)
            )
        if self.objective.miner is not None:
            self.hooks.append(MinerPolicyStep(self.objective.miner))
        if hardness is not None and hardness.policy is not None:
            was_training = self.model.training
            self.model.train()
            reuse = not cfg.optim.gradcache_chunk and not has_train_eval_difference(self.model)
            self.model.train(was_training)
            self.hooks.append(
                FalconReward(hardness.policy, self.model, self.objective.mlm, self.autocast, reuse)
            )
        named = list(self.model.named_parameters())
        named += [(f"loss_fn.{n}", p) for n, p in self.loss_fn.named_parameters()]
        self.optimizer = build_optimizer(cfg, named, exclude_from_decay=recipe.exclude_from_decay)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # running sums of the figures a run reports (checkpointed: a resumed run reports
        # what the uninterrupted run would)
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.step_times: list[float] = []
        self.out_dir = Path(cfg.out_dir)
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast_dtype = torch.bfloat16 if bf16 else torch.float16
        self.use_amp = cfg.amp and device.type == "cuda"
        self.grad_scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.autocast_dtype == torch.float16
        )
        self.overflow = GradNormOverflow()

    @property
    def step(self) -> int:
        """Optimizer steps taken so far."""
        return self.state.step

    @property
    def epoch(self) -> int:
        """Epochs of the batch sampler completed so far."""
        return self.state.epoch

    @property
    def selected_boundary_scores(self) -> list[Tensor]:
        """(step, BS) rows of the selected negatives' boundary scores (see
        :class:`~hardneg.train.hooks.Diagnostics`)."""
        return self.diagnostics.selected_boundary_scores

    @property
    def miner(self):
        """The negative miner (BNS), or None."""
        return self.objective.miner

    def _lr_factor(self, step: int) -> float:
        return warmup_cosine(step, self.cfg.optim.warmup_steps, self.cfg.steps)

    @property
    def progress(self) -> tuple[float, float]:
        """(η, total) in fractional epochs, for the BNS curriculum."""
        return self.state.progress

    def autocast(self):
        """The step's autocast context (a no-op off CUDA or with ``amp=False``)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.use_amp)

    # ------------------------------------------------------------------------------- steps
    def _sync_grads(self, params: list[Tensor]) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def micro_batches(self, draw: StepDraw) -> list[Batch]:
        """The step's micro-batches (``optim.grad_accum`` of them), this rank's shards."""
        parts = micro_slices(len(draw.index), self.cfg.optim.grad_accum)
        return [self.recipe.batch(draw, part, self.rank, self.world) for part in parts]

    def train_step(self, global_batch: list[int]) -> dict[str, float]:
        """One optimizer step on a global batch of item indices (split into micro-batches)."""
        self.model.train()
        t0 = time.perf_counter()
        draw = self.recipe.draw(torch.tensor(global_batch, dtype=torch.long), self.step)
        batches = self.micro_batches(draw)
        for hook in self.hooks:
            hook.before_update(self.state, draw, batches)
        logs: dict[str, float] = {}
        chunk = self.cfg.optim.gradcache_chunk
        for batch in batches:
            if chunk:  # backward happens inside, chunk by chunk
                out = self.objective.gradcache(
                    self.model,
                    batch,
                    self.progress,
                    self.autocast,
                    chunk,
                    self.grad_scaler,
                    1.0 / len(batches),
                )
            else:
                out = self.objective(self.model, batch, self.progress, self.autocast)
            for hook in self.hooks:
                hook.after_forward(self.state, batch, out)
            loss = out.loss
            if not torch.isfinite(loss):
                params = dict(self.model.named_parameters()) | dict(self.loss_fn.named_parameters())
                cause = non_finite_message(params) or "inputs and parameters are finite"
                raise FloatingPointError(
                    f"non-finite loss {float(loss)} at step {self.step} ({out.logs}); {cause}: "
                    "lower optim.lr or disable AMP"
                )
            if not chunk and loss.requires_grad:  # (nothing trains: the `frozen` baseline)
                self.grad_scaler.scale(loss / len(batches)).backward()
            for key, value in out.logs.items():
                logs[key] = logs.get(key, 0.0) + value / len(batches)
        self._update(logs)
        for hook in self.hooks:
            hook.after_update(self.state, draw, batches, logs)
        self.state.step += 1
        logs["lr"] = self.lr_schedule.get_last_lr()[0]
        logs["temperature"] = float(1.0 / self.loss_fn.scale().detach())
        logs["step_time"] = time.perf_counter() - t0
        logs = self._global_logs(logs)
        self._accumulate(logs)
        return logs

    def _update(self, logs: dict[str, float]) -> None:
        """Average gradients over ranks, clip, step (skipping non-finite AMP steps), schedule."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._sync_grads(params)
        self.grad_scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.max_grad_norm)
        logs["grad_norm"] = float(norm)
        # before the step: without a scaler a non-finite norm must never reach the parameters
        skipped = self.grad_scaler.is_enabled() and not math.isfinite(logs["grad_norm"])
        self.overflow.update(logs["grad_norm"], skipped=skipped, step=self.step)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_schedule.step()

    def _global_logs(self, logs: dict[str, float]) -> dict[str, float]:
        """Under DDP, every logged figure as the mean over ranks: a shard's loss becomes the
        global batch's (figures already global, such as the FN rates, stay as they are)."""
        if self.world == 1:
            return logs
        keys = sorted(logs)
        values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, (values / self.world).tolist()))

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

    # ----------------------------------------------------------------------------- the loop
    def _batches(self):
        while True:
            self.sampler.set_epoch(self.epoch)
            yield from self.sampler
            self.state.epoch += 1
            for hook in self.hooks:
                hook.end_epoch(self.state)

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
        writer = LogWriter(self.out_dir, enabled=main)
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
            "miner": None if self.miner is None else self.miner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "overflow": self.overflow.state_dict(),
            "sampler": self.sampler.state_dict(),
            "recipe": self.recipe.state_dict(),
            "rng": rng_state(),
            "summary": {
                "sums": self.sums,
                "counts": self.counts,
                "step_times": self.step_times,
                "selected_boundary_scores": self.selected_boundary_scores,
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
        reloaded = self.model.reloaded_prefixes
        bad = [k for k in missing if not k.startswith(reloaded)] + list(unexpected)
        if bad:
            raise ValueError(f"checkpoint does not match the model: {bad[:5]}")
        self.loss_fn.load_state_dict(state["loss_fn"])
        if self.miner is not None:
            self.miner.load_state_dict(state["miner"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.overflow.load_state_dict(state["overflow"])
        self.sampler.load_state_dict(state["sampler"])
        self.recipe.load_state_dict(state["recipe"])
        set_rng_state(state["rng"])
        self.state.step, self.state.epoch = state["step"], state["epoch"]
        summary = state["summary"]
        self.sums, self.counts = dict(summary["sums"]), dict(summary["counts"])
        self.step_times = list(summary["step_times"])
        self.diagnostics.selected_boundary_scores = list(summary["selected_boundary_scores"])

    def save(self, path: str | Path | None = None) -> Path:
        """Write ``checkpoint.pt`` atomically (rank 0 only)."""
        path = Path(path) if path else self.out_dir / "checkpoint.pt"
        state = self.state_dict()  # on every rank: a stream's data state is a collective
        if self.rank == 0:
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
