"""``transformers.TrainerCallback`` that feeds the training progress η to a BNS selector.

BACL's curriculum α(η) and the Gumbel temperature are functions of the training progress η in
(fractional) epochs (METHODS.md, BACL step 4). A ``transformers.Trainer`` (and so
``SentenceTransformerTrainer``) knows it; a loss does not. This callback copies it over before
every optimisation step.
"""

from __future__ import annotations

import math
from collections.abc import Sized
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hardneg.integrations.bns_selector import BNSNegativeSelector


def updates_per_epoch(train_dataloader: Any, accumulation_steps: int) -> int | None:
    """Optimiser steps per epoch as the Trainer counts them (None for an unsized dataloader)."""
    if not isinstance(train_dataloader, Sized):
        return None
    return max(math.ceil(len(train_dataloader) / accumulation_steps), 1)


class BNSProgressCallback(TrainerCallback):
    r"""Set ``selector``'s progress to ``η = global_step / steps_per_epoch`` at each step.

    The length of the run is ``state.max_steps / steps_per_epoch`` epochs (fractional, so
    ``max_steps`` runs and fractional ``num_train_epochs`` are both exact). Without a sized
    dataloader (an ``IterableDataset``) the whole run counts as one epoch.

    Args:
        selector: the :class:`~hardneg.integrations.bns_selector.BNSNegativeSelector` of the
            loss (e.g. ``loss.selector`` of a sentence-transformers hardneg loss).

    Example:
        >>> from hardneg.samplers import BNSConfig
        >>> selector = BNSNegativeSelector(BNSConfig(k=2))
        >>> callback = BNSProgressCallback(selector)  # Trainer(..., callbacks=[callback])
    """

    def __init__(self, selector: BNSNegativeSelector) -> None:
        if not isinstance(selector, BNSNegativeSelector):
            raise ValueError(
                f"selector must be a BNSNegativeSelector (e.g. loss.selector), got "
                f"{type(selector).__name__}; build the loss with bns=BNSConfig(...)"
            )
        self.selector = selector

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
        self.selector.set_progress(
            state.global_step / per_epoch, max(state.max_steps, 1) / per_epoch
        )
