"""Linear probe: multinomial logistic regression on frozen features.

The features are computed once by the caller (see ``features.py``); only a ``[F, C]`` weight matrix and
a bias are trained. Features are standardised with the *training* mean and standard deviation (the test
set is transformed with the same statistics, never its own).

Objective (convex): ``mean_i CE(W x_i + b, y_i) + (weight_decay / 2) * ||W||_F^2`` (bias not penalised).

Default optimiser: full-batch L-BFGS with strong-Wolfe line search from a zero initialisation, the
classic solver for this problem (scikit-learn's ``LogisticRegression(solver="lbfgs")``; CLIP's linear
probes). With an L2 term the optimum is unique, there is no learning rate to tune, and the result does
not depend on the seed or on the batch size. ``epochs`` is the number of L-BFGS iterations (each one or
a few full passes). The loss/gradient is accumulated over row chunks, so memory stays at one chunk of
logits. ``optimizer="adamw"`` gives the mini-batch alternative (AdamW, cosine learning-rate decay,
``epochs`` passes, shuffled with ``seed``) for problems too large for full-batch passes.

``weight_decay="auto"`` picks the L2 strength from a small grid on a held-out tenth of the training set
(never the test set), then refits on all training features.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import as_tensor
from selfsup.eval.knn import topk_accuracy

OPTIMIZERS = ("lbfgs", "adamw")
_CHUNK = 65536
# weight_decay="auto" grid (mean-loss convention; sklearn C = 1 / (weight_decay * N))
WD_GRID = (1e-5, 1e-4, 1e-3, 1e-2)


def fit_standardizer(train_features: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and standard deviation of the training features (std floored at ``eps``)."""
    x = train_features.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(eps)
    return mean.float(), std.float()


def standardize_features(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(features - mean) / std`` with statistics from :func:`fit_standardizer` (training set)."""
    return (features.float() - mean.to(features.device)) / std.to(features.device)


def _check(
    train_features: Any, train_labels: Any, test_features: Any, test_labels: Any, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    xtr = as_tensor(train_features, "train_features")
    xte = as_tensor(test_features, "test_features")
    ytr = as_tensor(train_labels, "train_labels").long()
    yte = as_tensor(test_labels, "test_labels").long()
    if xtr.ndim != 2 or xte.ndim != 2 or xtr.shape[1] != xte.shape[1]:
        raise DataError(f"features must be [N, F] with the same F; got train {tuple(xtr.shape)}, "
                        f"test {tuple(xte.shape)}")
    if ytr.shape != (xtr.shape[0],) or yte.shape != (xte.shape[0],):
        raise DataError(f"labels must be [N]: train {tuple(ytr.shape)} for {xtr.shape[0]} features, "
                        f"test {tuple(yte.shape)} for {xte.shape[0]} features")
    if xtr.shape[0] == 0 or xte.shape[0] == 0:
        raise DataError("linear probe needs non-empty train and test sets")
    if num_classes < 2:
        raise ConfigError(f"linear probe needs num_classes >= 2, got {num_classes}")
    for name, y in (("train", ytr), ("test", yte)):
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise DataError(f"{name} labels must lie in [0, {num_classes}); found {int(y.min())}..{int(y.max())}")
    return xtr, ytr, xte, yte


def _fit_lbfgs(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, iters: int, lr: float, wd: float
) -> float:
    opt = torch.optim.LBFGS(
        [w, b], lr=lr, max_iter=iters, max_eval=int(iters * 1.25) + 1, history_size=20,
        tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe",
    )
    n = x.shape[0]

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        total = torch.zeros((), device=x.device, dtype=torch.float64)
        for start in range(0, n, _CHUNK):
            xb, yb = x[start : start + _CHUNK], y[start : start + _CHUNK]
            loss = F.cross_entropy(xb @ w + b, yb, reduction="sum") / n
            loss.backward()
            total += loss.detach().double()
        reg = 0.5 * wd * (w * w).sum()
        reg.backward()
        return (total + reg.detach().double()).float()

    opt.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():  # LBFGS.step returns the loss at its start; report the final objective
        final = sum(float(F.cross_entropy(x[s : s + _CHUNK] @ w + b, y[s : s + _CHUNK], reduction="sum"))
                    for s in range(0, n, _CHUNK)) / n
        return final + 0.5 * wd * float((w * w).sum())


def _fit_adamw(
    x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, *, epochs: int, lr: float, wd: float,
    batch_size: int, gen: torch.Generator,
) -> float:
    # Decoupled weight decay on W only; the L2 term in the objective is applied through AdamW's decay.
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}], lr=lr)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    step = 0
    last = float("nan")
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(x.device)
        running = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            loss = F.cross_entropy(x[idx] @ w + b, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach()) * idx.shape[0]
            step += 1
        last = running / n
    return last


def _fit(
    xtr: torch.Tensor, ytr: torch.Tensor, num_classes: int, *, optimizer: str, epochs: int, lr: float, wd: float,
    batch_size: int, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    device = xtr.device
    f = xtr.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    with torch.enable_grad():
        b = torch.zeros(num_classes, device=device, requires_grad=True)
        if optimizer == "lbfgs":
            w = torch.zeros(f, num_classes, device=device, requires_grad=True)
            loss = _fit_lbfgs(xtr, ytr, w, b, iters=epochs, lr=lr, wd=wd)
        else:
            w0 = torch.randn(f, num_classes, generator=gen) * (1.0 / math.sqrt(f))
            w = w0.to(device).requires_grad_(True)
            loss = _fit_adamw(xtr, ytr, w, b, epochs=epochs, lr=lr, wd=wd, batch_size=batch_size, gen=gen)
    return w.detach(), b.detach(), loss


def _scores(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([x[s : s + _CHUNK] @ w + b for s in range(0, x.shape[0], _CHUNK)])


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 100,
    lr: float | None = None,
    weight_decay: float | str = 1e-4,
    batch_size: int = 1024,
    seed: int = 0,
    standardize: bool = True,
    optimizer: str = "lbfgs",
    wd_grid: tuple[float, ...] = WD_GRID,
    val_fraction: float = 0.1,
) -> dict[str, Any]:
    """Train a linear classifier on frozen features; top-1/top-5 test accuracy in percent.

    ``lr`` defaults to 1.0 for L-BFGS (the step scale before the line search) and 1e-3 for AdamW;
    ``batch_size`` is used by AdamW only. Runs on ``train_features.device``. Deterministic for a seed.
    ``weight_decay="auto"`` holds out ``val_fraction`` of the training set (seeded split), fits each value
    of ``wd_grid``, keeps the best held-out top-1 and refits on the full training set (the test set is never
    used for the choice); the sweep is reported under ``"wd_search"``.
    Returns ``{"top1", "top5", "train_top1", "train_loss", "optimizer", "epochs", "lr", "weight_decay",
    "batch_size", "standardize", "seed"}`` (+ ``"wd_search"`` with "auto").
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown linear-probe optimizer '{optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
    if epochs < 1:
        raise ConfigError(f"linear probe epochs must be >= 1, got {epochs}")
    auto_wd = isinstance(weight_decay, str)
    if auto_wd and weight_decay != "auto":
        raise ConfigError(f"linear probe weight_decay must be a number >= 0 or 'auto', got '{weight_decay}'")
    if not auto_wd and float(weight_decay) < 0:
        raise ConfigError(f"linear probe weight_decay must be >= 0, got {weight_decay}")
    if batch_size < 1:
        raise ConfigError(f"linear probe batch_size must be >= 1, got {batch_size}")
    xtr, ytr, xte, yte = _check(train_features, train_labels, test_features, test_labels, int(num_classes))
    lr = (1.0 if optimizer == "lbfgs" else 1e-3) if lr is None else float(lr)
    device = xtr.device
    xtr = xtr.float()
    xte = xte.to(device).float()
    ytr, yte = ytr.to(device), yte.to(device)
    fit_kw: dict[str, Any] = {"optimizer": optimizer, "epochs": int(epochs), "lr": lr,
                              "batch_size": int(batch_size), "seed": int(seed)}
    search: dict[str, float] = {}
    if auto_wd:
        n = xtr.shape[0]
        n_val = int(round(n * float(val_fraction)))
        if not wd_grid or n_val < 1 or n - n_val < 1:
            raise ConfigError(f"weight_decay='auto' needs a non-empty wd_grid and a hold-out of >= 1 of {n} "
                              f"training features (val_fraction={val_fraction}); pass a number instead")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 1)).to(device)
        fit_idx, val_idx = perm[n_val:], perm[:n_val]
        xf, xv = xtr[fit_idx], xtr[val_idx]
        if standardize:
            m, s = fit_standardizer(xf)
            xf, xv = standardize_features(xf, m, s), standardize_features(xv, m, s)
        for wd in wd_grid:
            w, b, _ = _fit(xf, ytr[fit_idx], num_classes, wd=float(wd), **fit_kw)
            search[f"{float(wd):g}"] = topk_accuracy(_scores(xv, w, b), ytr[val_idx], ks=(1,))["top1"]
        best = max(search.values())
        weight_decay = next(float(wd) for wd in wd_grid if search[f"{float(wd):g}"] == best)
    if standardize:
        mean, std = fit_standardizer(xtr)
        xtr, xte = standardize_features(xtr, mean, std), standardize_features(xte, mean, std)
    w_, b_, train_loss = _fit(xtr, ytr, num_classes, wd=float(weight_decay), **fit_kw)
    if not math.isfinite(train_loss):
        raise ConfigError(f"linear probe diverged (loss {train_loss}); lower --lr or enable standardisation")
    acc = topk_accuracy(_scores(xte, w_, b_), yte)
    out = {
        **acc,
        "train_top1": topk_accuracy(_scores(xtr, w_, b_), ytr, ks=(1,))["top1"],
        "train_loss": train_loss,
        "optimizer": optimizer,
        "epochs": int(epochs),
        "lr": lr,
        "weight_decay": float(weight_decay),
        "batch_size": int(batch_size),
        "standardize": bool(standardize),
        "seed": int(seed),
    }
    if auto_wd:
        out["wd_search"] = search
    return out
