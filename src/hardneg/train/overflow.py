"""Detect gradient-norm overflow that would otherwise leave a run silently not learning.

With fp16 AMP, :class:`torch.amp.GradScaler` skips every optimizer step whose gradients hold
inf/NaN and halves its scale. A few skips at the start are normal calibration; a run whose
gradients overflow at *every* step never updates its parameters, yet finishes with return code
0. Without a scaler, one step applied with non-finite gradients turns the parameters into NaN.
:class:`GradNormOverflow` is told each step's gradient norm and whether the step was skipped,
and raises :class:`FloatingPointError` saying what to do.

Use in a training loop (``skipped``: the scaler lowered its scale, i.e. it skipped the step)::

    overflow = GradNormOverflow(patience=20)
    ...
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    overflow.update(norm, skipped=scaler.is_enabled() and scaler.get_scale() < scale, step=step)
"""

from __future__ import annotations

import math

from torch import Tensor

from hardneg.losses.checks import check_int


class GradNormOverflow:
    """Raise :class:`FloatingPointError` when gradient norms stay non-finite.

    Args:
        patience: number of consecutive *skipped* steps with a non-finite norm that is
            tolerated (default 20: GradScaler's scale has then fallen from 2¹⁶ below 1, so the
            gradients overflow even unscaled; it is not a calibration transient).

    A non-finite norm on a step that was *not* skipped (no AMP scaler, or a scaler that is
    disabled) raises at once: the optimizer has applied inf/NaN gradients to the parameters.
    A finite norm resets the count.
    """

    def __init__(self, patience: int = 20) -> None:
        self.patience = check_int("patience", patience)
        self.consecutive = 0

    def update(self, grad_norm: float | Tensor, *, skipped: bool, step: int | None = None) -> None:
        """Record one optimizer step's gradient norm (before clipping).

        Args:
            grad_norm: the total gradient norm (e.g. the return value of
                ``clip_grad_norm_``), a float or a scalar tensor.
            skipped: whether the optimizer step was skipped (the AMP scaler found inf/NaN).
            step: the step number, for the message only.

        Raises:
            FloatingPointError: after ``patience`` consecutive skipped non-finite steps, or at
                once for a non-finite norm whose step was applied.
        """
        norm = float(grad_norm)
        if math.isfinite(norm):
            self.consecutive = 0
            return
        self.consecutive += 1
        at = "" if step is None else f" at step {step}"
        if not skipped:
            raise FloatingPointError(
                f"gradient norm is {norm}{at} and the optimizer step was applied, so the "
                "parameters are no longer finite; lower optim.lr, enable AMP loss scaling, or "
                "check the inputs and the loss for inf/NaN"
            )
        if self.consecutive >= self.patience:
            raise FloatingPointError(
                f"gradient norm has been non-finite for {self.consecutive} consecutive steps "
                f"(last: {norm}{at}) and the AMP scaler skipped every one: the model is not "
                "learning; lower optim.lr, disable AMP (amp: false) or train in bf16/fp32, or "
                "check the inputs and the loss for inf/NaN"
            )

    def state_dict(self) -> dict[str, int]:
        """The count of consecutive non-finite steps, for a checkpoint."""
        return {"consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict` (a resumed run stops at the same step)."""
        self.consecutive = int(state["consecutive"])
