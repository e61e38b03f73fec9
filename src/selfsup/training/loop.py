"""The one training loop.

Read it top to bottom: set up (``setup.py``: resolve config -> data -> method -> resume) -> open the run folder ->
loop over steps (``step.train_step``) -> final kNN -> save and export (``run_folder.py``). Mixed precision,
channels_last, torch.compile, DDP, the time budget and the monitor are switches on this loop that do nothing when
off, not separate code paths.

Determinism and exact resume: batch order is a permutation drawn from (seed, epoch), and every step
re-seeds its own generators from (seed, step, rank). A run resumed at step s therefore sees exactly the
batches and augmentations an uninterrupted run would, and (with the model, optimizer and method state
restored from the checkpoint) produces the same losses step for step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from selfsup import distributed
from selfsup.augment import views as view_ops
from selfsup.augment.recipes import rescaled_recipe
from selfsup.checkpoint import ensure_finite
from selfsup.config import PretrainConfig
from selfsup.methods import Batch, Method, Progress
from selfsup.runlock import locks_run_folder
from selfsup.training.batches import EpochSampler, step_seed
from selfsup.training.budget import budget_phases, phase_cost, refit_budget
from selfsup.training.monitor import MetricsLog, Monitor, embedding_stats
from selfsup.training.optim import lr_at, set_lr
from selfsup.training.run_folder import Summary, finish, open_run_folder, save
from selfsup.training.setup import get_method_spec, resolve_config, setup_run
from selfsup.training.signals import Interrupted, PeerLost, StopFlag
from selfsup.training.step import train_step

ViewsHook = Callable[[torch.Tensor, list[torch.Tensor], list[Any]], None]
_refit_budget = refit_budget  # the budget refit under the name tests/test_train.py imports
__all__ = ["EpochSampler", "Interrupted", "MetricsLog", "PeerLost", "embedding_stats", "get_method_spec", "pretrain",
           "resolve_config", "step_seed"]


@locks_run_folder  # one process per --out (selfsup.runlock)
def pretrain(cfg: PretrainConfig, *, resume: bool = False, on_views: ViewsHook | None = None) -> Summary:
    """Pretrain an encoder as configured; returns the summary (also written to RUN/summary.json).
    ``cfg`` is not changed: the run works on a resolved copy (saved as RUN/config.yaml).
    ``on_views(index, views, params)``: called once per step after the views are made (dataset rows [B], view
    tensors, their ``ViewParams``); the security audit counts poison mechanisms with it."""
    t_process = time.perf_counter()
    run = setup_run(cfg, resume=resume, t_process=t_process)
    cfg, s, data, method, budget = run.cfg, run.schedule, run.data, run.method, run.budget
    spe, main = s.steps_per_epoch, run.dinfo.is_main
    open_run_folder(run)
    metrics = MetricsLog(run.out / "metrics.jsonl" if main else None, truncate_after_step=run.step,  # a rerun: 0
                         tensorboard=run.out / "tensorboard" if main and cfg.train.log == "tensorboard" else None)
    if run.kernel_views:
        from selfsup.augment import kernel  # imports numba: only runs that use the fused kernel pay for it

        kernel.warm_up()  # compiles once per install (it says so): here, not inside the first timed step
    monitor = Monitor(cfg, data, method.backbone, metrics, main=main, world_size=run.dinfo.world_size,
                      name=run.spec.name, start=run.step, end=s.end_step)

    # resolution schedule: the first low_res_fraction of the steps take smaller views (same crops, fewer pixels)
    recipe = method.view_recipe
    low_recipe = (rescaled_recipe(recipe, cfg.data.low_res_size, cfg.data.image_size) if cfg.data.low_res_size
                  else recipe)
    phases = budget_phases(cfg.data)  # the same phases the TimeBudget fits to
    step_cost = phases[0][1]  # 1.0 without a schedule
    view_dtype = run.amp_dtype if run.amp_dtype is not None else torch.float32
    epoch_hook = type(method).on_epoch_start is not Method.on_epoch_start  # a no-op hook does not pause the clock
    eval_probe = monitor.eval_probe if data.images is not None else None
    step = run.step
    run.module.train()
    try:
        with StopFlag() as stop:
            while step < s.end_step:
                epoch, i = divmod(step, spe)
                if i == 0 and epoch_hook:
                    method.on_epoch_start(epoch, data.epoch_data)  # e.g. FAMT refreshes its per-image weight maps
                    if budget is not None:  # a refresh pass is not a training step: keep it out of the step time
                        budget.restart_timing(step, time.perf_counter())
                images, idx, sizes = data.source.batch(epoch, i)
                images = images.to(run.device, non_blocking=True)
                seed = step_seed(cfg.train.seed, step, run.dinfo.rank)
                torch.manual_seed(seed)  # dropout / drop-path / masking draws are reproducible per step
                gen = torch.Generator(device="cpu").manual_seed(seed)
                if step_cost < 1.0:  # sticky: a re-fit that moves the switch later never goes back to small views
                    step_cost = phase_cost(phases, step, s.total_steps)
                views, params = view_ops.make_views(images, recipe if step_cost == 1.0 else low_recipe, gen,
                                                    channels_last=cfg.train.channels_last, dtype=view_dtype,
                                                    compiled=cfg.train.compile, colour=cfg.data.colour,
                                                    backend=cfg.data.view_backend, sizes=sizes)
                if on_views is not None:
                    on_views(idx, views, params)
                progress = Progress(step=step, total_steps=s.total_steps, epoch=epoch, steps_per_epoch=spe)
                lr = lr_at(step, s.total_steps, s.warmup_steps, cfg.optim.lr or 0.0, cfg.optim.min_lr)
                set_lr(run.optimizer, lr, cfg.optim.lr or 0.0)
                res = train_step(run.model, method, run.optimizer, Batch(views, idx.to(run.device), params), progress,
                                 device=run.device, amp_dtype=run.amp_dtype, clip_grad=cfg.optim.clip_grad,
                                 checkpoint=run.ckpt_path, accumulate_steps=cfg.train.accumulate_steps)
                step += 1
                if step % cfg.train.log_every == 0 or step == s.end_step:
                    ensure_finite(run.module, step, run.ckpt_path)  # weights and BN statistics, at logging cadence
                if budget is not None:
                    fitted = refit_budget(budget, step, data.source, data.val, images.shape[0], len(views),
                                          eval_probe, cost=step_cost)
                    if run.dinfo.enabled:  # every rank must stop at rank 0's step, or a collective would hang
                        fitted = distributed.broadcast_int(-1 if fitted is None else fitted)
                        fitted = None if fitted < 0 else fitted
                    if fitted is not None:
                        s.fit(fitted)
                        monitor.set_end(s.end_step)
                monitor.step_done(step, s.end_step, spe, lr, res.grad_norm, views, res.out, images.shape[0])

                if step % spe == 0:  # end of an epoch
                    ep = step // spe
                    if (data.val is not None and cfg.train.knn_every
                            and (ep % cfg.train.knn_every == 0 or step == s.total_steps)):
                        monitor.knn_row(step, ep, announce=True)
                        if budget is not None:
                            budget.restart_timing(step, time.perf_counter())
                    if cfg.train.save_every and ep % cfg.train.save_every == 0 and step < s.end_step:
                        save(run, step)
                if distributed.any_true(stop.signum is not None):  # all ranks stop at the same step
                    save(run, step)
                    raise Interrupted(f"stopped by {stop.name} at step {step}; checkpoint saved to {run.ckpt_path}; "
                                      "continue with the same command plus --resume")
    except RuntimeError as exc:
        if not (run.dinfo.enabled and distributed.is_comm_error(exc)):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        hint = f"last checkpoint: {run.ckpt_path}" if run.ckpt_path.exists() else "no checkpoint was saved yet"
        raise PeerLost(f"rank {run.dinfo.rank} lost contact with the other processes at step {step} ({first}); "
                       f"{hint}; rerun the same command with --resume") from None
    finally:
        monitor.close()

    if data.val is not None and (not monitor.knn_history or monitor.knn_history[-1]["step"] != step):
        monitor.knn_row(step, round(step / spe, 4))  # final evaluation of the finished encoder
    save(run, step)
    return finish(run, monitor, step, t_process)
