"""Distributed training: DDP equivalence with one big process, torchrun end to end, faults, streaming.

Equivalence design. Two gloo processes with per-process batch B must reproduce one process with batch 2B
on the same samples: the same loss and the same gradients, step after step. What makes this *exactly*
testable is removing the one legitimately per-process statistic, BatchNorm: PyTorch's SyncBatchNorm only
runs on GPUs, so the test uses a tiny conv encoder with GroupNorm (per-sample statistics) and replaces the
heads' BatchNorm layers with identities, in the reference and in the workers alike. Everything else is the
production code: the method modules, the losses with their autograd-aware all-gather, DDP gradient
averaging, the optimizer and ``after_step`` (BYOL's EMA teacher). Views are drawn once for the global
batch and sliced per rank, so both sides see the same pixels.

Known pitfalls this catches: gradients off by a factor 1/world_size when the all-gather backward does
not sum (lightly #1920), and positives looked up at the wrong column when the label offset
``rank * B`` is forgotten (lightly #1177); both are also checked explicitly below.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup.checkpoint import load_checkpoint

from .helpers import make_class_folder, tiny_method_overrides

METHODS = ["simclr", "byol", "barlowtwins"]
B = 4  # per-process batch
WORLD = 2
STEPS = 3
ROOT = Path(__file__).resolve().parents[1]


class ToyEncoder(nn.Module):
    """conv-GroupNorm-ReLU-pool: no batch statistics, so per-process and global batches agree exactly."""

    num_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _strip_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, nn.Identity())
        else:
            _strip_batchnorm(child)


def _build(method: str) -> nn.Module:
    from selfsup.config import from_dict
    from selfsup.methods import registry

    spec = registry()[method]
    cfg = from_dict(spec.config_cls, tiny_method_overrides(method))
    torch.manual_seed(0)
    m = spec.build(ToyEncoder(), cfg, image_size=8)
    _strip_batchnorm(m)
    m.train()
    return m


def _views(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(WORLD * B, 3, 8, 8, generator=g) for _ in range(2)]


def _multi_views() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(77)
    return [torch.randn(WORLD * B, 6, generator=g) for _ in range(4)]


def _run(method: str, rank: int, world: int) -> dict[str, list]:
    """STEPS optimizer steps; returns per-step global loss and gradients (and the final weights)."""
    from selfsup import distributed
    from selfsup.methods import Batch, Progress

    m = _build(method)
    model: nn.Module = m
    if world > 1:
        model = nn.parallel.DistributedDataParallel(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
    out: dict[str, list] = {"loss": [], "grads": []}
    lo, hi = rank * (WORLD * B // world), (rank + 1) * (WORLD * B // world)
    for step in range(STEPS):
        views = [v[lo:hi] for v in _views(step)]
        progress = Progress(step=step, total_steps=10, epoch=0, steps_per_epoch=10)
        loss = model(Batch(views=views, index=torch.arange(lo, hi)), progress).loss
        out["loss"].append(float(distributed.all_reduce_mean(loss.detach())))
        opt.zero_grad()
        loss.backward()
        out["grads"].append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        opt.step()
        if hasattr(m, "after_step"):
            m.after_step(progress)
    out["final"] = [{k: v.clone() for k, v in m.state_dict().items()}]
    return out


def _worker(rank: int, port: int, tmp: str) -> None:
    import torch.distributed as dist

    from selfsup import distributed
    from selfsup.losses.contrastive import multi_view_nt_xent_loss, nt_xent_loss

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results = {m: _run(m, rank, WORLD) for m in METHODS}
        # label-offset pitfall (lightly #1177): forgetting rank * B must change rank 1's loss
        g = torch.Generator().manual_seed(5 + rank)  # different samples on each rank
        z1, z2 = torch.randn(B, 6, generator=g), torch.randn(B, 6, generator=g)
        right = float(nt_xent_loss(z1, z2, 0.5))
        real_rank = distributed.rank
        distributed.rank = lambda: 0  # type: ignore[assignment]
        try:
            wrong = float(nt_xent_loss(z1, z2, 0.5))
        finally:
            distributed.rank = real_rank  # type: ignore[assignment]
        results["offset"] = {"right": right, "wrong": wrong}  # type: ignore[assignment]
        # multi-crop NT-Xent: this rank's slice of 4 global views; loss and input gradients to compare with
        # one process on the global batch (DDP averages: the global gradient is this one / WORLD)
        local = [v[rank * B : (rank + 1) * B].clone().requires_grad_() for v in _multi_views()]
        loss = multi_view_nt_xent_loss(local, 0.3)
        loss.backward()
        results["multi_view"] = {  # type: ignore[assignment]
            "loss": float(distributed.all_reduce_mean(loss.detach())), "grads": [v.grad for v in local]}
        torch.save(results, os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for method in METHODS:
        ref = _run(method, 0, 1)
        for r in range(WORLD):
            dist_run = got[r][method]
            assert dist_run["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6), (method, r)
            for step in range(STEPS):
                gr, gd = ref["grads"][step], dist_run["grads"][step]
                assert set(gr) == set(gd), method
                for name in gr:
                    scale = float(gr[name].abs().max())
                    assert torch.allclose(gd[name], gr[name], rtol=1e-4, atol=1e-6 + 1e-4 * scale), (
                        f"{method} step {step} {name}: max diff {float((gd[name] - gr[name]).abs().max()):.3g}")
                # the lightly #1920 pitfall, stated explicitly: the gradient norm ratio is 1, not 1/W
                num = sum(float(g.norm()) ** 2 for g in gd.values()) ** 0.5
                den = sum(float(g.norm()) ** 2 for g in gr.values()) ** 0.5
                assert num / den == pytest.approx(1.0, rel=1e-4), method
            for k, v in ref["final"][0].items():
                w = dist_run["final"][0][k].float()
                tol = 1e-5 + 1e-4 * float(v.float().abs().max())
                assert torch.allclose(w, v.float(), rtol=1e-4, atol=tol), (method, k, float((w - v).abs().max()))
        assert len({round(x, 6) for x in ref["loss"]}) == STEPS, "the weights must change between steps"
    off = got[1]["offset"]
    assert abs(off["right"] - off["wrong"]) > 1e-3, "a wrong label offset must be detectable"
    from selfsup.losses.contrastive import multi_view_nt_xent_loss

    full = [v.clone().requires_grad_() for v in _multi_views()]
    ref_loss = multi_view_nt_xent_loss(full, 0.3)
    ref_loss.backward()
    for r in range(WORLD):
        mv = got[r]["multi_view"]
        assert mv["loss"] == pytest.approx(ref_loss.item(), rel=1e-5)
        for v, g in zip(full, mv["grads"]):
            assert torch.allclose(g / WORLD, v.grad[r * B : (r + 1) * B], atol=1e-6), r


# ---------------------------------------------------------------------------------------------- torchrun


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "SELFSUP_CACHE": str(tmp_path / "cache"),
            "SELFSUP_STREAM_WORKERS": "1", "PYTHONWARNINGS": "ignore"}


def _pretrain_cmd(data: str, run: Path, nproc: int, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return [*(launcher if nproc > 1 else [sys.executable]), "-m", "selfsup", "pretrain", "--data", data,
            "--method", "simclr", "--backbone", "cnn-compact", "--image-size", "16", "--batch-size", "8",
            "--device", "cpu", "--no-progress", "--out", str(run), "--set", "train.threads=1",
            "--set", "backbone.width=4", "--set", "train.log_every=1", "--set", "method.proj_hidden_dim=16",
            "--set", "method.proj_out_dim=16", *extra]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _no_tmp(run: Path) -> bool:
    return not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.integration
def test_torchrun_two_processes_pretrain_resume_and_evaluate(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=16)
    run = tmp_path / "run"
    env = _env(tmp_path)
    r = subprocess.run(_pretrain_cmd(str(data), run, 2, "--epochs", "3", "--max-steps", "3", "--val", str(data)),
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("selfsup pretrain: simclr") == 1, "only rank 0 prints the header"
    assert "processes: 2" in r.stderr
    assert load_checkpoint(run)["step"] == 3 and load_checkpoint(run)["world_size"] == 2
    r = subprocess.run(_pretrain_cmd(str(data), run, 2, "--epochs", "3", "--max-steps", "5", "--resume"),
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    steps = [x["step"] for x in _rows(run) if "loss" in x]
    assert steps == [1, 2, 3, 4, 5], "rank 0 alone writes metrics, once per step, one trajectory"
    assert load_checkpoint(run)["step"] == 5 and _no_tmp(run)
    r = subprocess.run([sys.executable, "-m", "selfsup", "eval", "knn", "--checkpoint", str(run), "--train",
                        str(data), "--test", str(data), "--json", "--no-baselines"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.integration
def test_killing_one_rank_stops_the_job_and_the_checkpoint_resumes_on_one_process(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=16)  # 4 steps per epoch, saved each epoch
    run = tmp_path / "run"
    env = _env(tmp_path)
    proc = subprocess.Popen(_pretrain_cmd(str(data), run, 2, "--epochs", "1000"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(_rows(run)) >= 10):
            time.sleep(0.2)
        assert (run / "checkpoint.pt").exists(), "no checkpoint after 10 steps"
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        rank1 = [int(p) for p in workers if "RANK=1\0" in Path(f"/proc/{p}/environ").read_text()]
        assert len(rank1) == 1, workers
        os.kill(rank1[0], signal.SIGKILL)
        t0 = time.time()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert time.time() - t0 < 60, "the surviving rank must not hang"
    assert "lost contact with the other processes" in err or "SIGTERM" in err, err[-3000:]
    assert _no_tmp(run)
    saved = load_checkpoint(run)  # intact
    assert saved["step"] % 4 == 0 and saved["step"] >= 4
    # resume on ONE process: the global batch is unchanged, so the schedule is the same
    r = subprocess.run(_pretrain_cmd(str(data), run, 1, "--epochs", "1000", "--max-steps", str(saved["step"] + 2),
                                     "--resume"), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "written by 2 process(es), now 1" in r.stderr
    assert load_checkpoint(run)["step"] == saved["step"] + 2
    assert [x["step"] for x in _rows(run) if "loss" in x][-3:] == [saved["step"], saved["step"] + 1, saved["step"] + 2]


def test_process_count_that_does_not_divide_the_global_batch_is_a_clear_error():
    from selfsup.errors import ConfigError
    from selfsup.training.loop import EpochSampler

    with pytest.raises(ConfigError, match=r"--batch-size 8 \(global\) is not divisible by 3 processes"):
        EpochSampler(32, 8, seed=0, rank=0, world_size=3)


def test_sync_bn_on_cpu_is_a_clear_error(tmp_path, monkeypatch):
    from selfsup import distributed
    from selfsup.errors import ConfigError
    from selfsup.training.loop import pretrain

    from .helpers import tiny_config

    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = tiny_config(str(data), str(tmp_path / "run"), sync_bn=True, device="cpu")
    monkeypatch.setattr(distributed, "setup", lambda device: distributed.DistInfo(world_size=2))
    with pytest.raises(ConfigError, match="sync_bn needs CUDA"):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- streaming


def _shards(tmp_path: Path, per_shard: int = 5) -> str:
    from selfsup.data.stream import write_shards

    data = make_class_folder(tmp_path / "data", classes=2, per_class=16)
    return write_shards(str(data), tmp_path / "shards", per_shard, prefix="toy")


def test_shards_round_trip_with_labels_and_manifest(tmp_path):
    spec = _shards(tmp_path)
    import tarfile

    assert spec.endswith("toy-{000000..000006}.tar")
    manifest = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert manifest["total"] == 32 and sum(manifest["shards"].values()) == 32 and manifest["classes"] == ["class0", "class1"]
    with tarfile.open(tmp_path / "shards" / "toy-000000.tar") as tf:
        names = tf.getnames()
        cls = {n.split(".")[0]: tf.extractfile(n).read() for n in names if n.endswith(".cls")}  # type: ignore[union-attr]
    assert len(names) == 10 and all(c in (b"0", b"1") for c in cls.values())
    assert not list((tmp_path / "shards").glob("*.tmp"))


@pytest.mark.integration  # importing webdataset alone takes seconds
def test_stream_split_is_disjoint_across_ranks_and_workers_and_resume_skips_exactly(tmp_path):
    from selfsup.data.stream import open_stream

    pytest.importorskip("webdataset")
    spec = _shards(tmp_path)
    ranks = [open_stream(spec, 16, 8, seed=3, rank=r, world_size=2, workers=0) for r in range(2)]
    s0, s1 = ranks[0].shards_for(0), ranks[1].shards_for(0)
    assert not set(s0) & set(s1) and sorted(s0 + s1) == list(range(7))  # per-rank shard split
    assert ranks[0].shards_for(1) != s0 or ranks[1].shards_for(1) != s1  # reshuffled each epoch
    single = open_stream(spec, 16, 8, seed=3, workers=0)
    seen = torch.cat([single.batch(0, i)[1] for i in range(single.steps_per_epoch)])
    assert sorted(seen.tolist()) == list(range(32)), "one pass over the data per epoch"
    imgs, idx, sizes = single.batch(1, 0)  # square images: a dense batch, no per-sample sizes
    assert imgs.dtype == torch.uint8 and imgs.shape == (8, 16, 16, 3) and idx.dtype == torch.long and sizes is None
    # worker split inside a real DataLoader (2 workers), and exact resume mid-epoch by skipping
    a = open_stream(spec, 16, 4, seed=3, rank=1, world_size=2, workers=2)
    full = [a.batch(0, i) for i in range(a.steps_per_epoch)]
    b = open_stream(spec, 16, 4, seed=3, rank=1, world_size=2, workers=2)
    for i in range(2, a.steps_per_epoch):
        x, j, _ = b.batch(0, i)
        assert torch.equal(j, full[i][1]) and torch.equal(x, full[i][0])


def test_stream_spec_errors(tmp_path):
    from selfsup.data.stream import is_stream_spec, open_stream
    from selfsup.errors import ConfigError, DataError

    if importlib.util.find_spec("webdataset") is None:
        pytest.skip("webdataset is not installed (pip install 'selfsup[stream]')")
    assert is_stream_spec("wds:x/{0..3}.tar") and is_stream_spec("s/a-{000..009}.tar") and not is_stream_spec("photos")
    with pytest.raises(DataError, match="shard .*missing.tar does not exist"):
        open_stream(str(tmp_path / "missing.tar"), 16, 8)
    with pytest.raises(ConfigError, match="append '#N'"):
        open_stream("wds:https://example.invalid/a-{0..1}.tar", 16, 8)
    spec = _shards(tmp_path, per_shard=32)
    with pytest.raises(ConfigError, match="1 shard.*for 2 processes"):
        open_stream(spec, 16, 8, world_size=2)


@pytest.mark.integration
def test_pretrain_from_shards_one_and_two_processes(tmp_path):
    from selfsup.training.loop import pretrain

    from .helpers import tiny_config

    pytest.importorskip("webdataset")
    spec = _shards(tmp_path)
    cfg = tiny_config(spec, str(tmp_path / "one"), epochs=2)
    summary = pretrain(cfg)
    assert summary["steps"] == 8 and load_checkpoint(tmp_path / "one")["step"] == 8
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True
    run = tmp_path / "two"
    r = subprocess.run(_pretrain_cmd("wds:" + spec, run, 2, "--epochs", "2"), capture_output=True, text=True,
                       env=_env(tmp_path), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [x["step"] for x in _rows(run) if "loss" in x] == list(range(1, 9))
    assert all(math.isfinite(x["loss"]) for x in _rows(run) if "loss" in x)


@pytest.mark.integration
def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step_and_saves(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=16)
    run = tmp_path / "run"
    proc = subprocess.Popen(_pretrain_cmd(str(data), run, 2, "--epochs", "1000"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(_rows(run)) >= 6):
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # parse the whole stream: the ranks share one stderr pipe
    stops = re.findall(r"selfsup: error: stopped by SIGTERM at step (\d+);", err)
    assert len(stops) == 2 and stops[0] == stops[1], err[-3000:]  # both ranks, the same step
    step = int(stops[0])
    assert load_checkpoint(run)["step"] == step and _rows(run)[-1]["step"] == step and _no_tmp(run)
