"""What selfsup promises about its run folders (docs/reliability.md), each shown by measurement:

- nothing non-finite is ever written (checkpoint or encoder), a blow-up stops the run naming a finite checkpoint,
  and following the message's advice works;
- one process per run folder: a second run is refused at once naming the holder's PID; a stale lock is taken over;
- metrics.jsonl holds exactly one row per step after a kill and a rerun or a resume;
- files get the user's umask; stale temporary files are cleaned; indexes store absolute paths.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from selfsup.checkpoint import (
    atomic_write_text,
    export_encoder,
    first_nonfinite,
    load_checkpoint,
    save_checkpoint,
)
from selfsup.cli import main
from selfsup.errors import TrainingDiverged

from .helpers import make_class_folder

TINY = ["--image-size", "16", "--backbone", "cnn-compact", "--set", "backbone.width=4", "--set", "train.threads=1",
        "--no-progress", "--set", "train.log_every=1"]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _pretrain_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--method", "simclr", "--batch-size", "6", "--out", str(out), *TINY,
            *extra]


def _steps(run: Path) -> list[int]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r["step"] for r in rows if "eval" not in r]


def _all_finite(path: Path) -> bool:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return first_nonfinite(load_file(str(path))) is None
    return first_nonfinite(load_checkpoint(path)["method"]) is None


# ------------------------------------------------------------------------------------- finite-state guarantee


def test_a_nonfinite_batchnorm_buffer_is_found_and_never_saved(tmp_path):
    bn = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    assert first_nonfinite(bn.state_dict()) is None
    save_checkpoint(tmp_path / "checkpoint.pt", {"method": bn.state_dict(), "step": 1})
    good = (tmp_path / "checkpoint.pt").read_bytes()
    bn[1].running_var[1] = float("inf")  # the loss can stay finite (training uses batch statistics)
    assert first_nonfinite(bn.state_dict()) == "1.running_var"
    with pytest.raises(TrainingDiverged, match="running_var"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"method": bn.state_dict(), "step": 2})
    assert (tmp_path / "checkpoint.pt").read_bytes() == good  # the finite one is kept
    bn[1].running_var[1] = 1.0
    bn[0].weight.data[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="encoder.safetensors"):
        export_encoder(tmp_path, bn, {"backbone": {}, "image_size": 16})
    assert not (tmp_path / "encoder.safetensors").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_first_nonfinite_against_isfinite_on_every_dtype():
    """The fast check (min/max per tensor) agrees with torch.isfinite on each element, for every float dtype."""
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64):
        for bad in (None, float("nan"), float("inf"), -float("inf")):
            x = torch.randn(7, 5, generator=gen).to(dtype) * (1e300 if dtype == torch.float64 else 100)
            if bad is not None:
                x.view(-1)[int(torch.randint(0, 35, (), generator=gen))] = bad
            state = {"ok": torch.zeros(3), "empty": torch.empty(0, dtype=dtype), "nested": [{"x": x}],
                     "int": torch.arange(4)}
            expect = None if bool(torch.isfinite(x).all()) else "nested.0.x"
            assert first_nonfinite(state) == expect, (dtype, bad)


@pytest.mark.integration
def test_blown_up_batchnorm_stops_the_run_and_the_advice_works(tmp_path, capsys, monkeypatch):
    """BN statistics become inf after the first checkpoint while the loss stays finite: the run stops (exit 2),
    names the checkpoint, which is finite, and rerunning with --resume and a lower --lr finishes with finite files."""
    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    run = tmp_path / "run"
    forward = torch.nn.BatchNorm2d.forward

    def blowing_up(self, x):
        y = forward(self, x)
        if self.training and (run / "checkpoint.pt").exists():
            self.running_var.data.fill_(float("inf"))  # .data: outside autograd's version counter
        return y

    monkeypatch.setattr(torch.nn.BatchNorm2d, "forward", blowing_up)
    args = _pretrain_args(data, run, "--epochs", "3", "--lr", "0.1")
    code, err = _cli(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.startswith("selfsup:")]
    assert code == 2 and len(lines) == 1, err
    assert "NaN or infinite" in lines[0] and str(run / "checkpoint.pt") in lines[0] and "--resume" in lines[0]
    assert not (run / "encoder.safetensors").exists()
    assert load_checkpoint(run)["step"] == 2 and _all_finite(run / "checkpoint.pt")
    monkeypatch.setattr(torch.nn.BatchNorm2d, "forward", forward)
    code, err = _cli(capsys, *args[:-1], "0.01", "--resume")  # the advice: --resume and a lower --lr
    assert code == 0, err
    assert _all_finite(run / "checkpoint.pt") and _all_finite(run / "encoder.safetensors")
    assert _steps(run) == list(range(1, 7))


@pytest.mark.integration
@pytest.mark.parametrize("lr", ["1e10", "1e30"])
def test_a_huge_learning_rate_never_exports_nonfinite_weights(tmp_path, capsys, lr):
    """At 1e10 the loss stays finite while BatchNorm's running_var overflows (the case that used to export a
    NaN encoder with exit 0); at 1e30 the loss itself becomes NaN. Both stop with exit 2, write nothing
    non-finite, and the advice (no checkpoint yet: rerun with a lower --lr) works in the same folder."""
    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    run = tmp_path / "run"
    args = _pretrain_args(data, run, "--epochs", "3", "--optimizer", "sgd", "--lr")
    code, err = _cli(capsys, *args, lr)
    lines = [ln for ln in err.splitlines() if ln.startswith("selfsup:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "NaN" in lines[0] or "nan" in lines[0]
    assert not (run / "encoder.safetensors").exists()
    for f in (run / "checkpoint.pt",):
        assert not f.exists() or _all_finite(f)
    assert "rerun" in lines[0] or "lower the learning rate" in lines[0]
    code, err = _cli(capsys, *args, "0.1")
    assert code == 0, err
    assert _all_finite(run / "checkpoint.pt") and _all_finite(run / "encoder.safetensors")
    assert _steps(run) == list(range(1, 7))


def test_zero_max_steps_and_zero_time_budget_are_errors(tmp_path, capsys):
    for flag, value in (("--max-steps", "0"), ("--max-steps", "-5"), ("--time-budget", "0"), ("--time-budget", "-1"),
                        ("--time-budget", "nan")):
        code, err = _cli(capsys, *_pretrain_args(tmp_path / "d", tmp_path / "r", flag, value))
        assert code == 2 and flag in err and err.count("\n") == 1, (flag, value, err)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------- the run-folder lock

_HOLD = """
import sys, time
from selfsup.runlock import acquire_run_folder
acquire_run_folder(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""


def _hold(folder: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, line


@pytest.mark.integration
def test_a_second_run_on_a_locked_out_is_refused_at_once_naming_the_pid(tmp_path, capsys):
    run = tmp_path / "run"
    proc, _ = _hold(run)
    try:
        t = time.perf_counter()
        code, err = _cli(capsys, *_pretrain_args(tmp_path / "data", run, "--epochs", "1"))
        elapsed = time.perf_counter() - t
        assert code == 2 and err.count("\n") == 1, err
        assert f"PID {proc.pid}" in err and str(run) in err
        assert elapsed < 5.0  # at once: before any data is read (the data folder does not even exist)
        code, err = _cli(capsys, "report", str(run), "--out", str(run / "report.html"))
        assert code == 2  # not a run folder yet: refused before the lock is even tried
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.integration
def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capsys):
    from selfsup.runlock import PID_NAME, acquire_run_folder, release_run_folder

    run = tmp_path / "run"
    proc, _ = _hold(run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acquire_run_folder(run)  # the kernel released the dead holder's lock
    assert (run / PID_NAME).read_text().split()[0] == str(os.getpid())
    release_run_folder(run)

    # a live process holds the OS lock but the PID file names a dead one (e.g. a child that inherited the lock
    # outlived its killed parent): the lock is stale and taken over
    proc, _ = _hold(run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (run / PID_NAME).write_text(f"{dead.pid}\n")
        acquire_run_folder(run)
        assert f"took over the stale lock of {run} from PID {dead.pid}" in capsys.readouterr().err
        assert (run / PID_NAME).read_text().split()[0] == str(os.getpid())
        release_run_folder(run)
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_reentrant_and_a_failed_run_leaves_no_folder(tmp_path, capsys):
    from selfsup.runlock import is_held, run_folder_lock

    run = tmp_path / "run"
    with run_folder_lock(run):
        with run_folder_lock(run):  # e.g. `selfsup demo` holds its folder and calls pretrain on it
            assert is_held(run)
        assert is_held(run)
    assert not is_held(run) and not run.exists()  # nothing was written: the folder it created is gone
    code, _ = _cli(capsys, *_pretrain_args(tmp_path / "missing-data", run, "--epochs", "1"))
    assert code == 2 and not run.exists()


# ------------------------------------------------------------------------------------- consistent run folders


@pytest.mark.integration
def test_metrics_have_one_row_per_step_after_a_kill_before_the_first_checkpoint_and_a_rerun(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=16)
    run = tmp_path / "run"
    base = [sys.executable, "-m", "selfsup", *_pretrain_args(data, run, "--batch-size", "8")]
    proc = subprocess.Popen([*base, "--epochs", "1000", "--set", "train.save_every=1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 90
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # no chance to save: no checkpoint, rows 1..n on disk
    proc.wait()
    assert not (run / "checkpoint.pt").exists() and len(_steps(run)) >= 3
    with metrics.open("a") as f:
        f.write('{"step": 99, "lo')  # a write cut by the kill
    rerun = subprocess.run([*base, "--epochs", "2"], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert _steps(run) == list(range(1, 9))  # 2 epochs x 4 steps, each exactly once


@pytest.mark.integration
def test_resume_truncates_rows_beyond_the_checkpoint_and_tolerates_a_cut_last_line(tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    run = tmp_path / "run"
    args = _pretrain_args(data, run, "--epochs", "3")
    assert _cli(capsys, *args, "--max-steps", "4")[0] == 0
    assert load_checkpoint(run)["step"] == 4
    with (run / "metrics.jsonl").open("a") as f:  # rows a killed run logged after its last checkpoint
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "loss"')
    code, err = _cli(capsys, *args, "--resume", "--max-steps", "6")
    assert code == 0, err
    assert _steps(run) == list(range(1, 7))


def test_run_files_get_the_users_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    atomic_write_text(tmp_path / "b.txt", "x")
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o666 & ~old


def test_stale_temp_files_are_cleaned_when_the_folder_is_next_locked(tmp_path):
    from selfsup.runlock import run_folder_lock

    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".encoder.safetensors.k2j3h4.tmp", run / ".checkpoint.pt.x8y9.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    keep = run / ".hidden-notes"
    keep.write_text("mine")
    with run_folder_lock(run):
        assert not any(p.exists() for p in stale)
    assert keep.exists()


@pytest.mark.integration
def test_search_index_stores_an_absolute_checkpoint_path(tmp_path, capsys, monkeypatch):
    from selfsup.search import index_checkpoint

    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    monkeypatch.chdir(tmp_path)
    assert _cli(capsys, *_pretrain_args(Path("data"), Path("run"), "--max-steps", "1"))[0] == 0
    assert _cli(capsys, "embed", "--checkpoint", "run", "--data", "data", "--out", "e.safetensors")[0] == 0
    stored = index_checkpoint(tmp_path / "e.safetensors")
    assert stored is not None and Path(stored).is_absolute() and Path(stored).exists()
    monkeypatch.chdir(data)  # search from elsewhere finds the encoder
    code, err = _cli(capsys, "search", "--index", str(tmp_path / "e.safetensors"), "--query", str(data), "-k", "2")
    assert code == 0, err



@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into a read-only folder")
def test_an_output_inside_a_read_only_folder_is_refused_before_work(tmp_path):
    from selfsup.config.validate import check_output_dir, check_output_file
    from selfsup.errors import ConfigError

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="cannot write"):
            check_output_file(ro / "eval.json")
        with pytest.raises(ConfigError, match="cannot write"):
            check_output_dir(ro / "run")
    finally:
        ro.chmod(0o755)


def test_output_checks_create_nothing(tmp_path):
    from selfsup.config.validate import check_output_dir, check_output_file

    check_output_file(tmp_path / "a" / "b" / "eval.json")
    check_output_dir(tmp_path / "c" / "run")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.integration
def test_two_runs_started_together_on_one_out_never_mix(tmp_path):
    """Two processes race for the same --out: exactly one trains; the other stops with one line naming a PID."""
    data = make_class_folder(tmp_path / "data", classes=2, per_class=6)
    run = tmp_path / "run"
    # 60 steps: the winner holds the folder for seconds, longer than the two interpreters' start-up skew
    cmd = [sys.executable, "-m", "selfsup", *_pretrain_args(data, run, "--epochs", "30")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.pid, *p.communicate(timeout=120), p.returncode) for p in procs]
    codes = sorted(r[3] for r in results)
    assert codes == [0, 2], [r[2][-500:] for r in results]
    winner = next(r for r in results if r[3] == 0)
    loser = next(r for r in results if r[3] == 2)
    errors = [ln for ln in loser[2].splitlines() if ln.startswith("selfsup:")]
    assert len(errors) == 1 and f"PID {winner[0]}" in errors[0], loser[2]
    assert _steps(run) == list(range(1, 61))  # one trajectory, not two interleaved
    assert load_checkpoint(run)["step"] == 60 and _all_finite(run / "encoder.safetensors")
