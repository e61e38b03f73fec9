"""Everything a run needs before its first step, validated before the run folder is created (no half-written runs).

``resolve_config`` fills the automatic fields from the method's recipe and returns a NEW config (the one that is
printed and saved as RUN/config.yaml); ``setup_run`` then starts the device and the process group, opens the data,
builds the method and its optimizer, and restores a checkpoint when resuming.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup import distributed
from selfsup.augment.recipes import rescaled_recipe
from selfsup.augment.views import COLOUR_MODES, VIEW_BACKENDS, uses_kernel
from selfsup.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_state_strict
from selfsup.config import PretrainConfig, from_dict, to_dict
from selfsup.config.validate import check_accumulation
from selfsup.data import default_cache_size
from selfsup.errors import ConfigError
from selfsup.methods import Method, MethodSpec, registry
from selfsup.models.backbones import build_backbone, check_bf16_cpu_conv_sizes, resolve_backbone_config
from selfsup.runtime import (
    check_compile_toolchain,
    resolve_device,
    resolve_precision,
    set_threads,
    tune_allocator,
)
from selfsup.training.batches import TrainData, load_data
from selfsup.training.budget import TimeBudget, budget_phases
from selfsup.training.init_weights import apply_init, load_init_state
from selfsup.training.monitor import check_log_backend
from selfsup.training.optim import build_optimizer, param_groups
from selfsup.training.schedule import OPEN_ENDED, Schedule

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def get_method_spec(name: str) -> MethodSpec:
    specs = registry()
    if name not in specs:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(sorted(specs))} (see `selfsup methods`)")
    return specs[name]


def method_config(cfg: PretrainConfig, spec: MethodSpec) -> object:
    """The typed hyper-parameters (``spec.config_cls``) of ``cfg.method``, the one place they are kept."""
    return from_dict(spec.config_cls, {k: v for k, v in cfg.method.items() if k != "name"})


def resolve_config(cfg: PretrainConfig) -> tuple[PretrainConfig, MethodSpec, object]:
    """A copy of ``cfg`` with every automatic field filled from the method's recipe, so the saved config states
    what ran; also the method's spec and typed config. ``cfg`` itself is not changed."""
    cfg = copy.deepcopy(cfg)
    name = cfg.method.get("name")
    if not name:
        raise ConfigError("method.name is missing; pass --method NAME (see `selfsup methods`)")
    spec = get_method_spec(str(name))
    mcfg = method_config(cfg, spec)
    cfg.method = {"name": spec.name, **to_dict(mcfg)}
    cfg.backbone = resolve_backbone_config(cfg.backbone, cfg.data.image_size)
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
    d = cfg.data
    if d.cache_size is None:
        d.cache_size = default_cache_size(d.image_size)
    if d.cache_size < d.image_size:
        raise ConfigError(f"data.cache_size {d.cache_size} is smaller than data.image_size {d.image_size}")
    if d.low_res_size:
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
    check_accumulation(cfg, spec)  # also for a config that did not come through the builder
    if d.colour not in COLOUR_MODES:
        raise ConfigError(f"data.colour must be one of {COLOUR_MODES}, got {d.colour!r} (see README, Data)")
    if d.view_backend not in VIEW_BACKENDS:
        raise ConfigError(f"data.view_backend must be one of {VIEW_BACKENDS}, got {d.view_backend!r} (see README, Data)")
    return cfg, spec, mcfg


def with_dataset_size(cfg: PretrainConfig, spec: MethodSpec, n: int) -> PretrainConfig:
    """A method with per-image state (FAMT's weight maps) declares ``num_images`` in its config; 0 means "the
    dataset's size", derived here into a new config so the state is checkpointed and resumes exactly."""
    if "num_images" not in {f.name for f in dataclasses.fields(spec.config_cls)}:
        return cfg
    if cfg.method.get("num_images", 0) != 0:
        return cfg
    return dataclasses.replace(cfg, method={**cfg.method, "num_images": n})


def check_resume_compatible(saved: dict[str, dict[str, object]], cfg: PretrainConfig, path: Path) -> None:
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


@dataclass
class Run:
    """A run ready for its first step. ``module`` and ``method`` are the same object (``method`` typed by its
    contract); ``model`` runs the forward pass (the method, or its DDP / compiled wrapper)."""

    cfg: PretrainConfig  # resolved: what RUN/config.yaml states
    spec: MethodSpec
    device: torch.device
    dinfo: distributed.DistInfo
    amp_dtype: torch.dtype | None
    precision_note: str
    threads: int | None
    out: Path
    ckpt_path: Path
    data: TrainData
    schedule: Schedule
    budget: TimeBudget | None
    module: nn.Module
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int  # steps already taken (from the checkpoint when resuming)
    resumed: dict[str, Any] | None  # the checkpoint a resumed run started from
    kernel_views: bool


def build_method(cfg: PretrainConfig, spec: MethodSpec, amp_dtype: torch.dtype | None,
                 device: torch.device, init: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, Method]:
    """The method for ``cfg`` (seeded), with its bf16 CPU view-size check; ``init``: the backbone's starting
    weights (``--init``), loaded before the method is built so that a teacher copied from it starts from them too."""
    torch.manual_seed(cfg.train.seed)
    backbone = build_backbone(cfg.backbone, cfg.data.image_size)
    if init is not None:
        apply_init(backbone, init)
    module = spec.build(backbone, method_config(cfg, spec), image_size=cfg.data.image_size,
                        grayscale=cfg.data.grayscale)
    if not isinstance(module, Method):
        raise TypeError(f"method '{spec.name}' does not follow selfsup.methods.Method")
    bn = next((n for n, m in module.named_modules() if isinstance(m, _BATCH_NORMS)), None)
    if cfg.train.accumulate_steps > 1 and bn is not None:  # e.g. rotnet's MLP head (method.head_hidden_dim > 0)
        raise ConfigError(f"train.accumulate_steps={cfg.train.accumulate_steps}: method {spec.name} on "
                          f"{cfg.backbone.name} has BatchNorm ({bn}), whose statistics over a micro-batch are not "
                          "those over the batch; drop train.accumulate_steps")
    if device.type == "cpu" and amp_dtype == torch.bfloat16:
        recipes = [module.view_recipe]
        if cfg.data.low_res_size:
            recipes.append(rescaled_recipe(module.view_recipe, cfg.data.low_res_size, cfg.data.image_size))
        check_bf16_cpu_conv_sizes(backbone, [v.size for r in recipes for v in r.views], name=cfg.backbone.name,
                                  hint="data.image_size, data.low_res_size, method.local_size")
    return module, module


def setup_run(cfg: PretrainConfig, *, resume: bool, t_process: float | None = None) -> Run:
    """Resolve ``cfg``, start the device and processes, open the data, build the method, restore a checkpoint."""
    t_process = time.perf_counter() if t_process is None else t_process
    given = cfg
    cfg, spec, _ = resolve_config(given)
    check_log_backend(cfg)
    init = load_init_state(cfg) if cfg.backbone.init and not resume else None  # --resume: the checkpoint wins
    device = resolve_device(cfg.train.device)
    kernel_views = uses_kernel(device, cfg.data.colour, cfg.data.view_backend)  # before any folder is made
    dinfo = distributed.setup(device)
    if device.type == "cuda" and dinfo.enabled:
        device = torch.device("cuda", dinfo.local_rank)
    threads = set_threads(cfg.train.threads, dinfo.local_world_size) if device.type == "cpu" else None
    tune_allocator()
    amp_dtype, precision_note = resolve_precision(cfg.train.precision, device)

    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_NAME
    if resume and not ckpt_path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start a new run")
    if not resume and ckpt_path.exists():
        raise ConfigError(f"run folder {out} already holds a checkpoint; pass --resume to continue it or choose another --out")

    data = load_data(cfg)
    if data.batch_size != cfg.train.batch_size:  # capped to a small dataset: the LR rule follows the real batch
        cfg, spec, _ = resolve_config(dataclasses.replace(
            given, train=dataclasses.replace(given.train, batch_size=data.batch_size)))
    schedule = Schedule(data.steps_per_epoch, cfg.train.epochs, cfg.optim.warmup_epochs or 0.0, cfg.train.max_steps)
    budget = None
    if cfg.train.time_budget:
        # --time-budget: `epochs` is only the provisional schedule until throughput has been measured
        budget = TimeBudget(cfg.train.time_budget, t0=t_process, phases=budget_phases(cfg.data))
        schedule.fit(OPEN_ENDED, provisional=True)

    cfg = with_dataset_size(cfg, spec, len(data.source))
    module, method = build_method(cfg, spec, amp_dtype, device, init)
    if cfg.train.sync_bn and dinfo.enabled:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU); "
                              "drop --set train.sync_bn=true")
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # BN statistics over the global batch
        assert isinstance(module, Method)
        method = module
    module.to(device)
    if cfg.train.channels_last:
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    groups = param_groups(module, cfg.optim.weight_decay or 0.0, cfg.optim.exclude_norm_bias, method.param_groups())
    optimizer = build_optimizer(cfg.optim, groups)

    step, payload = 0, None
    if resume:
        payload = load_checkpoint(ckpt_path)
        check_resume_compatible(payload.get("config", {}), cfg, ckpt_path)
        load_state_strict(module, payload["method"], f"{cfg.method['name']} method", ckpt_path)
        optimizer.load_state_dict(payload["optimizer"])
        step = int(payload["step"])
        n_saved = int(payload.get("num_images", len(data.source)))
        if n_saved != len(data.source):  # the same path, other contents
            raise ConfigError(f"{ckpt_path} was trained on {n_saved} images but {cfg.data.path} now holds "
                              f"{len(data.source)}; the data changed — start a new --out")

    model: nn.Module = module
    if dinfo.enabled:
        # broadcast_buffers=False: per-rank state (queues, FAMT maps) must not be overwritten by rank 0's copy
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    if cfg.train.compile:
        check_compile_toolchain(device)
        model = torch.compile(model)  # type: ignore[assignment]
    return Run(cfg=cfg, spec=spec, device=device, dinfo=dinfo, amp_dtype=amp_dtype, precision_note=precision_note,
               threads=threads, out=out, ckpt_path=ckpt_path, data=data, schedule=schedule, budget=budget,
               module=module, method=method, model=model, optimizer=optimizer, step=step, resumed=payload,
               kernel_views=kernel_views)
