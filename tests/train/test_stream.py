"""Training on a webdataset stream (``--data wds:PATTERN``): every sample once per epoch across
2 DDP ranks, resume mid-epoch at shard granularity, GRIT/FALCON refused."""

from __future__ import annotations

import pytest

from hardneg import cli
from hardneg.train.config import config_from_dict
from hardneg.train.recipes.stream import StreamRecipe
from hardneg.train.trainer import Trainer
from hardneg.train.validate import resolve_config
from tests.helpers.ddp import run_distributed
from tests.helpers.model_fixtures import write_open_clip_config
from tests.helpers.wds import write_shards

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [4, 4, 4, 4]  # samples per shard: a local batch of 4 (or 2 per rank) never spans two


def _values(tmp_path, **over):
    (tmp_path / "shards").mkdir()
    keys = write_shards(tmp_path / "shards", sizes=SIZES)
    values = {
        "method": "infonce",
        "batch_size": 4,
        "steps": 4,
        "log_every": 1,
        "checkpoint_every": 0,
        "progress": False,
        "out_dir": str(tmp_path / "run"),
        "data": {"dataset": f"wds:{tmp_path}/shards/shard-{{000..003}}.tar"},
        "model": {"spec": f"open_clip:{write_open_clip_config(tmp_path)}", "dropout": 0.0},
        "crossmodal": {"itm_weight": 0.0, "mlm_weight": 0.0},
    }
    values.update(over)
    return values, {k for ks in keys.values() for k in ks}, keys


def _trained_keys(trainer: Trainer, steps: int) -> list[str]:
    seen: list[str] = []
    draw = trainer.recipe.draw

    def spy(index, step):
        seen.extend(trainer.recipe.batch_sampler.current["key"])
        return draw(index, step)

    trainer.recipe.draw = spy
    trainer.fit(stop_at=steps)
    return seen


def test_one_epoch_sees_every_sample_once(tmp_path):
    values, all_keys, _ = _values(tmp_path)
    trainer = Trainer(resolve_config("infonce", values))
    assert isinstance(trainer.recipe, StreamRecipe) and trainer.steps_per_epoch == 4
    seen = _trained_keys(trainer, 4)
    assert sorted(seen) == sorted(all_keys)


def test_resume_mid_epoch_reads_the_unfinished_shards(tmp_path):
    values, all_keys, keys = _values(tmp_path)
    first = Trainer(resolve_config("infonce", values))
    before = _trained_keys(first, 2)  # two whole shards
    first.save()
    resumed = Trainer(resolve_config("infonce", values))
    assert resumed.resume() and resumed.step == 2
    after = _trained_keys(resumed, 4)
    finished = {k for ks in keys.values() if set(ks) <= set(before) for k in ks}
    assert len(finished) == 8 and not finished & set(after)
    assert sorted(before + after) == sorted(all_keys)


def _ddp_worker(rank, world, config):
    trainer = Trainer(config_from_dict(config))
    return _trained_keys(trainer, trainer.steps_per_epoch)


@pytest.mark.slow
def test_two_ranks_see_every_sample_once_per_epoch(tmp_path):
    values, all_keys, _ = _values(tmp_path)
    config = resolve_config("infonce", values).to_dict()
    per_rank = run_distributed(_ddp_worker, 2, config)
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(all_keys)


def test_grit_and_falcon_are_refused_on_a_stream(tmp_path, capsys):
    values, _, _ = _values(tmp_path)
    argv = ["train", "--method", "grit", "--data", values["data"]["dataset"]]
    argv += ["--model", values["model"]["spec"], "--set", "progress=false"]
    assert cli.main(argv) == 2
    assert "needs random access" in capsys.readouterr().err
