"""What the training loop calls around each step, one job per hook.

- :class:`StoreRefresh`: GRIT / FALCON's embedding store gets the features the training forward
  computed (detached, as GRIT-VLP keeps its queue: no extra forward), and at an epoch's end the
  items ``drop_last`` left out are embedded once so the next epoch's search spaces cover them;
- :class:`MinerPolicyStep`: BACL's miner takes its policy step after the model's;
- :class:`FalconReward`: FALCON's reward, the MLM-loss gain of the step's update on the step's
  own draw (the loss before the update minus the loss after it, both in eval mode), and the
  scheduler's REINFORCE update;
- :class:`Diagnostics`: the batch sampler's statistics, the batch's false-negative rate and a
  sample of the selected negatives' boundary scores.

A hook implements any of ``before_update(engine, draw, batches)``, ``after_forward(engine,
batch, out)``, ``after_update(engine, draw, batches, logs)`` and ``end_epoch(engine)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from hardneg.train.batch import Batch, StepDraw

if TYPE_CHECKING:
    from hardneg.train.loop import Engine
    from hardneg.train.objective import ObjectiveOutput


class Hook:
    """Base class: every callback is a no-op."""

    def before_update(self, engine: Engine, draw: StepDraw, batches: list[Batch]) -> None:
        """After the step's micro-batches are built, before any forward."""

    def after_forward(self, engine: Engine, batch: Batch, out: ObjectiveOutput) -> None:
        """After a micro-batch's objective, before its backward."""

    def after_update(
        self, engine: Engine, draw: StepDraw, batches: list[Batch], logs: dict[str, float]
    ) -> None:
        """After the optimizer step (``logs`` may be extended)."""

    def end_epoch(self, engine: Engine) -> None:
        """When the batch sampler has yielded an epoch."""


class StoreRefresh(Hook):
    """Fill GRIT / FALCON's embedding store from the training forward (see module docstring)."""

    def after_forward(self, engine: Engine, batch: Batch, out: ObjectiveOutput) -> None:
        pairs = out.pairs
        engine.sampler.update_embeddings(
            batch.index, pairs.all_image.detach().cpu(), pairs.all_text.detach().cpu()
        )

    def end_epoch(self, engine: Engine) -> None:
        # items dropped by drop_last were never embedded: embed them so that the next
        # epoch can build hard (GRIT/FALCON) batches instead of falling back to random ones
        missing = torch.nonzero(~engine.sampler.store.filled).squeeze(1)
        for chunk in missing.split(engine.cfg.batch_size) if len(missing) else ():
            with engine.autocast():
                image, text = engine.recipe.embed_untrained(chunk)
            engine.sampler.update_embeddings(chunk, image, text)


class MinerPolicyStep(Hook):
    """The BNS policy's optimizer step, after the model's, on the mean policy gradient of the
    step's micro-batches (the miner back-propagated each one's policy loss itself)."""

    def after_update(self, engine: Engine, draw, batches, logs) -> None:
        miner = engine.objective.miner
        assert miner is not None
        miner.step_policy()


class FalconReward(Hook):
    """FALCON's reward (arXiv:2505.11192 §3.3): ``MLM(before) − MLM(after)`` on the step's draw."""

    def __init__(self) -> None:
        self.before: float | None = None

    def before_update(self, engine: Engine, draw, batches) -> None:
        self.before = self.eval_mlm(engine, batches)

    def after_update(self, engine: Engine, draw, batches, logs) -> None:
        assert self.before is not None
        reward = self.before - self.eval_mlm(engine, batches)
        logs["falcon_reward"] = reward
        update = engine.sampler.scheduler.reinforce(reward)
        if update:
            logs.update({f"falcon_{k}": v for k, v in update.items()})

    @staticmethod
    @torch.no_grad()
    def eval_mlm(engine: Engine, batches: list[Batch]) -> float:
        """MLM loss of a step's micro-batches in eval mode, as the update weighs it (mean over
        micro-batches), averaged over ranks."""
        model = engine.model
        was_training = model.training
        model.eval()
        value = torch.zeros((), device=engine.device)
        for batch in batches:
            with engine.autocast():
                _, image = model.encode_images(batch.images)
                # the head reads token ids only: no text-tower pass
                mlm = engine.objective.mlm(model, batch.text, image.tokens, batch)
            value += mlm.float() / len(batches)
        if engine.world > 1:
            dist.all_reduce(value)
            value /= engine.world
        model.train(was_training)
        return float(value)


class Diagnostics(Hook):
    """Batch statistics, the batch's FN rate and selected boundary scores, into the logs."""

    def after_forward(self, engine: Engine, batch: Batch, out: ObjectiveOutput) -> None:
        if out.selected_bs is not None:
            sample = out.selected_bs
            engine.selected_bs.append(
                torch.stack([torch.full_like(sample, engine.step), sample], 1)
            )

    def after_update(self, engine: Engine, draw: StepDraw, batches, logs: dict[str, Any]) -> None:
        for key, value in engine.sampler.last_batch_stats.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                logs[f"batch_{key}"] = float(value)
        if draw.fn_rate is not None:
            logs["batch_fn_rate"] = draw.fn_rate
