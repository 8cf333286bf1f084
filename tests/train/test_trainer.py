"""Trainer: config validation, exact resume in a new process, 2-rank DDP == one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hardneg.train.trainer import Trainer, resolve_config
from tests.helpers.ddp import run_distributed, train_step_worker
from tests.helpers.trainer_values import trainer_values as _values


def test_bad_config_fails_before_training():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        resolve_config("nope")
    with pytest.raises(ValueError, match=r"miner\.k must be a positive int"):
        resolve_config("bacl_dual", {"batch_size": 16, "miner": {"k": -1}})
    with pytest.raises(ValueError, match=r"crossmodal\.cla_weight must be ≥ 0"):
        resolve_config("bacl_dual", {"crossmodal": {"cla_weight": -0.3}})
    with pytest.raises(ValueError, match="chunk_size cannot be combined"):
        resolve_config("bacl_dual", {"loss": {"kwargs": {"chunk_size": 8}}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr'\]"):
        resolve_config("infonce", {"lr": 0.1})
    with pytest.raises(ValueError, match="MLM-loss gain"):
        resolve_config("falcon", {"crossmodal": {"mlm_weight": 0.0}})


def test_methods_compose_loss_selector_aux_and_sampler():
    cfg = resolve_config("bacl_dual_ega")
    assert (cfg.loss.name, cfg.miner.name, cfg.crossmodal.cla_weight) == ("ega", "bns", 0.3)
    assert resolve_config("falcon_ega").batch_sampler.mode == "falcon"
    assert resolve_config("negclip").data.hard_negative_captions


def _resume_script(config: dict, out: str) -> str:
    return (
        "import json, torch\n"
        "torch.set_num_threads(1)\n"  # as the parent (one_thread): the same float sums
        "from hardneg.train.config import config_from_dict\n"
        "from hardneg.train.trainer import Trainer\n"
        f"t = Trainer(config_from_dict(json.loads({json.dumps(json.dumps(config))})))\n"
        "assert t.resume()\n"
        "t.fit()\n"
        f"torch.save(t.model.trainable_state_dict(), {out!r})\n"
    )


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")  # both processes one thread: bit-identical float sums
@pytest.mark.parametrize("method,steps,half", [("bacl_dual", 6, 3), ("falcon", 22, 20)])
def test_resume_in_new_process_reproduces_uninterrupted_run(
    tmp_path, tiny_text_model, method, steps, half
):
    over = {"steps": steps, "batch_sampler": {"falcon_update_interval": 2, "search_space_size": 64}}
    full = Trainer(resolve_config(method, _values(tmp_path, tiny_text_model, **over)))
    full.fit()
    values = _values(tmp_path, tiny_text_model, out_dir=str(tmp_path / "half"), **over)
    half_run = Trainer(resolve_config(method, values))
    half_run.fit(stop_at=half)
    half_run.save()
    out = str(tmp_path / "resumed.pt")
    config = half_run.cfg.to_dict()
    proc = subprocess.run(
        [sys.executable, "-c", _resume_script(config, out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(out)
    expected = full.model.trainable_state_dict()
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key


def test_resume_refuses_a_different_config(tmp_path, tiny_text_model):
    t = Trainer(resolve_config("infonce", _values(tmp_path, tiny_text_model, steps=1)))
    t.fit()
    t.save()
    other = Trainer(resolve_config("infonce", _values(tmp_path, tiny_text_model, seed=3)))
    with pytest.raises(ValueError, match="different configuration"):
        other.resume()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["infonce", "bacl_dual"])
def test_ddp_two_ranks_match_single_process(tmp_path, tiny_text_model, method):
    # SGD: the update is linear in the gradient (Adam's first step is ±lr·sign(g), which
    # flips on gradients at round-off level and would hide nothing but noise)
    values = _values(
        tmp_path, tiny_text_model, model={"dropout": 0.0}, optim={"name": "sgd", "lr": 0.05}
    )
    single = Trainer(resolve_config(method, values))
    before = {k: v.clone() for k, v in single.model.trainable_state_dict().items()}
    logs = single.train_step(list(range(16)))
    ranks = run_distributed(train_step_worker, 2, single.cfg.to_dict(), 16)
    # every rank logs the global figures (the mean over ranks), not its own shard's
    for r in ranks:
        assert r["loss"] == pytest.approx(logs["loss"], abs=1e-5)
    expected = single.model.trainable_state_dict()
    moved = 0
    for key, value in expected.items():
        for r in ranks:
            assert torch.allclose(r["params"][key], value, atol=1e-5), key
        moved += int(not torch.equal(value, before[key]))
    assert moved > 10  # the update really changed the model


@pytest.mark.slow
def test_bench_trains_runs_in_parallel_reports_and_resumes(tmp_path, tiny_text_model, monkeypatch):
    from hardneg.bench import presets, runner, workers

    values = _values(tmp_path, tiny_text_model, log_every=1)
    overrides = {key: values[key] for key in ("model", "miner", "optim", "checkpoint_every")}
    overrides["data"] = {k: v for k, v in values["data"].items() if k != "preset"}
    preset = presets.BenchPreset(
        "tiny",
        steps=3,
        batch_size=16,
        seeds=1,
        methods=["infonce", "bacl_dual"],
        overrides=overrides,
    )
    monkeypatch.setitem(presets.PRESETS, "quick", preset)
    out = tmp_path / "bench"
    report = runner.run_bench("quick", out, jobs=2)
    for method in ("infonce", "bacl_dual"):
        result = json.loads((out / method / "seed0" / "metrics.json").read_text())
        assert result["steps"] == 3 and result["peak_mem_mib"] >= 0
        assert (out / method / "seed0" / "run.log").is_file()
    assert (out / "results.md").is_file() and report
    # a finished bench starts nothing again, and adding a method trains only that one
    started = []
    give = workers.Worker.give
    monkeypatch.setattr(
        workers.Worker, "give", lambda self, key, cfg: started.append(cfg) or give(self, key, cfg)
    )
    runner.run_bench("quick", out, methods=["infonce", "bacl_dual", "hcl"], jobs=2)
    assert [Path(c["out_dir"]).parent.name for c in started] == ["hcl"]
    with pytest.raises(ValueError, match="jobs must be ≥ 1"):
        runner.run_bench("quick", out, jobs=0)


@pytest.mark.slow
def test_a_worker_run_after_another_equals_a_run_in_its_own_process(tmp_path, tiny_text_model):
    """The bench's workers share MiniLM and the data between runs: the second run of a worker
    (frozen tower features of the first still on the shared splits) reports exactly what the
    same config reports when trained alone in a fresh process."""
    from hardneg.bench import workers

    values = _values(tmp_path, tiny_text_model, steps=3)
    frozen = {  # the first run leaves its frozen tower's features on the shared splits
        **values,
        "model": {**values["model"], "freeze_image_tower": True},
        "pretrain": {"steps": 2, "batch_size": 16},
    }
    first = resolve_config("infonce", {**frozen, "out_dir": str(tmp_path / "w" / "a")})
    second = resolve_config("bacl_dual", {**values, "out_dir": str(tmp_path / "w" / "b")})
    alone = resolve_config("bacl_dual", {**values, "out_dir": str(tmp_path / "alone")})
    worker = workers.Worker(1, tmp_path / "workers.log")
    for key, cfg in (("a", first), ("b", second)):
        worker.give((key, 0), cfg.to_dict())
        while (ok := worker.poll()) is None:
            time.sleep(0.2)
        assert ok, (Path(cfg.out_dir) / "run.log").read_text()[-2000:]
    worker.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(
        [sys.executable, "-m", "hardneg.train.run", json.dumps(alone.to_dict())],
        env=env,
        check=True,
    )

    def figures(run):
        result = json.loads((Path(run) / "metrics.json").read_text())
        return result["metrics"], result["batch_fn_rate"], result["steps"]

    assert figures(second.out_dir) == figures(alone.out_dir)
    log = (Path(second.out_dir) / "run.log").read_text()
    assert "Traceback" not in log
    # the second run really reused the first's MiniLM (loading it prints its progress bar)
    assert "Loading weights" in (Path(first.out_dir) / "run.log").read_text()
    assert "Loading weights" not in log


def test_worker_runs_of_one_bench_share_their_data_key(tmp_path, tiny_text_model):
    """NegCLIP's switches only widen a bank that encode_all already widens: its runs reuse the
    other methods' data; another data seed does not."""
    from hardneg.train.run import SharedData

    values = {**_values(tmp_path, tiny_text_model), "data": {
        **_values(tmp_path, tiny_text_model)["data"], "encode_all": True}}  # fmt: skip
    keys = {m: SharedData._key(resolve_config(m, values)) for m in ("infonce", "negclip", "falcon")}
    assert len(set(keys.values())) == 1
    other = {**values, "data": {**values["data"], "seed": 1}}
    assert SharedData._key(resolve_config("infonce", other)) != keys["infonce"]


def test_runs_share_data_only_when_they_need_the_same_text_bank(tmp_path, tiny_text_model):
    """Without encode_all, InfoNCE encodes no training hard negatives and NegCLIP must: their
    data differ. The pre-training stage's negatives widen InfoNCE's bank to NegCLIP's."""
    from hardneg.train.data import run_data_config
    from hardneg.train.run import SharedData

    values = _values(tmp_path, tiny_text_model)
    infonce, negclip = (resolve_config(m, values) for m in ("infonce", "negclip"))
    assert not run_data_config(infonce).encode_all and run_data_config(negclip).encode_all
    assert SharedData._key(infonce) != SharedData._key(negclip)
    staged = {**values, "pretrain": {"steps": 1, "negative_kinds": ["replace_digit"]}}
    assert SharedData._key(resolve_config("infonce", staged)) == SharedData._key(
        resolve_config("negclip", staged)
    )


def test_refused_resume_leaves_the_run_directory_unchanged(tmp_path, tiny_text_model):
    from hardneg.train.run import train_and_evaluate

    first = resolve_config("infonce", _values(tmp_path, tiny_text_model, steps=1))
    trainer = Trainer(first)
    trainer.fit()
    trainer.save()
    run = Path(first.out_dir)
    (run / "config.json").write_text(json.dumps(first.to_dict(), indent=2))
    stale = run / ".checkpoint.pt.k2j3h4g5.tmp"  # a checkpoint write killed by kill -9
    stale.write_bytes(b"\0" * 1000)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    other = resolve_config("infonce", _values(tmp_path, tiny_text_model, steps=1, seed=3))
    with pytest.raises(ValueError, match="different configuration"):
        train_and_evaluate(other)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after.keys() == before.keys()  # no lock file or temp file left either
    for name, content in before.items():
        assert after[name] == content, f"{name} was rewritten by a refused resume"
    # the same config resumes (nothing left to train), cleans the temp file and evaluates
    result = train_and_evaluate(first)
    assert result["steps"] == 1 and (run / "metrics.json").is_file() and not stale.exists()
    assert (run / "config.json").read_bytes() == before["config.json"]


_BENCH = """
import sys, json
from hardneg import cli
from hardneg.bench import presets
presets.PRESETS["quick"] = presets.BenchPreset(**json.loads(sys.argv[1]))
sys.exit(cli.main(["bench", "--out", sys.argv[2], "--jobs", "2"]))
"""


def _bench_preset(tmp_path, text_model, steps):
    values = _values(tmp_path, text_model)
    overrides = {key: values[key] for key in ("model", "miner", "optim", "checkpoint_every")}
    overrides["data"] = {k: v for k, v in values["data"].items() if k != "preset"}
    return {
        "data_preset": "tiny",
        "steps": steps,
        "batch_size": 16,
        "seeds": 1,
        "methods": ["infonce", "hcl"],
        "overrides": overrides,
    }


@pytest.mark.slow
def test_sigterm_to_the_bench_stops_its_training_processes(tmp_path, tiny_text_model):
    import os
    import signal
    import time

    import psutil

    from hardneg.train.run_lock import lock_holder

    out = tmp_path / "bench"
    preset = _bench_preset(tmp_path, tiny_text_model, steps=100_000)  # trains "forever"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    bench = subprocess.Popen(
        [sys.executable, "-c", _BENCH, json.dumps(preset), str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    runs = [out / m / "seed0" for m in preset["methods"]]
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 300
        while not all((r / "train_log.csv").is_file() for r in runs):  # both are training
            assert bench.poll() is None, bench.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the bench's runs never started"
            time.sleep(0.5)
        children = psutil.Process(bench.pid).children(recursive=True)
        holders = {lock_holder(r) for r in runs}
        sent = time.monotonic()
        bench.send_signal(signal.SIGTERM)
        returncode = bench.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"orphaned training processes: {[p.pid for p in alive]}"
        stopped_in = time.monotonic() - sent
        print(f"bench and its {len(children)} trainers stopped {stopped_in:.1f} s after SIGTERM")
        assert stopped_in < 30
        assert returncode == 128 + signal.SIGTERM
        assert holders <= {c.pid for c in children}  # each run was locked by its trainer
        assert all(lock_holder(r) is None for r in runs)
    finally:
        for proc in [*children, psutil.Process(bench.pid)] if bench.poll() is None else children:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def test_bench_refuses_a_run_directory_locked_by_a_live_process(
    tmp_path, tiny_text_model, monkeypatch
):
    from hardneg.bench import presets, runner, workers
    from hardneg.train.run_lock import RunLock, RunLockedError

    preset = presets.BenchPreset(**_bench_preset(tmp_path, tiny_text_model, steps=3))
    monkeypatch.setitem(presets.PRESETS, "quick", preset)
    monkeypatch.setattr(workers, "Worker", lambda *a: pytest.fail("launched a run"))
    out = tmp_path / "bench"
    with RunLock(out / "hcl" / "seed0"):  # a trainer of an earlier bench is still running
        with pytest.raises(RunLockedError, match=r"hcl/seed0 is locked by running process \d+"):
            runner.run_bench("quick", out)


def test_the_batch_sampler_knows_digitscenes_meanings(tmp_path, tiny_text_model):
    """Its diagnostics (false-negative rate, q of anchors with a same-meaning item) need the
    train scenes' meaning ids: the recipe hands them over."""
    trainer = Trainer(resolve_config("infonce", _values(tmp_path, tiny_text_model)))
    expected = trainer.recipe.train_split.semantic_ids.numpy()
    assert np.array_equal(trainer.sampler.semantic_ids, expected)
