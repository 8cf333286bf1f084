"""Record what a BNS miner sees in a host's training loop (a test helper)."""

from __future__ import annotations

import torch

from hardneg.miners import BoundaryAwareMiner


def adam_steps(miner: BoundaryAwareMiner) -> list[float]:
    """Adam step count of each policy parameter (empty before the first policy step)."""
    return [s["step"].item() for s in miner.optimizer.state.values()]


def record_selections(monkeypatch) -> list[dict]:
    """Every mining call, with the miner state just before it (policy, Adam, generator)."""
    record: list[dict] = []
    mine = BoundaryAwareMiner.forward

    def recording(self, pairs, progress=None, total=None, logit_scale=None):
        record.append(
            {
                "policy": {k: v.clone() for k, v in self.policy.state_dict().items()},
                "adam": adam_steps(self),
                "generator": self.generator.get_state().clone(),
            }
        )
        record[-1]["selection"] = mine(self, pairs, progress, total, logit_scale)
        record[-1]["progress"] = self.progress
        return record[-1]["selection"]

    monkeypatch.setattr(BoundaryAwareMiner, "forward", recording)
    return record


def assert_same_state(resumed: dict, original: dict) -> None:
    """The miner state recorded in a resumed run equals the uninterrupted run's."""
    assert resumed["progress"] == original["progress"]
    assert resumed["adam"] == original["adam"]
    assert torch.equal(resumed["generator"], original["generator"])
    for key, value in original["policy"].items():
        assert torch.equal(resumed["policy"][key], value), key
