"""``transformers.TrainerCallback`` that runs a BNS miner inside any ``transformers.Trainer``.

BACL's curriculum α(η) and the Gumbel temperature are functions of the training progress η in
(fractional) epochs (BACL, arXiv:2511.08399 §3). A ``transformers.Trainer`` (and so
``SentenceTransformerTrainer``) knows it, its optimiser steps and its checkpoints; a loss does
not. :class:`BNSProgressCallback` connects them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sized
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hardneg.miners import BoundaryAwareMiner

#: File holding the miner state in each ``checkpoint-N`` directory.
MINER_STATE_FILE = "hardneg_bns.pt"


def updates_per_epoch(train_dataloader: Any, accumulation_steps: int) -> int | None:
    """Optimiser steps per epoch as the Trainer counts them (None for an unsized dataloader)."""
    if not isinstance(train_dataloader, Sized):
        return None
    return max(math.ceil(len(train_dataloader) / accumulation_steps), 1)


class BNSProgressCallback(TrainerCallback):
    r"""Progress, one policy step per optimiser step, and checkpoints for a BNS miner.

    - progress: ``η = global_step / steps_per_epoch`` at each step begin; the run lasts
      ``state.max_steps / steps_per_epoch`` epochs (fractional, so ``max_steps`` runs and
      fractional ``num_train_epochs`` are both exact). Without a sized dataloader (an
      ``IterableDataset``) the whole run counts as one epoch.
    - gradient accumulation: negatives are selected per micro-batch (the loss of a micro-batch
      can only use its own candidates), but the policy steps once per optimiser step, on the
      mean policy gradient of the step's micro-batches (``on_pre_optimizer_step``, before the
      Trainer's optimiser, which therefore never sees a policy gradient).
    - checkpoints (``checkpoint=True``): the miner's ``state_dict()`` (policy, its Adam
      state, noise generator) is saved as ``hardneg_bns.pt`` in every ``checkpoint-N`` and
      restored on ``train(resume_from_checkpoint=...)`` from
      ``output_dir/checkpoint-<resumed global_step>``.

    Args:
        miner: the :class:`~hardneg.miners.BoundaryAwareMiner` of the
            loss (e.g. ``loss.miner`` of a sentence-transformers hardneg loss).
        checkpoint: save/restore the miner with the Trainer's checkpoints (False when the
            host saves it otherwise, as ``HardnegCLIPTrainer`` does in ``hardneg_loss.pt``).

    Example:
        >>> from hardneg.miners import BNSConfig
        >>> miner = BoundaryAwareMiner(BNSConfig(k=2))
        >>> callback = BNSProgressCallback(miner)  # Trainer(..., callbacks=[callback])
    """

    def __init__(self, miner: BoundaryAwareMiner, checkpoint: bool = True) -> None:
        if not isinstance(miner, BoundaryAwareMiner):
            raise ValueError(
                f"miner must be a BoundaryAwareMiner (e.g. loss.miner), got "
                f"{type(miner).__name__}; build the loss with bns=BNSConfig(...)"
            )
        self.miner = miner
        self.checkpoint = checkpoint

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.miner.defer_policy_step = True
        if self.checkpoint and state.global_step > 0:  # resumed from checkpoint-<global_step>
            directory = os.path.join(
                args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            )
            path = os.path.join(directory, MINER_STATE_FILE)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"resuming at step {state.global_step} but {path} does not exist: the BNS "
                    "policy would silently restart. Resume from a checkpoint of this output_dir "
                    "written with BNSProgressCallback (or copy its hardneg_bns.pt there)"
                )
            device = next(self.miner.parameters()).device
            self.miner.load_state_dict(torch.load(path, map_location=device, weights_only=True))

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        per_epoch = updates_per_epoch(train_dataloader, args.gradient_accumulation_steps)
        per_epoch = per_epoch or max(state.max_steps, 1)
        self.miner.set_progress(state.global_step / per_epoch, max(state.max_steps, 1) / per_epoch)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.miner.step_policy()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.checkpoint and args.should_save:
            directory = os.path.join(
                args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            )
            os.makedirs(directory, exist_ok=True)
            torch.save(self.miner.state_dict(), os.path.join(directory, MINER_STATE_FILE))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.miner.step_policy()  # nothing pending after a normal run
        self.miner.defer_policy_step = False
