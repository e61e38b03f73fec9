"""The small contract every pretraining method follows, and the registry the tests walk.

A method is a plain ``nn.Module`` that *owns* its backbone, heads, loss state and view recipe. It is
composed from pure loss functions (``selfsup.losses``), heads (``selfsup.models.heads``) and view recipes
(``selfsup.augment.recipes``). The training loop relies on exactly the :class:`Method` protocol below.
A method class derives from :class:`MethodModule` (``class SimCLR(MethodModule)``: an ``nn.Module`` that follows
the protocol and keeps ``backbone`` and ``cfg``), which gives it the protocol's default hooks and lets mypy
check it:

- ``method.backbone``: the encoder being pretrained (what gets exported);
- ``method.view_recipe``: a :class:`selfsup.augment.recipes.ViewRecipe` telling the loop which views to make;
- ``method(batch, progress) -> StepOutput``: the loss (and scalar logs) for one batch of views;
- ``method.after_step(progress)``: called after each optimizer step (EMA teachers, queues); default: nothing;
- ``method.on_epoch_start(epoch, dataset)``: called before an epoch's first step with the training data
  (FAMT refreshes its per-image weight maps); default: nothing;
- ``method.param_groups()``: a list of ``{"params": [...], **overrides}`` for the optimizer (e.g. SimSiam's
  fixed-LR predictor); default ``None``: all trainable parameters in one group.

All state that must survive a resume (EMA teachers, queues, centers, prototypes) lives in parameters or
registered buffers, so ``state_dict()`` checkpoints it.

Adding a method = one new file under ``methods/``, its test, and one line in ``methods/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from selfsup.augment.recipes import ViewParams, ViewRecipe


@dataclass
class Progress:
    """Where training stands; methods use it for schedules (EMA momentum, DINO teacher temperature)."""

    step: int  # optimizer steps completed before this one
    total_steps: int
    epoch: int
    steps_per_epoch: int

    @property
    def fraction(self) -> float:
        """Training progress in [0, 1]."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def epoch_float(self) -> float:
        return self.step / max(1, self.steps_per_epoch)


@dataclass
class Batch:
    """One training batch after augmentation.

    views:  list of float tensors [B, C, h_v, w_v], normalised; multi-crop views may differ in size.
    index:  [B] int64 dataset indices of the source images (FAMT weight maps, poison audits).
    params: per view, the sampled augmentation parameters (``selfsup.augment.recipes.ViewParams``): crop boxes
            and flips, so that per-image maps (FAMT) can follow the crop.
    """

    views: list[torch.Tensor]
    index: torch.Tensor
    params: list[ViewParams] = field(default_factory=list)


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, differentiable
    logs: dict[str, float] = field(default_factory=dict)  # extra scalars for metrics.jsonl
    embeddings: torch.Tensor | None = None  # [B, D] detached embeddings for the collapse monitor


@runtime_checkable
class Method(Protocol):
    """What the training loop calls on a method; the optional hooks have their defaults here."""

    backbone: nn.Module
    view_recipe: ViewRecipe

    def forward(self, batch: Batch, progress: Progress) -> StepOutput: ...

    def after_step(self, progress: Progress) -> None:
        """After each optimizer step (EMA teachers, queues)."""
        return None

    def on_epoch_start(self, epoch: int, dataset: object) -> None:
        """Before the first step of every epoch, with the training data set."""
        return None

    def param_groups(self) -> list[dict[str, Any]] | None:
        """The optimizer's parameter groups; ``None``: all trainable parameters in one group."""
        return None


class MethodModule(nn.Module, Method):
    """The base of the registered methods: an ``nn.Module`` that follows :class:`Method` and keeps the
    backbone being pretrained and the method's typed hyper-parameters (``cfg``)."""

    def __init__(self, backbone: nn.Module, cfg: Any) -> None:
        super().__init__()
        self.cfg, self.backbone = cfg, backbone


@dataclass(frozen=True)
class Recipe:
    """The paper's optimisation defaults for a method; the user's config overrides any field."""

    optimizer: str = "sgd"  # sgd | lars | adamw
    base_lr: float = 0.05  # scaled by batch_size / 256
    weight_decay: float = 1e-4
    warmup_epochs: float = 10.0
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # contrastive | self-distillation | redundancy-reduction | clustering | context | masked
    paper: str  # "Author et al. YEAR, arXiv XXXX.XXXXX"
    config_cls: type  # dataclass of the method's hyper-parameters (paper defaults written beside them)
    build: Callable[..., nn.Module]  # build(backbone, cfg, image_size=..., grayscale=...) -> a Method module
    recipe: Recipe
    summary: str = ""
    # Gradient accumulation (train.accumulate_steps > 1) is exact only when the loss is a mean of per-sample
    # terms and nothing in the method couples the samples of a batch (no in-batch negatives, no batch-wise
    # centering / Sinkhorn / covariance, no BatchNorm). ``coupling``: what couples them (named when accumulation
    # is refused); "" when the loss is such a mean (the modules may still hold BatchNorm through the backbone or
    # an MLP head: the builder checks those). ``accumulates`` is derived from it.
    coupling: str = "it does not declare a loss that is a mean of per-sample terms"

    @property
    def accumulates(self) -> bool:
        return not self.coupling


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str, *, family: str, paper: str, config: type, recipe: Recipe, coupling: str, summary: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class/function decorator adding a method to the registry. ``coupling``: what couples the samples of a
    batch in the method's loss or heads (in-batch negatives, batch statistics, BatchNorm, a queue update), or ""
    when the loss is a mean of per-sample terms, so that gradient accumulation is exact."""

    def deco(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = MethodSpec(name, family, paper, config, build, recipe, summary, coupling)
        return build

    return deco


def registry() -> dict[str, MethodSpec]:
    return dict(_REGISTRY)
