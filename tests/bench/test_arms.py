"""Bench arms: ``<method>@fn<p>`` trains the method with ``data.false_negative_percent = p``
and everything else as the method's own run."""

from __future__ import annotations

import pytest

from hardneg.bench import presets, runner
from hardneg.bench.arms import Arm, parse_arm


@pytest.mark.parametrize(
    ("name", "arm"),
    [
        ("grit", Arm("grit")),
        ("grit@fn5", Arm("grit", "fn", 5.0)),
        ("infonce@fn0", Arm("infonce", "fn", 0.0)),
        ("falcon_ega@fn0.5", Arm("falcon_ega", "fn", 0.5)),
        ("grit@fn12.25", Arm("grit", "fn", 12.25)),
    ],
)
def test_good_arm_names_parse_and_round_trip(name, arm):
    assert parse_arm(name) == arm
    assert arm.name == name


@pytest.mark.parametrize(
    "name",
    ["grit@", "grit@fn", "grit@fnx", "@fn5", "grit@fn5@fn1", "grit@xx5", "grit@fn05",
     "grit@fn5.0", "grit@fn-1", "grit fn5", "", "grit@FN5"],
)  # fmt: skip
def test_bad_arm_names_raise_one_message_with_the_form(name):
    with pytest.raises(ValueError, match=r"bad bench arm .*<method>@fn<value>.*grit@fn5"):
        parse_arm(name)


def test_a_swept_arm_is_its_method_with_the_rate_and_nothing_else(tmp_path):
    preset = presets.PRESETS["compositional"]
    swept = presets.run_config(preset, "grit@fn5", 1, tmp_path)
    plain = presets.run_config(preset, "grit", 1, tmp_path)
    assert swept["data"]["false_negative_percent"] == 5.0
    assert plain["data"]["false_negative_percent"] == 1.0  # the preset's
    assert swept["out_dir"] == str(tmp_path / "grit@fn5" / "seed1")
    assert swept["method"] == "grit"  # the config (and metrics.json) name the method alone
    differ = {k for k, v in runner._leaves(swept).items() if runner._leaves(plain)[k] != v}
    assert differ == {"data.false_negative_percent", "out_dir"}
    # the arm's value wins over a --set of the same key, which the plain arm takes
    user = {"data": {"false_negative_percent": 2.0}}
    assert presets.run_config(preset, "grit@fn5", 1, tmp_path, user)["data"][
        "false_negative_percent"
    ] == 5.0  # fmt: skip
    assert presets.run_config(preset, "grit", 1, tmp_path, user)["data"][
        "false_negative_percent"
    ] == 2.0  # fmt: skip


def test_bad_arms_and_unknown_methods_are_refused_before_training(tmp_path):
    preset = presets.PRESETS["compositional"]
    with pytest.raises(ValueError, match="bad bench arm 'grit@fx5'"):
        presets.run_config(preset, "grit@fx5", 0, tmp_path)
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        presets.run_config(preset, "nosuch@fn5", 0, tmp_path)
    with pytest.raises(ValueError, match="bad bench arm"):
        runner.run_bench("compositional", tmp_path / "b", methods=["grit@fn"], seeds=1)
    assert not (tmp_path / "b").exists()


def test_each_data_build_of_a_sweep_is_prepared_once(tmp_path):
    preset = presets.PRESETS["compositional"]
    arms = ["infonce", "negclip", "grit_dual", "grit_dual@fn5", "infonce@fn5", "grit_dual@fn0"]
    configs = [presets.run_config(preset, a, s, tmp_path) for a in arms for s in (0, 1)]
    builds = runner._data_builds(configs)
    # negclip's extra negatives are drawn from the shared build: three FN rates, three builds
    assert [c["data"]["false_negative_percent"] for c in builds] == [1.0, 5.0, 0.0]
    assert [c["out_dir"] for c in builds] == [
        str(tmp_path / a / "seed0") for a in ("infonce", "grit_dual@fn5", "grit_dual@fn0")
    ]
    # the fusion arms share one fusion stage per build, prepared once too
    fusion = ["infonce", "albef", "grit", "falcon", "bacl"]
    configs = [presets.run_config(preset, a, s, tmp_path) for a in fusion for s in (0, 1)]
    builds = runner._data_builds(configs)
    assert [c["out_dir"] for c in builds] == [
        str(tmp_path / a / "seed0") for a in ("infonce", "albef")
    ]
