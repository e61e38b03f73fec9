"""The run folder: created once every input is validated; checkpoints during the run; encoder and summary at the end.

RUN/config.yaml (the resolved config), RUN/metrics.jsonl (``monitor.MetricsLog``), RUN/checkpoint.pt (method,
optimizer, step), and at the end RUN/encoder.safetensors + encoder.json and RUN/summary.json.
"""

from __future__ import annotations

import json
import sys
import time

from selfsup import console, distributed
from selfsup.checkpoint import CHECKPOINT_NAME, atomic_write_text, export_encoder, save_checkpoint
from selfsup.config import dump_yaml, to_dict
from selfsup.summary import end_of_run
from selfsup.training.monitor import Monitor, Row
from selfsup.training.setup import Run

Summary = dict[str, float | int | str | None]


def open_run_folder(run: Run) -> None:
    """Rank 0: create RUN/, write config.yaml and print the run's header (plan, precision, resolved config)."""
    if not run.dinfo.is_main:
        return
    cfg, s, n = run.cfg, run.schedule, len(run.data.source)
    run.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.out / "config.yaml", dump_yaml(cfg))
    budgeted = run.budget is not None
    plan = (f"steps fitted to the {cfg.train.time_budget:g}-minute budget after warm-up" if budgeted
            else f"{s.total_steps} steps in total")
    cap = f", {'at most' if budgeted else 'stopping at'} {s.end_step}" if s.end_step < s.total_steps else ""
    console.info(f"selfsup pretrain: {run.spec.name} ({run.spec.family}) on {cfg.backbone.name}; {n} images, "
                 f"{cfg.data.image_size} px views, batch {cfg.train.batch_size}, {s.steps_per_epoch} steps/epoch, "
                 f"{plan}{cap}")
    console.info(f"precision: {run.precision_note}; device: {run.device}; threads: {run.threads}; "
                 f"processes: {run.dinfo.world_size}")
    console.detail("resolved config:\n" + dump_yaml(cfg))  # always saved as RUN/config.yaml; shown with -v
    for stale in run.out.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    if run.resumed is not None:
        print(f"resuming from {run.ckpt_path} at step {run.step}", file=sys.stderr)
        saved_world = int(run.resumed.get("world_size", 1))
        if saved_world != run.dinfo.world_size:
            print(f"note: the checkpoint was written by {saved_world} process(es), now {run.dinfo.world_size}; the "
                  f"global batch ({cfg.train.batch_size}) and so the schedule are unchanged, but augmentation "
                  "draws and BatchNorm statistics are per process, so losses will not match bit for bit",
                  file=sys.stderr)


def save(run: Run, step: int) -> None:
    """Checkpoint the method, optimizer and step (rank 0), then wait for every process."""
    if run.dinfo.is_main:
        save_checkpoint(run.ckpt_path, {
            "config": to_dict(run.cfg), "method": run.module.state_dict(), "optimizer": run.optimizer.state_dict(),
            "step": step, "epoch": step // max(1, run.schedule.steps_per_epoch), "world_size": run.dinfo.world_size,
        })
    distributed.barrier()


def finish(run: Run, monitor: Monitor, step: int, t_process: float) -> Summary:
    """The summary of a finished run; rank 0 also exports the encoder and writes summary.json."""
    cfg, spe = run.cfg, run.schedule.steps_per_epoch
    last: Row = monitor.last_row
    summary: Summary = {
        "method": run.spec.name, "backbone": cfg.backbone.name, "steps": step, "total_steps": run.schedule.total_steps,
        "epochs_completed": round(step / spe, 4), "final_loss": last.get("loss"),
        "wall_time_s": round(time.perf_counter() - monitor.t_start, 2), "images_per_s": last.get("images_per_s"),
        "skipped_images": len(run.data.source.skipped), "checkpoint": str(run.ckpt_path),
        "total_wall_time_s": round(time.perf_counter() - t_process, 2),
    }
    if run.budget is not None:
        summary["time_budget_min"] = cfg.train.time_budget
        summary["budget_sec_per_step"] = run.budget.sec_per_step
        summary["budget_reserve_s"] = run.budget.reserve_s
    if monitor.knn_history:
        summary["knn_top1"] = monitor.knn_history[-1]["knn_top1"]
    if run.dinfo.is_main:
        export_encoder(run.out, run.method.backbone, {"backbone": to_dict(cfg.backbone),
                                                      "image_size": cfg.data.image_size, "method": run.spec.name,
                                                      "steps": step})
        # adds the raw-pixel kNN baseline when cheap or cached, so the end of the run says what pretraining bought
        end_text = end_of_run(summary, cfg, run.data.images, run.data.val)
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2))
        console.info(end_text)
    return summary
