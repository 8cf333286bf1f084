"""Fault suite for files: modes, stale temp files, run-directory locks, corrupt caches.

Each test plays a hostile user or a crash (issue 18 items 2, 3, 5): a corrupt cache is
detected and rebuilt, a second runner is refused, a dead runner's lock and temp files are
recovered, and files are created with the umask's mode like ``open()``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch
from torch import nn

from hardneg import cli
from hardneg.data import checksums
from hardneg.data.atomic_files import atomic_write, remove_stale_temps
from hardneg.data.digitscenes.textbank import encode_bank
from hardneg.models.outputs import TextOutput
from hardneg.train.finite import non_finite_message
from hardneg.train.run_lock import RunLock, RunLockedError, lock_holder
from tests.helpers.model_fixtures import write_open_clip_config
from tests.helpers.real_fixtures import write_csv


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_honours_the_umask_like_open(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
        with open(tmp_path / "b.bin", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.bin") == 0o666 & ~umask == _mode(tmp_path / "b.bin")


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "shared.json"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and _mode(path) == 0o640


# ------------------------------------------------------------------------ stale temp files
def test_stale_temps_of_dead_writers_are_removed_live_and_foreign_files_kept(tmp_path):
    def killed(f):
        f.write(b"partial")
        raise KeyboardInterrupt  # an interrupted write removes its own temp file

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "checkpoint.pt", killed)
    assert os.listdir(tmp_path) == []
    seen = []  # the name of a temp file being written by this (live) process
    atomic_write(tmp_path / "checkpoint.pt", lambda f: seen.extend(os.listdir(tmp_path)))
    (tmp_path / "checkpoint.pt").unlink()
    host_pid = seen[0].split(".")[3]  # .checkpoint.pt.<host>-<pid>.<hex>.tmp
    assert host_pid.endswith(f"-{os.getpid()}")
    live = tmp_path / seen[0]
    dead = tmp_path / seen[0].replace(f"-{os.getpid()}.", f"-{_dead_pid()}.")  # kill -9
    other_host = tmp_path / seen[0].replace(host_pid, f"elsewhere-{_dead_pid()}")
    legacy = tmp_path / ".checkpoint.pt.k2j3h4g5.tmp"  # pre-PID name: writer unknown
    foreign = tmp_path / ".notes.tmp"  # not ours
    for p in (dead, live, other_host, legacy, foreign):
        p.write_bytes(b"x" * 100)
    assert remove_stale_temps(tmp_path) == [dead]
    assert {p.name for p in tmp_path.iterdir()} == {
        live.name,
        other_host.name,
        legacy.name,
        foreign.name,
    }
    # the owner of a locked directory knows no one else writes there: every temp of ours goes
    assert sorted(remove_stale_temps(tmp_path, locked=True)) == sorted([live, other_host, legacy])
    assert [p.name for p in tmp_path.iterdir()] == [foreign.name]


# --------------------------------------------------------------------------- run lock
_HOLDER = """
import sys, time
from hardneg.train.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_refuses_a_second_live_runner_and_recovers_a_stale_one(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(run) == holder.pid
        with pytest.raises(RunLockedError, match=rf"{run}.*locked by running process {holder.pid}"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file (with its PID) is stale
    assert (run / "run.lock").read_text().split()[0] == str(holder.pid)
    assert lock_holder(run) is None
    with RunLock(run) as lock:
        assert (run / "run.lock").read_text().split()[0] == str(os.getpid())
        assert lock_holder(run) == os.getpid()
        with pytest.raises(RunLockedError):  # a second lock in the same process, too
            RunLock(run).acquire()
    assert not (run / "run.lock").exists() and lock_holder(run) is None
    assert lock.released


def test_lock_file_written_by_hand_with_a_dead_pid_is_recovered(tmp_path):
    (tmp_path / "run.lock").write_text(f"{_dead_pid()} somehost\n")
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text().split()[0] == str(os.getpid())


def test_hardneg_train_on_a_locked_run_directory_fails_before_training(tmp_path, capsys):
    from hardneg import cli

    run = tmp_path / "run"
    with RunLock(run):
        rc = cli.main(["train", "--method", "infonce", "--out", str(run), "--steps", "1"])
        assert sorted(p.name for p in run.iterdir()) == ["run.lock"]  # nothing else written
    assert rc == 2
    assert f"locked by running process {os.getpid()}" in capsys.readouterr().err


# --------------------------------------------------------------------------- text bank
def _flip(path, offset: int, n: int) -> None:
    data = bytearray(path.read_bytes())
    for k in range(offset, offset + n):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


class _FakeTower(nn.Module):
    """Deterministic token states from the characters of each caption (no model download)."""

    token_dim, pooled_dim, pad_token_id = 8, 4, 0

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, 8), requires_grad=False)
        self.calls = 0

    def encode_text(self, texts):
        self.calls += 1
        length = max(len(t) for t in texts)
        codes = torch.zeros(len(texts), length)
        for i, t in enumerate(texts):
            codes[i, : len(t)] = torch.tensor([ord(c) / 128 for c in t])
        tokens = codes[:, :, None] * self.weight
        mask = codes > 0
        return TextOutput(tokens, mask, tokens[:, :, :4].mean(1), (codes * 128).long())


def test_text_bank_flipped_bytes_are_detected_and_rebuilt(tmp_path):
    texts = [f"caption number {i} " + "x" * (i % 7) for i in range(60)]
    tower = _FakeTower()
    fresh = encode_bank(tower, texts, max_len=24, cache_dir=tmp_path, progress=False)
    (path,) = (tmp_path / "text").glob("*.pt")
    size = path.stat().st_size
    _flip(path, size // 2, 64)  # inside the token states, as in the issue
    tower.calls = 0
    with pytest.warns(RuntimeWarning, match=rf"{path.name}.*checksum"):
        bank = encode_bank(tower, texts, max_len=24, cache_dir=tmp_path, progress=False)
    assert tower.calls > 0  # recomputed
    assert torch.equal(bank.tokens, fresh.tokens) and torch.equal(bank.pooled, fresh.pooled)
    tower.calls = 0  # the rebuilt file verifies
    again = encode_bank(tower, texts, max_len=24, cache_dir=tmp_path, progress=False)
    assert tower.calls == 0 and torch.equal(again.tokens, fresh.tokens)


def test_text_bank_without_checksum_is_rebuilt(tmp_path, monkeypatch):
    texts = ["a red 3", "a blue 7"]
    tower = _FakeTower()
    encode_bank(tower, texts, max_len=8, cache_dir=tmp_path, progress=False)
    for p in (tmp_path / "text").glob("*.sha256"):
        p.unlink()  # killed between the cache file and its checksum
    monkeypatch.setattr(checksums, "_VERIFIED", {})  # a new process: nothing verified yet
    tower.calls = 0
    with pytest.warns(RuntimeWarning, match="checksum"):
        encode_bank(tower, texts, max_len=8, cache_dir=tmp_path, progress=False)
    assert tower.calls > 0


# ------------------------------------------------------------- non-finite loss inputs
def test_non_finite_message_names_the_first_bad_input():
    good = torch.ones(2, 3)
    tokens = torch.zeros(2, 4, 3)
    tokens[1, 2, 0] = float("nan")
    scale = torch.tensor(float("inf"))
    msg = non_finite_message(
        {"images": good, "ids": torch.arange(4), "text_tokens": tokens, "logit_scale": scale}
    )
    assert msg.startswith("text_tokens has 1 non-finite value")
    assert "nan" in msg and "(1, 2, 0)" in msg
    assert non_finite_message({"logit_scale": scale}).startswith("logit_scale has 1 non-finite")
    assert non_finite_message({"images": good, "missing": None}) is None
    with pytest.raises(ValueError, match="tensors must map names to tensors"):
        non_finite_message({"images": [1.0]})


def test_a_dataset_smaller_than_the_batch_names_the_dataset_size(tmp_path, capsys):
    table = write_csv(tmp_path, n=3, captions_per_image=1)
    (tmp_path / "m").mkdir()
    spec = f"open_clip:{write_open_clip_config(tmp_path / 'm')}"
    argv = ["train", "--data", f"csv:{table}", "--model", spec, "--out", str(tmp_path / "r")]
    assert cli.main([*argv, "--steps", "1", "--set", "batch_size=8", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "has 3 items (images), fewer than batch_size=8" in err and "search_space" not in err


def test_a_karpathy_json_without_a_test_split_is_refused_before_training(tmp_path, capsys):
    import json

    from tests.helpers.real_fixtures import write_karpathy

    path, images = write_karpathy(tmp_path, n_train=6, n_test=2)
    data = json.loads(path.read_text())
    data["images"] = [e for e in data["images"] if e["split"] != "test"]
    path.write_text(json.dumps(data))
    argv = ["train", "--data", f"karpathy:{path}:train", "--images", str(images)]
    assert cli.main([*argv, "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "no 'test' split" in err and "data.eval_dataset" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()  # refused before any training
