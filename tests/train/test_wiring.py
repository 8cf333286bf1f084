"""The loop's wiring: hooks know no loop (no import circle), and every training module imports
on its own."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hardneg.train.hooks import StoreRefresh, TrainState


def test_the_hooks_module_imports_without_the_loop():
    code = "import sys, hardneg.train.hooks; print('hardneg.train.loop' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "module", ["hooks", "loop", "pretrain", "trainer", "run", "grounding", "batch", "recipes"]
)
def test_a_training_module_imports_alone(module):
    subprocess.run([sys.executable, "-c", f"import hardneg.train.{module}"], check=True)


def test_the_state_tells_progress_in_epochs():
    cpu = torch.device("cpu")
    state = TrainState(5, 1, steps_per_epoch=4, max_steps=10, rank=0, world=1, device=cpu)
    assert state.progress == (1.25, 2.5)


def test_store_refresh_embeds_what_drop_last_left_out_in_batches():
    """At an epoch's end the items never embedded are embedded, ``batch_size`` at a time: the
    hook works on the sampler and the embedding function it was given, no engine."""
    import contextlib

    class Store:
        filled = torch.tensor([True, False, False, True, False])

    class Sampler:
        def __init__(self) -> None:
            self.store = Store()
            self.updated: list[list[int]] = []

        def update_embeddings(self, index, image, text):
            self.updated.append(index.tolist())

    calls = []

    def embed(index):
        calls.append(index.tolist())
        return torch.zeros(len(index), 2), torch.zeros(len(index), 2)

    sampler = Sampler()
    hook = StoreRefresh(sampler, embed, contextlib.nullcontext, batch_size=2)
    hook.end_epoch(TrainState(0, 1, 1, 1, 0, 1, torch.device("cpu")))
    assert calls == sampler.updated == [[1, 2], [4]]
