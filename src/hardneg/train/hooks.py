"""What the training loop calls around each step, one job per hook.

- :class:`StoreRefresh`: GRIT / FALCON's embedding store gets the features the training forward
  computed (detached, as GRIT-VLP keeps its queue: no extra forward), and at an epoch's end the
  items ``drop_last`` left out are embedded once so the next epoch's search spaces cover them;
- :class:`MinerPolicyStep`: BACL's miner takes its policy step after the model's;
- :class:`FalconReward`: FALCON's reward, the MLM-loss gain of the step's update on the step's
  own draw (the loss before the update minus the loss after it, both in eval mode), and the
  policy's REINFORCE update;
- :class:`Diagnostics`: the batch sampler's statistics, the batch's false-negative rate and a
  sample of the selected negatives' boundary scores.

A hook implements any of ``before_update(state, draw, batches)``, ``after_forward(state,
batch, out)``, ``after_update(state, draw, batches, logs)`` and ``end_epoch(state)`` (the shape
of Hugging Face's ``TrainerCallback``): the loop passes only its declared :class:`TrainState`,
and each hook is given, when it is built, exactly the objects it works on (the batch sampler,
an embedding function, the miner, …) — never the loop itself.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor

from hardneg.models.alignment import AlignmentModel
from hardneg.models.inputs import Texts
from hardneg.models.outputs import ImageOutput, TextOutput
from hardneg.samplers import FalconPolicy, HardnessBatchSampler
from hardneg.train.batch import Batch, StepDraw
from hardneg.train.objective import ObjectiveOutput
from hardneg.train.recipes import BatchSampler

#: a no-argument factory of the step's autocast context (``Engine.autocast``)
Autocast = Callable[[], AbstractContextManager[Any]]
#: the MLM loss of captions given their images' tokens on a batch's drawn targets
#: (``Objective.mlm``)
MLMLoss = Callable[[AlignmentModel, TextOutput | Texts, ImageOutput, Batch], Tensor]


@dataclass
class TrainState:
    """What the loop tells its hooks: where training is, and where it runs.

    Attributes:
        step: optimizer steps taken so far.
        epoch: epochs the batch sampler has completed.
        steps_per_epoch: optimizer steps in one epoch of the batch sampler.
        max_steps: the run's configured number of steps.
        rank, world: this process's rank and the world size.
        device: where the model runs.
    """

    step: int
    epoch: int
    steps_per_epoch: int
    max_steps: int
    rank: int
    world: int
    device: torch.device

    @property
    def progress(self) -> tuple[float, float]:
        """(η, total) in fractional epochs, for the BNS curriculum."""
        return self.step / self.steps_per_epoch, self.max_steps / self.steps_per_epoch


class PolicyMiner(Protocol):
    """A negative miner with a learned policy (:class:`~hardneg.miners.BoundaryAwareMiner`)."""

    def step_policy(self) -> None:
        """The policy's optimizer step on the gradients of the step's calls."""


class Hook:
    """Base class: every callback is a no-op."""

    def before_update(self, state: TrainState, draw: StepDraw, batches: list[Batch]) -> None:
        """After the step's micro-batches are built, before any forward."""

    def after_forward(self, state: TrainState, batch: Batch, out: ObjectiveOutput) -> None:
        """After a micro-batch's objective, before its backward."""

    def after_update(
        self, state: TrainState, draw: StepDraw, batches: list[Batch], logs: dict[str, float]
    ) -> None:
        """After the optimizer step (``logs`` may be extended)."""

    def end_epoch(self, state: TrainState) -> None:
        """When the batch sampler has yielded an epoch."""


class StoreRefresh(Hook):
    """Fill GRIT / FALCON's embedding store from the training forward (see module docstring).

    Args:
        sampler: the hardness batch sampler whose store is filled.
        embed_untrained: normalised (image, text) embeddings of items an epoch never trained
            (the recipe's :meth:`~hardneg.train.recipes.Recipe.embed_untrained`).
        autocast: the step's autocast context factory.
        batch_size: items embedded per call of ``embed_untrained``.
    """

    def __init__(
        self,
        sampler: HardnessBatchSampler,
        embed_untrained: Callable[[Tensor], tuple[Tensor, Tensor]],
        autocast: Autocast,
        batch_size: int,
    ) -> None:
        self.sampler, self.embed_untrained = sampler, embed_untrained
        self.autocast, self.batch_size = autocast, batch_size

    def after_forward(self, state: TrainState, batch: Batch, out: ObjectiveOutput) -> None:
        pairs = out.pairs
        self.sampler.update_embeddings(
            batch.index, pairs.all_image.detach().cpu(), pairs.all_text.detach().cpu()
        )

    def end_epoch(self, state: TrainState) -> None:
        # items dropped by drop_last were never embedded: embed them so that the next
        # epoch can build hard (GRIT/FALCON) batches instead of falling back to random ones
        missing = torch.nonzero(~self.sampler.store.filled).squeeze(1)
        for chunk in missing.split(self.batch_size) if len(missing) else ():
            with self.autocast():
                image, text = self.embed_untrained(chunk)
            self.sampler.update_embeddings(chunk, image, text)


class MinerPolicyStep(Hook):
    """The BNS policy's optimizer step, after the model's, on the mean policy gradient of the
    step's micro-batches (the miner back-propagated each one's policy loss itself).

    Args:
        miner: the objective's negative miner.
    """

    def __init__(self, miner: PolicyMiner) -> None:
        self.miner = miner

    def after_update(
        self, state: TrainState, draw: StepDraw, batches: list[Batch], logs: dict[str, float]
    ) -> None:
        self.miner.step_policy()


class FalconReward(Hook):
    """FALCON's reward (arXiv:2505.11192 §3.3): ``MLM(before) − MLM(after)`` on the step's draw.

    Args:
        policy: FALCON's policy, which the reward updates.
        model: the model whose MLM loss is measured.
        mlm: the objective's MLM loss.
        autocast: the step's autocast context factory.
        reuse_training_loss: take "before" from the training forward's own MLM loss (the same
            number when the model has no train/eval difference — no active dropout or batch
            norm — and each micro-batch's MLM is one forward: no GradCache), so the reward
            costs one extra MLM forward instead of two.
    """

    def __init__(
        self,
        policy: FalconPolicy,
        model: AlignmentModel,
        mlm: MLMLoss,
        autocast: Autocast,
        reuse_training_loss: bool = False,
    ) -> None:
        self.policy, self.model, self.mlm, self.autocast = policy, model, mlm, autocast
        self.reuse = reuse_training_loss
        self.before: float | None = None
        self._training: list[float] = []

    def before_update(self, state: TrainState, draw: StepDraw, batches: list[Batch]) -> None:
        self._training = []
        self.before = None if self.reuse else self.eval_mlm(state, batches)

    def after_forward(self, state: TrainState, batch: Batch, out: ObjectiveOutput) -> None:
        if self.reuse:
            self._training.append(out.logs["mlm"])

    def after_update(
        self, state: TrainState, draw: StepDraw, batches: list[Batch], logs: dict[str, float]
    ) -> None:
        before = self._mean(state, self._training) if self.reuse else self.before
        assert before is not None
        reward = before - self.eval_mlm(state, batches)
        logs["falcon_reward"] = reward
        update = self.policy.reinforce(reward)
        if update:
            logs.update({f"falcon_{k}": v for k, v in update.items()})

    @torch.no_grad()
    def eval_mlm(self, state: TrainState, batches: list[Batch]) -> float:
        """MLM loss of a step's micro-batches in eval mode, as the update weighs it (mean over
        micro-batches), averaged over ranks."""
        model = self.model
        was_training = model.training
        model.eval()
        values = []
        for batch in batches:
            with self.autocast():
                _, image = model.encode_images(batch.images)
                # the head reads token ids only: no text-tower pass
                values.append(float(self.mlm(model, batch.text, image, batch).float()))
        model.train(was_training)
        return self._mean(state, values)

    @staticmethod
    def _mean(state: TrainState, values: list[float]) -> float:
        """The mean of the micro-batches' fp32 MLM losses over micro-batches and ranks (one
        reduction for "before" and "after", so an unchanged model gives a reward of exactly 0)."""
        value = torch.zeros((), device=state.device)
        for v in values:
            value += torch.tensor(v, dtype=torch.float32, device=state.device) / len(values)
        if state.world > 1:
            dist.all_reduce(value)
            value /= state.world
        return float(value)


def has_train_eval_difference(model: torch.nn.Module) -> bool:
    """Whether ``model`` in train mode computes differently from eval mode: a dropout (p > 0)
    or a batch norm in training mode (call it after ``model.train()``; a frozen tower that
    stays in eval mode counts as none)."""
    for module in model.modules():
        if not module.training:
            continue
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            return True
        if isinstance(module, torch.nn.MultiheadAttention) and module.dropout > 0:
            return True
    return False


class Diagnostics(Hook):
    """Batch statistics, the batch's FN rate and selected boundary scores, into the logs.

    Args:
        sampler: the batch sampler whose ``last_batch_stats`` are logged.

    Attributes:
        selected_boundary_scores: ``(n, 2)`` rows ``(step, BS)`` of the selected negatives'
            boundary scores, one tensor per micro-batch that had a miner's sample.
    """

    def __init__(self, sampler: BatchSampler) -> None:
        self.sampler = sampler
        self.selected_boundary_scores: list[Tensor] = []

    def after_forward(self, state: TrainState, batch: Batch, out: ObjectiveOutput) -> None:
        if out.selected_boundary_scores is not None:
            sample = out.selected_boundary_scores
            steps = torch.full_like(sample, state.step)
            self.selected_boundary_scores.append(torch.stack([steps, sample], 1))

    def after_update(
        self, state: TrainState, draw: StepDraw, batches: list[Batch], logs: dict[str, Any]
    ) -> None:
        for key, value in self.sampler.last_batch_stats.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                logs[f"batch_{key}"] = float(value)
        if draw.fn_rate is not None:
            logs["batch_fn_rate"] = draw.fn_rate
