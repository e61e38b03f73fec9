"""Few-shot classification on frozen features: N-way K-shot episodes (Tian et al. 2020, arXiv 2003.11539).

"Rethinking Few-Shot Image Classification": a frozen embedding plus a simple classifier per episode. Each
episode draws ``n_way`` classes, ``k_shot`` support and ``n_query`` query images per class (without
replacement, seeded). Features are L2-normalised (Tian et al., Sec. 3), then classified by

- ``prototype``: nearest class mean by cosine similarity (prototypes = mean of the normalised support
  features, re-normalised; Snell et al. 2017's rule with cosine, as in SimpleShot),
- ``logistic``: multinomial logistic regression fit on the support set, the paper's classifier. It
  minimises ``0.5 * ||W||^2 + C * sum_i CE(W x_i + b, y_i)`` (bias free, scikit-learn's
  ``LogisticRegression(C=1)`` objective) with L-BFGS, for all episodes of a chunk at once (the episodes
  are independent, so the joint optimum is every episode's optimum).

Reported per (K, classifier): mean episode accuracy (%) and the half-width of its 95% confidence interval,
``t_{0.975, E-1} * std / sqrt(E)`` (Student t, as in the paper's code; ~1.96 * sem for 600 episodes).
The paper's default: 5-way, 1- and 5-shot, 15 queries per class, 600 episodes (we use the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import as_tensor

CLASSIFIERS = ("prototype", "logistic")


def confidence_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t ``confidence`` interval of the mean)."""
    from scipy import stats

    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return float(a.mean()) if a.size else float("nan"), float("nan")
    sem = a.std(ddof=1) / np.sqrt(a.size)
    return float(a.mean()), float(stats.t.ppf((1.0 + confidence) / 2.0, a.size - 1) * sem)


def sample_episodes(labels: np.ndarray, n_way: int, k_shot: int, n_query: int, episodes: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``support [E, n_way*k_shot]`` and ``query [E, n_way*n_query]``; episode labels are
    ``0..n_way-1`` in blocks (``support[e, c*k:(c+1)*k]`` belong to episode class c)."""
    by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = np.array([c for c, idx in by_class.items() if idx.size >= k_shot + n_query])
    if eligible.size < n_way:
        raise DataError(f"few-shot: only {eligible.size} classes have >= {k_shot + n_query} images "
                        f"(k_shot + n_query); need {n_way} for {n_way}-way episodes — lower --n-way or --n-query")
    sup = np.empty((episodes, n_way * k_shot), dtype=np.int64)
    qry = np.empty((episodes, n_way * n_query), dtype=np.int64)
    for e in range(episodes):
        classes = rng.choice(eligible, size=n_way, replace=False)
        for j, c in enumerate(classes):
            pick = rng.choice(by_class[int(c)], size=k_shot + n_query, replace=False)
            sup[e, j * k_shot : (j + 1) * k_shot] = pick[:k_shot]
            qry[e, j * n_query : (j + 1) * n_query] = pick[k_shot:]
    return sup, qry


def prototype_predict(support: torch.Tensor, n_way: int, k_shot: int, query: torch.Tensor) -> torch.Tensor:
    """support [E, n_way*k_shot, D], query [E, Q, D] (normalised) -> predicted episode class [E, Q]."""
    protos = support.view(support.shape[0], n_way, k_shot, -1).mean(2)
    protos = F.normalize(protos, dim=-1)
    return torch.einsum("eqd,ecd->eqc", query, protos).argmax(-1)


def logistic_predict(support: torch.Tensor, y_support: torch.Tensor, n_way: int, query: torch.Tensor, *,
                     C: float = 1.0, max_iter: int = 100) -> torch.Tensor:
    """Per-episode multinomial logistic regression (see module docstring); returns predictions [E, Q]."""
    e, _, d = support.shape
    x = support.double()
    w = torch.zeros(e, d, n_way, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(e, 1, n_way, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.bmm(x, w) + b
        ce = F.cross_entropy(logits.reshape(-1, n_way), y_support.reshape(-1), reduction="sum")
        loss = (C * ce + 0.5 * (w * w).sum()) / e
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        return (torch.bmm(query.double(), w) + b).argmax(-1)


@torch.no_grad()
def fewshot_eval(
    features: Any,
    labels: Any,
    *,
    n_way: int = 5,
    k_shots: Sequence[int] = (1, 5),
    n_query: int = 15,
    episodes: int = 600,
    classifiers: Sequence[str] = CLASSIFIERS,
    seed: int = 0,
    C: float = 1.0,
    chunk: int = 100,
) -> dict[str, Any]:
    """N-way K-shot accuracy of ``features``/``labels`` (all from one split, e.g. the test set).

    Returns ``{"{K}shot_{classifier}": mean %, "{K}shot_{classifier}_ci95": half-width %, ...}`` plus the
    settings. ``n_way`` is lowered to the number of classes when the data has fewer (the value used is
    reported); ``n_query`` is lowered to what the smallest class allows.
    """
    x = as_tensor(features, "features").float()
    y = as_tensor(labels, "labels").long().cpu().numpy()
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise DataError(f"few-shot: features must be [N, F] with one label per row; got {tuple(x.shape)}, {y.shape}")
    bad = [c for c in classifiers if c not in CLASSIFIERS]
    if bad:
        raise ConfigError(f"unknown few-shot classifier '{bad[0]}'; choose from: {', '.join(CLASSIFIERS)}")
    if episodes < 1 or n_way < 2 or n_query < 1 or not k_shots or min(k_shots) < 1:
        raise ConfigError(f"few-shot needs episodes >= 1, n_way >= 2, n_query >= 1, k_shot >= 1; got {episodes}, "
                          f"{n_way}, {n_query}, {tuple(k_shots)}")
    counts = np.bincount(y[y >= 0])
    n_classes = int((counts > 0).sum())
    way = min(int(n_way), n_classes)
    if way < 2:
        raise DataError("few-shot needs at least 2 labelled classes")
    smallest = int(np.sort(counts[counts > 0])[-way])  # the way-th largest class bounds k + q
    query = min(int(n_query), smallest - max(k_shots))
    if query < 1:
        raise DataError(f"few-shot: {way} classes with more than {max(k_shots)} images are needed for "
                        f"{max(k_shots)}-shot episodes; lower --k-shots")
    x = F.normalize(x, dim=1).cpu()
    out: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # episodes are tiny: thread start-up costs more than it saves
    try:
        _run_shots(x, y, way, k_shots, query, int(episodes), classifiers, seed, C, chunk, out)
    finally:
        torch.set_num_threads(threads)
    out.update({"n_way": way, "k_shots": [int(k) for k in k_shots], "n_query": query, "episodes": int(episodes),
                "classifiers": list(classifiers), "seed": int(seed), "C": float(C)})
    return out


def _run_shots(x: torch.Tensor, y: np.ndarray, way: int, k_shots: Sequence[int], query: int, episodes: int,
               classifiers: Sequence[str], seed: int, C: float, chunk: int, out: dict[str, Any]) -> None:
    for k in k_shots:
        rng = np.random.default_rng([int(seed), int(k)])
        sup, qry = sample_episodes(y, way, int(k), query, episodes, rng)
        ys = torch.arange(way).repeat_interleave(int(k)).expand(episodes, -1)
        yq = torch.arange(way).repeat_interleave(query)
        accs: dict[str, list[np.ndarray]] = {c: [] for c in classifiers}
        for s in range(0, episodes, chunk):
            xs = x[torch.from_numpy(sup[s : s + chunk])]
            xq = x[torch.from_numpy(qry[s : s + chunk])]
            for c in classifiers:
                if c == "prototype":
                    pred = prototype_predict(xs, way, int(k), xq)
                else:
                    pred = logistic_predict(xs, ys[s : s + chunk], way, xq, C=C)
                accs[c].append((100.0 * (pred == yq).double().mean(1)).numpy())
        for c in classifiers:
            mean, ci = confidence_interval(np.concatenate(accs[c]))
            out[f"{k}shot_{c}"] = mean
            out[f"{k}shot_{c}_ci95"] = ci
