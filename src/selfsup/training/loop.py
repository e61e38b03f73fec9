"""The one training loop.

Read it top to bottom: resolve config -> load data -> build method -> (resume) -> loop over steps ->
checkpoint. Mixed precision, channels_last, torch.compile and DDP are switches on this loop, not separate
code paths.

Determinism and exact resume: batch order is a permutation drawn from (seed, epoch), and every step
re-seeds its own generators from (seed, step, rank). A run resumed at step s therefore sees exactly the
batches and augmentations an uninterrupted run would, and (with the model, optimizer and method state
restored from the checkpoint) produces the same losses step for step.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup import distributed
from selfsup.checkpoint import (
    CHECKPOINT_NAME,
    atomic_write_text,
    ensure_finite,
    export_encoder,
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
)
from selfsup.config import PretrainConfig, dump_yaml, from_dict, to_dict
from selfsup.errors import ConfigError, DataError, TrainingDiverged, UserError
from selfsup.methods import Batch, MethodSpec, Progress, registry
from selfsup.models.backbones import build_backbone, check_bf16_cpu_conv_sizes, resolve_backbone_config
from selfsup.runlock import locks_run_folder
from selfsup.runtime import (
    autocast,
    check_compile_toolchain,
    resolve_device,
    resolve_precision,
    set_threads,
    tune_allocator,
)
from selfsup.training.budget import phase_cost
from selfsup.training.optim import build_optimizer, clip_gradients, lr_at, param_groups, set_lr


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: the run was saved and can be resumed."""

    exit_code = 130


class PeerLost(UserError):
    """Another process of a distributed run died or its connection broke; resume from the last checkpoint."""

    exit_code = 3


# ----------------------------------------------------------------------------------------------------
# Resolution: everything is validated before the run folder is created (no half-written runs).


def get_method_spec(name: str) -> MethodSpec:
    specs = registry()
    if name not in specs:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(specs))} (see `selfsup methods`)")
    return specs[name]


def resolve_config(cfg: PretrainConfig) -> tuple[PretrainConfig, MethodSpec, Any]:
    """Fill every automatic field from the method's recipe so the saved config states what ran."""
    name = cfg.method.get("name")
    if not name:
        raise ConfigError("method.name is missing; pass --method NAME (see `selfsup methods`)")
    spec = get_method_spec(str(name))
    method_cfg = from_dict(spec.config_cls, {k: v for k, v in cfg.method.items() if k != "name"})
    cfg.method = {"name": spec.name, **to_dict(method_cfg)}
    resolve_backbone_config(cfg.backbone, cfg.data.image_size)
    o, r = cfg.optim, spec.recipe
    o.name = o.name or r.optimizer
    if o.base_lr is None:
        o.base_lr = r.base_lr
    if o.weight_decay is None:
        o.weight_decay = r.weight_decay
    if o.betas is None:
        o.betas = r.betas
    if o.warmup_epochs is None:
        o.warmup_epochs = r.warmup_epochs
    if o.lr is None:
        # linear scaling rule (Goyal et al. 2017), as in SimCLR/BYOL/MoCo: lr = base_lr * B / 256
        o.lr = o.base_lr * cfg.train.batch_size / 256
    if cfg.data.cache_size is None:
        cfg.data.cache_size = cfg.data.image_size
    if cfg.data.cache_size < cfg.data.image_size:
        raise ConfigError(f"data.cache_size {cfg.data.cache_size} is smaller than data.image_size {cfg.data.image_size}")
    if cfg.data.low_res_size:
        d = cfg.data
        if not 4 <= d.low_res_size < d.image_size:
            raise ConfigError(f"data.low_res_size must be between 4 and data.image_size - 1 ({d.image_size - 1}), "
                              f"got {d.low_res_size}; 0 turns the resolution schedule off")
        if not 0.0 < d.low_res_fraction < 1.0:
            raise ConfigError(f"data.low_res_fraction must be between 0 and 1 (exclusive), got {d.low_res_fraction}")
        if cfg.backbone.name.startswith("vit"):
            raise ConfigError(f"data.low_res_size {d.low_res_size} (from --set, --config or --preset) needs a "
                              f"convolutional backbone: {cfg.backbone.name}'s patch grid and position embeddings are "
                              "fixed to data.image_size; add --set data.low_res_size=0")
    if cfg.train.batch_size < 2:
        raise ConfigError("--batch-size must be at least 2 (contrastive losses need negatives)")
    if cfg.train.epochs < 1:
        raise ConfigError("--epochs must be at least 1")
    return cfg, spec, method_cfg


# ----------------------------------------------------------------------------------------------------
# Batches


@dataclass
class EpochSampler:
    """Shuffled, drop-last batches; each process takes its own slice of every global batch."""

    n: int
    global_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise ConfigError(
                f"--batch-size {self.global_batch} (global) is not divisible by {self.world_size} processes"
            )
        self.local_batch = self.global_batch // self.world_size
        self.steps_per_epoch = self.n // self.global_batch
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def indices(self, epoch: int, i: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        start = i * self.global_batch + self.rank * self.local_batch
        return self._perm[start : start + self.local_batch]


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1_009 + rank


# ----------------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """Appends one JSON object per line to RUN/metrics.jsonl (rank 0 only), flushed at every write.

    Opening it with ``truncate_after_step=s`` (the step the run starts from: the checkpoint's on --resume, 0 on
    a fresh run) drops the rows a killed run logged after ``s``, so the file holds exactly one row per logged
    step: one trajectory. A line that does not parse (a kill in the middle of a write cuts the last one) is
    dropped too, with a note.
    """

    def __init__(self, path: Path | None, truncate_after_step: int | None = None) -> None:
        self.path = path
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
                print(f"note: {path}: dropped {broken} unreadable line(s) (a run killed while writing)",
                      file=sys.stderr)
            atomic_write_text(path, "".join(k + "\n" for k in keep))

    def write(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


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


# ----------------------------------------------------------------------------------------------------
# The run


def _load_data(cfg: PretrainConfig) -> tuple[Any, Any]:
    from selfsup.data import open_dataset
    from selfsup.data.stream import is_stream_spec, open_stream

    if is_stream_spec(cfg.data.path):  # WebDataset tar shards: streamed, no memmap cache (docs/scaling.md)
        info = distributed.env_info()
        train: Any = open_stream(cfg.data.path, cfg.data.cache_size or cfg.data.image_size, cfg.train.batch_size,
                                 seed=cfg.train.seed, rank=info.rank, world_size=info.world_size)
    else:
        train = open_dataset(cfg.data.path, cfg.data.cache_size or cfg.data.image_size, cache_dir=cfg.data.cache_dir,
                         strict=cfg.data.strict, progress=distributed.env_info().is_main and cfg.train.progress)
    val = None
    if cfg.data.val:
        val = open_dataset(cfg.data.val, cfg.data.cache_size or cfg.data.image_size, cache_dir=cfg.data.cache_dir,
                           strict=cfg.data.strict, require_labels=True, min_classes=2,
                           progress=distributed.env_info().is_main and cfg.train.progress)
    if cfg.train.batch_size > len(train):
        raise ConfigError(
            f"--batch-size {cfg.train.batch_size} is larger than the dataset ({len(train)} images in "
            f"{cfg.data.path}); use --batch-size {len(train)} or less"
        )
    return train, val


def _check_resume_compatible(saved: dict[str, Any], cfg: PretrainConfig, path: Path) -> None:
    s_backbone = saved.get("backbone", {}).get("name")
    s_method = saved.get("method", {}).get("name")
    if s_backbone != cfg.backbone.name:
        raise ConfigError(f"{path} was trained with backbone '{s_backbone}', not '{cfg.backbone.name}'; "
                          f"resume with --backbone {s_backbone} or start a new --out")
    if s_method != cfg.method["name"]:
        raise ConfigError(f"{path} was trained with method '{s_method}', not '{cfg.method['name']}'; "
                          f"resume with --method {s_method} or start a new --out")
    s_data = str(saved.get("data", {}).get("path", ""))
    if s_data != cfg.data.path and not (Path(s_data).exists() and Path(s_data).resolve() == Path(cfg.data.path).resolve()):
        raise ConfigError(f"{path} was trained on --data {s_data}, not {cfg.data.path}; resuming on other data would "
                          f"mix two data sets in one run — resume with --data {s_data} or start a new --out")
    if saved.get("train", {}).get("batch_size") != cfg.train.batch_size:
        raise ConfigError(f"{path} used --batch-size {saved.get('train', {}).get('batch_size')}; resuming with a "
                          f"different batch size would change the schedule — keep the same --batch-size")


class _StopFlag:
    """First Ctrl-C/SIGTERM asks the loop to save and stop after the current step; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._t_first = 0.0

    def __enter__(self) -> _StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            # under torchrun a terminal Ctrl-C reaches a worker twice (from the tty, then forwarded by the
            # launcher): only a second Ctrl-C a moment later means "abort"
            if signum == signal.SIGINT and time.monotonic() - self._t_first > 1.0:
                raise KeyboardInterrupt
            return
        self.signum, self._t_first = signum, time.monotonic()
        print(f"\n{signal.Signals(signum).name} received: finishing this step, saving, then exiting "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _budget_phases(cfg: PretrainConfig) -> tuple[tuple[float, float], ...]:
    """(start fraction, nominal cost) of the resolution schedule's phases: a step's nominal cost scales with the
    view area. Measured whole SimCLR steps on cnn-compact at 32 px, batch 256: 24 px ran at 693 vs ~390 images/s
    (0.56, as nominal); 16 px at ~1,040 (0.375 against the nominal 0.25: views, projector and loss do not shrink)."""
    d = cfg.data
    if not d.low_res_size:
        return ((0.0, 1.0),)
    return ((0.0, (d.low_res_size / d.image_size) ** 2), (d.low_res_fraction, 1.0))


def _refit_budget(
    budget: Any, step: int, train_ds: Any, val_ds: Any, local_batch: int, n_views: int,
    eval_probe: Callable[[], tuple[float, int]] | None = None, cost: float = 1.0,
) -> int | None:
    """Re-estimate the steps that fit, keeping a reserve for saving and the final kNN.

    The kNN reserve is measured once, when the throughput is first known: ``eval_probe()`` returns the
    seconds per image of the final feature extraction (timed on a few training batches), plus the
    similarity search (~2 N_train N_val F FLOPs at a conservative 50 GFLOP/s). Without a probe it falls
    back to 1/3 of a training step per image (forward only). ``cost``: the nominal cost of the step just
    taken (below 1 in a resolution schedule's low-resolution phase).
    """
    fitted = budget.observe(step, time.perf_counter(), cost)
    if fitted is not None and budget.sec_per_step is not None and budget.reserve_s == 0.0:
        # final checkpoint + encoder export + one slow step; fixed costs capped at 1% of the budget
        budget.reserve_s = min(3.0, 0.6 * budget.minutes) + budget.sec_per_step
        if val_ds is not None:
            n = len(train_ds) + len(val_ds)
            if eval_probe is not None:
                from selfsup.eval.knn import knn_search_seconds

                per_image, dim = eval_probe()
                budget.reserve_s += per_image * n + knn_search_seconds(len(train_ds), len(val_ds), dim)
                budget.restart_timing(step, time.perf_counter())  # the probe's pause is not a training step
            else:
                budget.reserve_s += budget.sec_per_step / max(1, local_batch * n_views) / 3 * n
        now = time.perf_counter()
        left = budget.deadline - now
        if left < budget.reserve_s and distributed.env_info().is_main:
            print(f"warning: --time-budget {budget.minutes:g} min leaves {max(0.0, left):.0f} s, but saving and the "
                  f"final kNN need about {budget.reserve_s:.0f} s: the run stops after this step and will overrun. "
                  "Raise --time-budget, or drop --val to skip the final kNN.", file=sys.stderr, flush=True)
        fitted = budget.fit(step, now)
    return fitted


@locks_run_folder  # one process per --out (selfsup.runlock)
def pretrain(cfg: PretrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Pretrain an encoder as configured; returns the summary (also written to RUN/summary.json)."""
    from selfsup.augment import kernel as view_kernel
    from selfsup.augment.views import COLOUR_MODES, VIEW_BACKENDS, make_views, rescaled_recipe, uses_kernel

    t_process = time.perf_counter()
    cfg, spec, method_cfg = resolve_config(cfg)
    if cfg.data.colour not in COLOUR_MODES:
        raise ConfigError(f"data.colour must be one of {COLOUR_MODES}, got {cfg.data.colour!r} (see README, Data)")
    if cfg.data.view_backend not in VIEW_BACKENDS:
        raise ConfigError(
            f"data.view_backend must be one of {VIEW_BACKENDS}, got {cfg.data.view_backend!r} (see README, Data)")
    device = resolve_device(cfg.train.device)
    kernel_views = uses_kernel(device, cfg.data.colour, cfg.data.view_backend)  # before any folder is made
    dinfo = distributed.setup(device)
    if device.type == "cuda" and dinfo.enabled:
        device = torch.device("cuda", dinfo.local_rank)
    main = dinfo.is_main
    threads = set_threads(cfg.train.threads, dinfo.local_world_size) if device.type == "cpu" else None
    tune_allocator()
    amp_dtype, precision_note = resolve_precision(cfg.train.precision, device)

    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_NAME
    if resume and not ckpt_path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start a new run")
    if not resume and ckpt_path.exists():
        raise ConfigError(f"run folder {out} already holds a checkpoint; pass --resume to continue it or choose another --out")

    train_ds, val_ds = _load_data(cfg)
    sampler = EpochSampler(len(train_ds), cfg.train.batch_size, cfg.train.seed, dinfo.rank, dinfo.world_size)
    spe = sampler.steps_per_epoch
    total_steps = cfg.train.epochs * spe
    end_step = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps
    warmup_steps = int(round((cfg.optim.warmup_epochs or 0.0) * spe))
    warmup_steps = min(warmup_steps, total_steps // 2)  # short runs: never warm up for more than half
    budget = None
    if cfg.train.time_budget:
        from selfsup.training.budget import TimeBudget

        # --time-budget: `epochs` is only the provisional schedule until throughput has been measured
        budget = TimeBudget(cfg.train.time_budget, t0=t_process, phases=_budget_phases(cfg))
        total_steps = 10**9  # open-ended until the first fit
        end_step = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps

    if getattr(method_cfg, "num_images", None) == 0:
        # per-image state (FAMT weight maps) is sized now so that it is checkpointed and resumes exactly
        method_cfg.num_images = len(train_ds)
        cfg.method["num_images"] = len(train_ds)
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg.backbone, cfg.data.image_size)
    method = spec.build(backbone, method_cfg, image_size=cfg.data.image_size, grayscale=cfg.data.grayscale)
    if device.type == "cpu" and amp_dtype == torch.bfloat16:
        base: Any = method.view_recipe
        recipes = [base]
        if cfg.data.low_res_size:
            recipes.append(rescaled_recipe(base, cfg.data.low_res_size, cfg.data.image_size))
        check_bf16_cpu_conv_sizes(backbone, [v.size for r in recipes for v in r.views], name=cfg.backbone.name,
                                  hint="data.image_size, data.low_res_size, method.local_size")
    if cfg.train.sync_bn and dinfo.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU); "
                              "drop --set train.sync_bn=true")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)  # BN statistics over the global batch
    method.to(device)
    if cfg.train.channels_last:
        method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(cfg.optim, param_groups(method, cfg.optim.weight_decay or 0.0, cfg.optim.exclude_norm_bias))

    step = 0
    if resume:
        payload = load_checkpoint(ckpt_path)
        _check_resume_compatible(payload.get("config", {}), cfg, ckpt_path)
        load_state_strict(method, payload["method"], f"{cfg.method['name']} method", ckpt_path)
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])
        if int(payload.get("num_images", len(train_ds))) != len(train_ds):  # same path, other contents
            raise ConfigError(f"{ckpt_path} was trained on {payload['num_images']} images but {cfg.data.path} now "
                              f"holds {len(train_ds)}; the data changed — start a new --out")

    model: nn.Module = method
    if dinfo.enabled:
        # broadcast_buffers=False: per-rank state (queues, FAMT maps) must not be overwritten by rank 0's copy
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    if cfg.train.compile:
        check_compile_toolchain(device)
        model = torch.compile(model)  # type: ignore[assignment]

    # The run folder is created only now, after every input was validated.
    metrics: MetricsLog
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
        plan = (f"steps fitted to the {cfg.train.time_budget:g}-minute budget after warm-up" if budget is not None
                else f"{total_steps} steps in total")
        cap = f", {'at most' if budget is not None else 'stopping at'} {end_step}" if end_step < total_steps else ""
        print(f"selfsup pretrain: {spec.name} ({spec.family}) on {cfg.backbone.name}; "
              f"{len(train_ds)} images, {spe} steps/epoch, {plan}{cap}", file=sys.stderr)
        print(f"precision: {precision_note}; device: {device}; threads: {threads}; processes: {dinfo.world_size}",
              file=sys.stderr)
        print("resolved config:\n" + dump_yaml(cfg), file=sys.stderr)
        for stale in out.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a process killed while saving
            stale.unlink(missing_ok=True)
        if resume:
            print(f"resuming from {ckpt_path} at step {step}", file=sys.stderr)
            saved_world = int(payload.get("world_size", 1))
            if saved_world != dinfo.world_size:
                print(f"note: the checkpoint was written by {saved_world} process(es), now {dinfo.world_size}; the "
                      f"global batch ({cfg.train.batch_size}) and so the schedule are unchanged, but augmentation "
                      "draws and BatchNorm statistics are per process, so losses will not match bit for bit",
                      file=sys.stderr)
    metrics = MetricsLog(out / "metrics.jsonl" if main else None, truncate_after_step=step)  # also on a rerun: 0
    if kernel_views:
        view_kernel.warm_up()  # compiles once per install (it says so): here, not inside the first timed step

    def save(at_step: int) -> None:
        ensure_finite(method, at_step, ckpt_path)  # every rank: all stop together, before any collective
        if main:
            save_checkpoint(ckpt_path, {
                "config": to_dict(cfg), "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "step": at_step, "epoch": at_step // max(1, spe), "world_size": dinfo.world_size,
                "num_images": len(train_ds),
            })
        distributed.barrier()

    def knn_monitor(at_step: int) -> dict[str, float]:
        from selfsup.eval.features import extract_features
        from selfsup.eval.knn import knn_accuracy

        assert val_ds is not None
        if not hasattr(train_ds, "images"):  # streamed training data: no random access for a kNN bank
            return {}
        backbone.eval()
        feats_tr = extract_features(backbone, train_ds.images, image_size=cfg.data.image_size,
                                    precision=cfg.train.precision)
        feats_te = extract_features(backbone, val_ds.images, image_size=cfg.data.image_size,
                                    precision=cfg.train.precision)
        backbone.train()
        if train_ds.labels is None:
            return {}
        res = knn_accuracy(feats_tr, torch.tensor(train_ds.labels), feats_te, torch.tensor(val_ds.labels),
                           k=cfg.train.knn_k, temperature=cfg.train.knn_t, num_classes=max(train_ds.num_classes, val_ds.num_classes))
        return {"knn_top1": res["top1"]}

    def eval_probe() -> tuple[float, int]:
        """(seconds per image, feature dim) of the final kNN's feature extraction, timed on <= 512 images."""
        from selfsup.eval.features import extract_features

        n = min(512, len(train_ds))
        backbone.eval()
        t = time.perf_counter()
        f = extract_features(backbone, train_ds.images[:n], image_size=cfg.data.image_size,
                             precision=cfg.train.precision)
        dt = time.perf_counter() - t
        backbone.train()
        return dt / max(1, n), int(f.shape[1])

    bar = None
    if main and cfg.train.progress:
        from tqdm import tqdm

        bar = tqdm(total=end_step, initial=step, unit="step", dynamic_ncols=True, desc=spec.name)

    recipe: Any = method.view_recipe
    # resolution schedule: the first low_res_fraction of the steps take smaller views (same crops, fewer pixels)
    low_recipe = rescaled_recipe(recipe, cfg.data.low_res_size, cfg.data.image_size) if cfg.data.low_res_size else recipe
    phases = _budget_phases(cfg)  # the same phases the TimeBudget fits to
    step_cost = phases[0][1]  # 1.0 without a schedule
    view_dtype = amp_dtype if amp_dtype is not None else torch.float32
    last_row: dict[str, Any] = {}
    knn_history: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    t_window, n_window = time.perf_counter(), 0
    method.train()
    try:
        with _StopFlag() as stop:
            while step < end_step:
                epoch, i = divmod(step, spe)
                on_epoch_start = getattr(method, "on_epoch_start", None)
                if i == 0 and on_epoch_start is not None:
                    on_epoch_start(epoch, train_ds)  # e.g. FAMT refreshes its per-image weight maps
                    if budget is not None:  # a refresh pass is not a training step: keep it out of the step time
                        budget.restart_timing(step, time.perf_counter())
                if hasattr(train_ds, "batch"):  # a stream: (uint8 [B, H, W, 3], index [B]) for (epoch, i)
                    images, idx = train_ds.batch(epoch, i)
                    images = images.to(device, non_blocking=True)
                else:
                    idx = sampler.indices(epoch, i)
                    # sorted reads are sequential in the memmap; batch order inside a step does not matter
                    idx = idx.sort().values
                    images = torch.from_numpy(np.ascontiguousarray(train_ds.images[idx.numpy()])).to(device, non_blocking=True)
                seed = step_seed(cfg.train.seed, step, dinfo.rank)
                torch.manual_seed(seed)  # dropout / drop-path / masking draws are reproducible per step
                gen = torch.Generator(device="cpu").manual_seed(seed)
                if step_cost < 1.0:  # sticky: a re-fit that moves the switch later never goes back to small views
                    step_cost = phase_cost(phases, step, total_steps)
                views, params = make_views(images, recipe if step_cost == 1.0 else low_recipe, gen,
                                           channels_last=cfg.train.channels_last, dtype=view_dtype,
                                           compiled=cfg.train.compile, colour=cfg.data.colour,
                                           backend=cfg.data.view_backend)
                progress = Progress(step=step, total_steps=total_steps, epoch=epoch, steps_per_epoch=spe)
                lr = lr_at(step, total_steps, warmup_steps, cfg.optim.lr or 0.0, cfg.optim.min_lr)
                set_lr(optimizer, lr, cfg.optim.lr or 0.0)

                with autocast(device, amp_dtype):
                    out_step = model(Batch(views=views, index=idx.to(device), params=params), progress)
                loss = out_step.loss
                if not torch.isfinite(loss):
                    hint = f"last good checkpoint: {ckpt_path}" if ckpt_path.exists() else "no checkpoint was saved yet"
                    raise TrainingDiverged(
                        f"loss became {float(loss.detach())} at step {step} (epoch {epoch}); {hint}; lower the learning rate "
                        "(--lr), add --set optim.clip_grad=1.0, or use --precision fp32"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = clip_gradients(method, cfg.optim.clip_grad)
                optimizer.step()
                after = getattr(method, "after_step", None)
                if after is not None:
                    after(progress)
                step += 1
                n_window += images.shape[0] * dinfo.world_size
                if budget is not None:
                    fitted = _refit_budget(budget, step, train_ds, val_ds, images.shape[0], len(views),
                                           eval_probe if hasattr(train_ds, "images") else None, cost=step_cost)
                    if dinfo.enabled:  # every rank must stop at rank 0's step, or a collective would hang
                        fitted = distributed.broadcast_int(-1 if fitted is None else fitted)
                        fitted = None if fitted < 0 else fitted
                    if fitted is not None:
                        total_steps = fitted
                        end_step = min(fitted, cfg.train.max_steps) if cfg.train.max_steps else fitted
                        warmup_steps = min(int(round((cfg.optim.warmup_epochs or 0.0) * spe)), total_steps // 2)
                        if bar is not None:
                            bar.total = end_step
                            bar.refresh()

                log_now = step % cfg.train.log_every == 0 or step == end_step
                if log_now:
                    ensure_finite(method, step, ckpt_path)  # weights and BN statistics, at logging cadence
                    now = time.perf_counter()
                    ips = n_window / max(1e-9, now - t_window)
                    t_window, n_window = now, 0
                    global_loss = float(distributed.all_reduce_mean(loss.detach().float()))  # mean over processes
                    row: dict[str, Any] = {"step": step, "epoch": round(step / spe, 4), "loss": global_loss,
                                           "lr": lr, "images_per_s": round(ips, 2), "time_s": round(now - t_start, 2)}
                    if grad_norm is not None:
                        row["grad_norm"] = grad_norm
                    if cfg.data.low_res_size:
                        row["view_size"] = int(views[0].shape[-1])
                    row.update({k: float(v) for k, v in out_step.logs.items()})
                    if out_step.embeddings is not None and out_step.embeddings.shape[0] > 1:
                        row.update(embedding_stats(out_step.embeddings))
                        if row["emb_std"] < 0.05 and main:
                            print(f"warning: representation collapse at step {step} (normalised embedding std "
                                  f"{row['emb_std']:.3f} x sqrt(D)); lower the learning rate or check the recipe",
                                  file=sys.stderr)
                    metrics.write(row)
                    last_row = row
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.0f}", lr=f"{lr:.3g}")
                if bar is not None:
                    bar.update(1)

                epoch_end = step % spe == 0
                if epoch_end:
                    ep = step // spe
                    if val_ds is not None and cfg.train.knn_every and (ep % cfg.train.knn_every == 0 or step == total_steps):
                        res = knn_monitor(step)
                        if budget is not None:
                            budget.restart_timing(step, time.perf_counter())
                        if res:
                            row = {"step": step, "epoch": ep, "eval": "knn", **res}
                            knn_history.append(row)
                            metrics.write(row)
                            if bar is not None:
                                bar.write(f"epoch {ep}: online kNN top-1 {res['knn_top1']:.2f}%")
                    if cfg.train.save_every and ep % cfg.train.save_every == 0 and step < end_step:
                        save(step)
                if distributed.any_true(stop.signum is not None):  # all ranks stop at the same step
                    save(step)
                    raise Interrupted(
                        f"stopped by {signal.Signals(stop.signum or signal.SIGTERM).name} at step {step}; checkpoint saved to {ckpt_path}; "
                        "continue with the same command plus --resume"
                    )
    except RuntimeError as exc:
        if not (dinfo.enabled and distributed.is_comm_error(exc)):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        hint = f"last checkpoint: {ckpt_path}" if ckpt_path.exists() else "no checkpoint was saved yet"
        raise PeerLost(f"rank {dinfo.rank} lost contact with the other processes at step {step} ({first}); "
                       f"{hint}; rerun the same command with --resume") from None
    finally:
        if bar is not None:
            bar.close()

    if val_ds is not None and (not knn_history or knn_history[-1]["step"] != step):
        res = knn_monitor(step)  # final evaluation of the finished encoder
        if res:
            knn_history.append({"step": step, "epoch": round(step / spe, 4), "eval": "knn", **res})
            metrics.write(knn_history[-1])
    save(step)
    wall = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "method": spec.name, "backbone": cfg.backbone.name, "steps": step, "total_steps": total_steps,
        "epochs_completed": round(step / spe, 4), "final_loss": last_row.get("loss"), "wall_time_s": round(wall, 2),
        "images_per_s": last_row.get("images_per_s"), "skipped_images": len(train_ds.skipped),
        "checkpoint": str(ckpt_path),
        "total_wall_time_s": round(time.perf_counter() - t_process, 2),
    }
    if budget is not None:
        summary["time_budget_min"] = cfg.train.time_budget
        summary["budget_sec_per_step"] = budget.sec_per_step
        summary["budget_reserve_s"] = budget.reserve_s
    if knn_history:
        summary["knn_top1"] = knn_history[-1]["knn_top1"]
    if main:
        export_encoder(out, backbone, {"backbone": to_dict(cfg.backbone), "image_size": cfg.data.image_size,
                                       "method": spec.name, "steps": step})
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary

