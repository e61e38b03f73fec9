"""What a run reports while it trains: metrics.jsonl rows, the progress bar, the collapse monitor, online kNN."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from selfsup import console, distributed
from selfsup.checkpoint import atomic_write_text
from selfsup.config import PretrainConfig
from selfsup.data import ImageDataset
from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.methods import StepOutput
from selfsup.training.batches import TrainData
from selfsup.training.schedule import OPEN_ENDED

Row = dict[str, float | int | str]


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl (rank 0 only), flushed at every write.

    Opening it with ``truncate_after_step=s`` (the step the run starts from: the checkpoint's on --resume, 0 on
    a fresh run) drops the rows a killed run logged after ``s``, so the file holds exactly one row per logged
    step: one trajectory. A line that does not parse (a kill in the middle of a write cuts the last one) is
    dropped too, with a note.
    """

    def __init__(self, path: Path | None, truncate_after_step: int | None = None,
                 tensorboard: Path | None = None) -> None:
        self.path = path
        self.tb_dir, self.tb_closed = tensorboard, False
        self.tb_writer: Any = None  # torch.utils.tensorboard.SummaryWriter, opened at the first row
        # TensorBoard drops the events a killed run wrote after the step this run starts from, like the rows above
        self.tb_purge: int | None = (truncate_after_step or 0) + 1
        if path is not None and path.exists() and truncate_after_step is not None:
            try:
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as exc:
                raise DataError(f"{path}: cannot read it ({exc.strerror}); move it away to start a new log") from None
            keep, broken = [], 0
            for ln in lines:
                if not ln.strip():
                    continue
                try:
                    row = json.loads(ln)
                    step = int(row.get("step", 0)) if isinstance(row, dict) else None
                except (ValueError, TypeError):
                    step = None
                if step is None:
                    broken += 1
                elif step <= truncate_after_step:
                    keep.append(ln)
            if broken:
                console.info(f"note: {path}: dropped {broken} unreadable line(s) (a run killed while writing)")
            atomic_write_text(path, "".join(k + "\n" for k in keep))

    def write(self, row: Row) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb_dir is not None:
            self._write_tensorboard(row)

    def _write_tensorboard(self, row: Row) -> None:
        """The row's numbers as scalars at its step: ``train/loss``, ``train/lr``, ... and ``eval/knn_top1``."""
        if self.tb_writer is None:
            from torch.utils.tensorboard import SummaryWriter  # optional extra, checked by check_log_backend

            purge, self.tb_purge = self.tb_purge, None
            self.tb_writer = SummaryWriter(str(self.tb_dir), purge_step=purge)
        group = "eval" if "eval" in row else "train"
        step = int(row["step"])
        for key, value in row.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb_writer.add_scalar(f"{group}/{key}", value, step)
        self.tb_writer.flush()
        if self.tb_closed:  # a row after close() (the final kNN): written, then closed again
            self.close()
            self.tb_closed = True

    def close(self) -> None:
        """Close the TensorBoard writer (rows written later still reach it: see ``_write_tensorboard``)."""
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None
        self.tb_closed = True


def check_log_backend(cfg: PretrainConfig) -> None:
    """``train.log: tensorboard`` needs the optional ``tensorboard`` package: say so before anything is made."""
    if cfg.train.log != "tensorboard":
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("--log tensorboard needs the tensorboard package: pip install 'selfsup[tensorboard]' "
                          "(or drop --log tensorboard; metrics.jsonl is always written)") from None


def embedding_stats(emb: torch.Tensor) -> dict[str, float]:
    """Collapse monitor: std of L2-normalised embeddings (x sqrt(D): ~1 healthy, ~0 collapsed) and RankMe.

    RankMe (Garrido et al. 2023, arXiv 2210.02885, Eq. 1): exp of the entropy of the normalised singular values.
    """
    e = torch.nn.functional.normalize(emb.float(), dim=1)
    std = float(e.std(dim=0).mean() * math.sqrt(e.shape[1]))
    s = torch.linalg.svdvals(e)
    p = s / s.sum().clamp_min(1e-12) + 1e-7
    rankme = float(torch.exp(-(p * p.log()).sum()))
    return {"emb_std": std, "rankme": rankme}


class Monitor:
    """The run's reporting: rows every ``train.log_every`` steps, the bar, and kNN on ``data.val``."""

    def __init__(self, cfg: PretrainConfig, data: TrainData, backbone: torch.nn.Module, metrics: MetricsLog, *,
                 main: bool, world_size: int, name: str, start: int, end: int) -> None:
        self.cfg, self.data, self.backbone, self.metrics = cfg, data, backbone, metrics
        self.main, self.world_size = main, world_size
        # under --time-budget the step count is refitted as throughput is measured, so the bar runs against the
        # clock (seconds of the budget) and shows the step in its postfix; otherwise it counts steps
        self.budget_s = round(cfg.train.time_budget * 60) if cfg.train.time_budget else None
        self.bar = None
        if main and cfg.train.progress and console.bars():
            self.bar = (tqdm(total=self.budget_s, unit="s", dynamic_ncols=True, desc=name,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s of the budget{postfix}")
                        if self.budget_s else tqdm(total=end, initial=start, unit="step", dynamic_ncols=True, desc=name))
        self.post = ""  # the bar's postfix: the last logged loss, throughput and lr
        self.last_row: Row = {}
        self.knn_history: list[Row] = []
        self.t_start = time.perf_counter()
        self.t_window, self.n_window = time.perf_counter(), 0

    @property
    def knn_possible(self) -> bool:
        """kNN needs labelled validation data and random access to the training images (not a stream)."""
        return self.data.val is not None and self.data.images is not None

    def _features(self, ds: ImageDataset, n: int | None = None) -> torch.Tensor:
        self.backbone.eval()
        f = extract_features(self.backbone, ds.images if n is None else ds.images[:n],
                             image_size=self.cfg.data.image_size, precision=self.cfg.train.precision,
                             crop_fraction=self.cfg.data.eval_crop_fraction)
        self.backbone.train()
        return f

    def knn(self) -> dict[str, float]:
        """Online kNN top-1 of the current encoder on ``data.val`` (empty when it cannot run)."""
        train, val = self.data.images, self.data.val
        if train is None or val is None:
            return {}
        feats_tr, feats_te = self._features(train), self._features(val)
        if train.labels is None or val.labels is None:
            return {}
        res = knn_accuracy(feats_tr, torch.tensor(train.labels), feats_te, torch.tensor(val.labels),
                           k=self.cfg.train.knn_k, temperature=self.cfg.train.knn_t,
                           num_classes=max(train.num_classes, val.num_classes))
        return {"knn_top1": res["top1"]}

    def eval_probe(self) -> tuple[float, int]:
        """(seconds per image, feature dim) of the final kNN's feature extraction, timed on <= 512 images."""
        assert self.data.images is not None
        n = min(512, len(self.data.images))
        t = time.perf_counter()
        f = self._features(self.data.images, n)
        return (time.perf_counter() - t) / max(1, n), int(f.shape[1])

    def step_done(self, step: int, end_step: int, spe: int, lr: float, grad_norm: float | None,
                  views: list[torch.Tensor], out: StepOutput, n_images: int) -> None:
        """After each step: count images; every ``log_every`` steps (and at the end) write a row."""
        self.n_window += n_images * self.world_size
        if step % self.cfg.train.log_every == 0 or step == end_step:
            self._log(step, spe, lr, grad_norm, views, out)
        if self.bar is not None:
            if self.budget_s:
                self.bar.n = min(self.budget_s, round(time.perf_counter() - self.t_start))
                # before the budget's first fit the step total is a placeholder (schedule.OPEN_ENDED): no total
                total = f"/{end_step}" if end_step < OPEN_ENDED else ""
                self.bar.set_postfix_str(f"step {step}{total}, {self.post}", refresh=False)
                self.bar.refresh()
            else:
                self.bar.update(1)

    def _log(self, step: int, spe: int, lr: float, grad_norm: float | None, views: list[torch.Tensor],
             out: StepOutput) -> None:
        now = time.perf_counter()
        ips = self.n_window / max(1e-9, now - self.t_window)
        self.t_window, self.n_window = now, 0
        global_loss = float(distributed.all_reduce_mean(out.loss.detach().float()))  # mean over processes
        row: Row = {"step": step, "epoch": round(step / spe, 4), "loss": global_loss, "lr": lr,
                    "images_per_s": round(ips, 2), "time_s": round(now - self.t_start, 2)}
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        if self.cfg.data.low_res_size:
            row["view_size"] = int(views[0].shape[-1])
        row.update({k: float(v) for k, v in out.logs.items()})
        if out.embeddings is not None and out.embeddings.shape[0] > 1:
            stats = embedding_stats(out.embeddings)
            row.update(stats)
            if stats["emb_std"] < 0.05 and self.main:
                print(f"warning: representation collapse at step {step} (normalised embedding std "
                      f"{stats['emb_std']:.3f} x sqrt(D)); lower the learning rate or check the recipe", file=sys.stderr)
        self.metrics.write(row)
        self.last_row = row
        self.post = f"loss={global_loss:.4f}, img_s={ips:.0f}, lr={lr:.3g}"
        if self.bar is not None and not self.budget_s:
            self.bar.set_postfix_str(self.post)

    def knn_row(self, step: int, epoch: float, *, announce: bool = False) -> bool:
        """Run kNN now and log it (``announce``: also above the progress bar); False when it could not run."""
        res = self.knn()
        if not res:
            return False
        row: Row = {"step": step, "epoch": epoch, "eval": "knn", **res}
        self.knn_history.append(row)
        self.metrics.write(row)
        if self.bar is not None and announce:
            self.bar.write(f"epoch {epoch}: online kNN top-1 {res['knn_top1']:.2f}%")
        return True

    def set_end(self, end_step: int) -> None:
        if self.bar is not None and not self.budget_s:  # a budget bar counts seconds; the step is in its postfix
            self.bar.total = end_step
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.metrics.close()
