"""Freezing a tower: no gradients, and eval mode that survives a parent's ``.train()``.

A frozen tower must behave like a fixed feature extractor: dropout, patch dropout and
BatchNorm statistics stay in inference mode, otherwise its outputs change from call to call
(and a feature cache would be wrong). ``requires_grad_(False)`` alone does not do that, since
the training loop's ``model.train()`` switches every submodule back to training mode.
:class:`FreezableModule` (the base of every hardneg tower) keeps itself in eval mode while all
its parameters are frozen; :func:`freeze` is the one call that freezes or unfreezes a tower.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


class FreezableModule(nn.Module):
    """``nn.Module`` that stays in eval mode while none of its parameters requires grad."""

    @property
    def frozen(self) -> bool:
        """True when no parameter requires grad (then the module runs as a fixed extractor)."""
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> FreezableModule:
        """Switch train/eval mode; a frozen module always stays in eval mode."""
        return super().train(mode and not self.frozen)


def freeze(module: M, flag: bool = True) -> M:
    """Freeze (``flag=True``) or unfreeze a module in place and return it.

    Freezing turns ``requires_grad`` off for every parameter and puts the module in eval mode;
    a :class:`FreezableModule` (every hardneg image and text tower) then stays in eval mode when
    a parent calls ``.train()``; any other module goes back to training mode with its parent.
    Unfreezing turns gradients back on and leaves the mode to the caller's next ``.train()``.

    Example:
        >>> from hardneg.models import ConvPatchEncoder, ImageTowerConfig
        >>> tower = freeze(ConvPatchEncoder(ImageTowerConfig(width=32, num_layers=0)))
        >>> tower.train().training, tower.frozen
        (False, True)
        >>> freeze(tower, False).train().training
        True
    """
    module.requires_grad_(not flag)
    if flag:
        module.eval()
    return module
