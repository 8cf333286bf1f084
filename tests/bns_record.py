"""Record what a BNS selector sees in a host's training loop (a test helper)."""

from __future__ import annotations

import torch

from hardneg.integrations.bns_selector import BNSNegativeSelector


def adam_steps(selector: BNSNegativeSelector) -> list[float]:
    """Adam step count of each policy parameter (empty before the first policy step)."""
    return [s["step"].item() for s in selector.sampler.optimizer.state.values()]


def record_selections(monkeypatch) -> list[dict]:
    """Every selection, with the selector state just before it (policy, Adam, generator)."""
    record: list[dict] = []
    select = BNSNegativeSelector.select

    def recording(self, pairs, logit_scale=None):
        sampler = self.sampler
        record.append(
            {
                "policy": {k: v.clone() for k, v in sampler.policy.state_dict().items()},
                "adam": adam_steps(self),
                "generator": sampler.generator.get_state().clone(),
                "progress": self.progress,
            }
        )
        record[-1]["selection"] = select(self, pairs, logit_scale)
        return record[-1]["selection"]

    monkeypatch.setattr(BNSNegativeSelector, "select", recording)
    return record


def assert_same_state(resumed: dict, original: dict) -> None:
    """The selector state recorded in a resumed run equals the uninterrupted run's."""
    assert resumed["progress"] == original["progress"]
    assert resumed["adam"] == original["adam"]
    assert torch.equal(resumed["generator"], original["generator"])
    for key, value in original["policy"].items():
        assert torch.equal(resumed["policy"][key], value), key
