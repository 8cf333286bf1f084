"""hardneg bench --set: overrides reach every run, are recorded, and never mix benches."""

from __future__ import annotations

import json

import pytest

from hardneg import cli
from hardneg.bench import presets, runner, workers


class _Stop(Exception):
    """Raised instead of generating data: the checks before it are what is tested."""


def _no_training(monkeypatch):
    def stop(config):
        raise _Stop(config)

    monkeypatch.setattr(runner, "prepare_data", stop)
    monkeypatch.setattr(workers, "Worker", lambda *a: pytest.fail("launched a run"))


def test_compositional_preset_runs_three_seeds():
    assert presets.PRESETS["compositional"].seeds >= 3


def test_overrides_reach_every_run_config_and_win_over_the_preset(tmp_path):
    preset = presets.PRESETS["quick"]
    config = presets.run_config(
        preset, "bacl_dual", 2, tmp_path, {"data": {"seed": 3}, "steps": 7, "optim": {"lr": 1e-4}}
    )
    assert config["data"]["seed"] == 3 and config["steps"] == 7
    assert config["optim"]["lr"] == 1e-4
    assert config["seed"] == 2 and config["data"]["preset"] == preset.data_preset
    assert config["out_dir"] == str(tmp_path / "bacl_dual" / "seed2")
    plain = presets.run_config(preset, "bacl_dual", 2, tmp_path)
    assert plain["data"]["seed"] == 0 and plain["steps"] == preset.steps


def test_a_method_keeps_its_defining_term_where_the_preset_turns_it_off(tmp_path):
    """The compositional preset trains no cross-modal terms, except those a method is made
    of: ALBEF-family methods ITM + MLM, FALCON's dual variant its MLM reward, BACL's CLA the
    attention; a user's --set wins."""
    preset = presets.PRESETS["compositional"]
    methods = ("infonce", "falcon", "falcon_dual")
    aux = {m: presets.run_config(preset, m, 0, tmp_path)["crossmodal"] for m in methods}
    assert aux["infonce"]["mlm_weight"] == 0 and aux["infonce"]["itm_weight"] == 0
    assert aux["falcon"]["mlm_weight"] == 1 and aux["falcon"]["itm_weight"] == 1
    assert aux["falcon_dual"]["mlm_weight"] > 0 and aux["falcon_dual"]["itm_weight"] == 0
    assert presets.run_config(preset, "bacl", 0, tmp_path)["crossmodal"]["cla_weight"] == 0.3
    user = presets.run_config(preset, "falcon", 0, tmp_path, {"crossmodal": {"mlm_weight": 0.2}})
    assert user["crossmodal"]["mlm_weight"] == 0.2


@pytest.mark.parametrize(("key", "option"), [("seed", "--seeds"), ("out_dir", "--out")])
def test_overrides_of_per_run_keys_are_refused(tmp_path, monkeypatch, key, option):
    _no_training(monkeypatch)
    with pytest.raises(ValueError, match=f"--set {key}=.*use hardneg bench {option}"):
        runner.run_bench("quick", tmp_path / "b", overrides=[f"{key}=1"])


def test_overrides_are_recorded_and_other_overrides_refuse_the_directory(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    out = tmp_path / "bench"
    with pytest.raises(_Stop) as stopped:
        runner.run_bench("quick", out, methods=["infonce"], seeds=1, overrides=["data.seed=3"])
    assert stopped.value.args[0]["data"]["seed"] == 3  # the data of the runs is prepared
    info = json.loads((out / "bench.json").read_text())
    assert info["overrides"] == {"data": {"seed": 3}}
    before = (out / "bench.json").read_text()
    for other in ([], ["data.seed=4"]):  # no override, or another value: refused, unchanged
        with pytest.raises(ValueError, match="pass another --out"):
            runner.run_bench("quick", out, methods=["infonce"], seeds=1, overrides=other)
        assert (out / "bench.json").read_text() == before
    with pytest.raises(ValueError, match="preset 'quick'"):
        runner.run_bench("full", out, methods=["infonce"], seeds=1, overrides=["data.seed=3"])
    with pytest.raises(_Stop):  # the same overrides again: the bench resumes
        runner.run_bench("quick", out, methods=["infonce", "hcl"], overrides={"data": {"seed": 3}})


def test_cli_bench_passes_set_to_the_runner(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(runner, "run_bench", lambda *a, **kw: seen.update(kw, args=a))
    assert cli.main(["bench", "--out", str(tmp_path), "--set", "data.seed=3", "steps=5"]) == 0
    assert seen["overrides"] == ["data.seed=3", "steps=5"]
    assert cli.main(["bench", "--out", str(tmp_path)]) == 0
    assert seen["overrides"] == []


def test_a_finished_run_of_another_config_is_refused_not_reused(tmp_path, monkeypatch):
    """A run finished under an older preset (here: other steps) would otherwise be reused as
    it is and compared with runs of the current one."""
    _no_training(monkeypatch)
    preset = presets.PRESETS["compositional"]
    run = tmp_path / "infonce" / "seed0"
    run.mkdir(parents=True)
    saved = presets.run_config(preset, "infonce", 0, tmp_path)
    (run / "metrics.json").write_text("{}")
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(_Stop):  # the same config: reused, the bench goes on
        runner.run_bench("compositional", tmp_path, methods=["infonce"], seeds=1)
    (run / "config.json").write_text(json.dumps({**saved, "steps": 300}))
    with pytest.raises(ValueError, match=r"seed0 was trained with steps=300, this bench sets 600"):
        runner.run_bench("compositional", tmp_path, methods=["infonce"], seeds=1)
