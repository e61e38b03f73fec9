"""A self-contained HTML report of a run folder (the Python API behind ``selfsup report``).

The file needs no network: CSS is inline, every figure is a base64 PNG drawn with matplotlib's Agg back
end, and the only script is a few inline lines that, once the page has loaded, set ``document.title`` to
``ok:<number of images decoded>`` (or ``broken:<ok>:<failed>``) so that a headless browser can check it.

Sections (each present when its inputs are):
1. the run summary (``RUN/summary.json``, readable numbers only) and the resolved configuration;
2. training curves from ``RUN/metrics.jsonl``: loss, learning rate, throughput (images/s), every logged step;
3. the online kNN top-1 curve (``{"eval": "knn"}`` rows of ``metrics.jsonl``), drawn from 2 points on;
4. the evaluation table from ``RUN/eval.json`` (``selfsup eval all`` or ``selfsup demo``);
5. a 2-D map of embeddings (UMAP when installed, else t-SNE, else PCA), coloured by label when the folder has
   class sub-folders, else by k-means cluster;
6. a nearest-neighbour grid: query images and their top-8 cosine neighbours among the other images (with
   labels: green frame same label, red different);
7. the FAMT mask grid ``RUN/masks.png`` (written by ``selfsup masks``) when present.

Sections 5-6 need no labels. Their images: ``test=`` (any folder, labelled or not), else the run config's
``data.val``, else its training data ``data.path``. Their features come from the evaluation feature cache
(:func:`selfsup.eval.features.cached_features`), shared with ``selfsup eval``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

MAX_POINTS = 1500


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training rows, eval rows) of a metrics.jsonl file; unreadable lines are skipped."""
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    if not path.is_file():
        return train, evals
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict):
            continue
        (evals if "eval" in row else train).append(row)
    return train, evals


def curves_figure(rows: list[dict[str, Any]]) -> str | None:
    """Loss, learning rate and images/s against the step, one panel each, every logged step (base64 PNG)."""
    import matplotlib.pyplot as plt

    keys = [(k, t) for k, t in (("loss", "loss"), ("lr", "learning rate"), ("images_per_s", "throughput (images/s)"))
            if any(k in r for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, (k, title) in zip(axes[0], keys):
        pts = sorted((r["step"], r[k]) for r in rows if k in r and "step" in r and isinstance(r[k], int | float))
        if pts:
            x, y = zip(*pts)
            # few points: mark each one, so a sparse log is not mistaken for a smooth curve
            ax.plot(x, y, lw=1.2, marker="o" if len(pts) <= 60 else None, ms=3)
        ax.set_title(f"{title}, {len(pts)} logged steps" if k == "loss" else title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def knn_points(evals: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return sorted((float(r.get("epoch", r.get("step", 0))), float(r["knn_top1"])) for r in evals
                  if r.get("eval") == "knn" and isinstance(r.get("knn_top1"), int | float))


def knn_figure(evals: list[dict[str, Any]]) -> str | None:
    """The online kNN top-1 against the epoch; None below 2 points (one point is a number, not a curve)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    pts = knn_points(evals)
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    x, y = zip(*pts)
    ax.plot(x, y, marker="o")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    ax.set_xlabel("epoch")
    ax.set_ylabel("kNN top-1 (%)")
    ax.set_title("online kNN accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def project_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``features``: UMAP if importable, else t-SNE (<= 5000 points), else PCA."""
    x = np.asarray(features, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = x.shape[0]
    if n >= 5:
        try:
            import umap  # type: ignore[import-not-found]

            return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
        except ImportError:
            pass
        if n <= 5000:
            from sklearn.manifold import TSNE

            perp = float(min(30.0, max(2.0, (n - 1) / 3.0)))
            return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x), "t-SNE"
    from sklearn.decomposition import PCA

    k = min(2, n, x.shape[1])
    out = np.zeros((n, 2), dtype=np.float32)
    out[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(x)
    return out, "PCA"


def cluster_labels(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, int]:
    """k-means cluster ids of L2-normalised ``features`` for unlabelled data; k = clamp(sqrt(N / 2), 2, 10)."""
    from sklearn.cluster import KMeans

    n = features.shape[0]
    k = int(min(10, max(2, round((n / 2) ** 0.5)), n))
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x).astype(np.int64), k


def map_figure(coords: np.ndarray, labels: np.ndarray, classes: list[str], method: str, *,
               what: str = "test embeddings") -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for c in np.unique(labels):
        m = labels == c
        name = classes[int(c)] if int(c) < len(classes) else str(c)
        ax.scatter(coords[m, 0], coords[m, 1], s=8, color=cmap(int(c) % cmap.N), label=name, alpha=0.8)
    if len(classes) <= 20:
        ax.legend(markerscale=2, fontsize=7, loc="best", frameon=False)
    ax.set_title(f"{what} ({method}, {len(labels)} points)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    return _png(fig)


def neighbour_figure(images: np.ndarray, features: np.ndarray, labels: np.ndarray | None, classes: list[str], *,
                     n_queries: int = 6, k: int = 8, seed: int = 0) -> str:
    """Rows: a query image then its k nearest neighbours (cosine) among the other images. With ``labels``
    each frame says whether the neighbour shares the query's label (green) or not (red); without, frames
    are neutral and the titles show the score alone."""
    import matplotlib.pyplot as plt

    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    n = f.shape[0]
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, size=min(n_queries, n), replace=False)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.3 * (k + 1), 1.45 * len(queries)), squeeze=False)
    for row, qi in enumerate(queries):
        sims = f @ f[qi]
        sims[qi] = -np.inf
        nn_idx = np.argsort(-sims, kind="stable")[:k]
        for col, j in enumerate([qi, *nn_idx]):
            ax = axes[row, col]
            ax.imshow(np.asarray(images[j]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if labels is None:
                colour, name = ("black" if col == 0 else "#999999"), ""
            else:
                colour = "black" if col == 0 else ("#1a9850" if labels[j] == labels[qi] else "#d73027")
                name = classes[int(labels[j])] if int(labels[j]) < len(classes) else str(labels[j])
            for side in ax.spines.values():
                side.set_edgecolor(colour)
                side.set_linewidth(3 if col else 1.5)
            ax.set_title((f"query {name}" if col == 0 else f"{sims[j]:.2f} {name}").strip(), fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _eval_table(results: dict[str, Any]) -> str:
    from selfsup.eval.suite import table_rows

    rows = table_rows(results)
    if not rows:
        return "<p>eval.json holds no protocol results.</p>"
    cols = ["protocol", "metric", "encoder", "pixels", "random", "time_s"]
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(r[c])}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem;margin-top:2rem}
pre{background:#f6f8fa;padding:.8rem;overflow:auto;font-size:.8rem;max-height:28rem}
table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}th{background:#f0f0f0}
img{max-width:100%;height:auto}.note{color:#666;font-size:.85rem}
table.kv td:nth-child(2){text-align:left}
"""

SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0, bad = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } else { bad++; }
  }
  document.title = bad === 0 ? "ok:" + ok : "broken:" + ok + ":" + bad;
});
</script>"""


#: up to this many images the report encodes the whole folder through the shared feature cache (so a later
#: `selfsup eval` on the same folder reuses them); above it only the sampled images are encoded
CACHE_MAX_IMAGES = 20000


def _embedding_sections(run: Path, data: str, max_points: int, seed: int, *, what: str) -> tuple[list[str], list[str]]:
    from selfsup.checkpoint import load_encoder
    from selfsup.data import open_dataset
    from selfsup.eval.features import cached_features, encoder_key, extract_features

    encoder, info = load_encoder(run)
    size = int(info["image_size"])
    ds = open_dataset(data, size, progress=False)
    n = len(ds)
    if n < 2:
        return [f"<h2>Embeddings</h2><p class=note>{html.escape(data)} holds {n} readable image; a map and a "
                "neighbour grid need at least 2</p>"], []
    pick = np.sort(np.random.default_rng(seed).permutation(n)[:max_points]) if n > max_points else np.arange(n)
    images = np.asarray(ds.images[pick])
    if n <= CACHE_MAX_IMAGES:
        feats = cached_features(encoder, ds, key=encoder_key(info), image_size=size).numpy()[pick]
    else:
        feats = extract_features(encoder, images, image_size=size).numpy()
    labelled = ds.labels is not None and ds.num_classes >= 2
    coords, method = project_2d(feats, seed)
    if labelled:
        labels = np.asarray(ds.labels)[pick]
        colour_note = "coloured by class folder"
        fig_map = map_figure(coords, labels, ds.classes, method, what=what)
        grid_note = "score above each; green = same label, red = different"
    else:
        clusters, k = cluster_labels(feats, seed)
        colour_note = f"no labels: coloured by k-means cluster (k = {k})"
        fig_map = map_figure(coords, clusters, [f"cluster {i}" for i in range(k)], method, what=what)
        labels = None
        grid_note = "cosine similarity above each; no labels, so no right or wrong"
    notes = [f"{what}: {html.escape(data)} ({len(pick)} of {n} images)"]
    return [
        f"<h2>{what[0].upper() + what[1:]}</h2><p class=note>{colour_note}</p>" + _img(fig_map, "embedding map"),
        f"<h2>Nearest neighbours</h2><p class=note>Each row: an image, then its 8 nearest images by "
        f"cosine similarity ({grid_note}).</p>"
        + _img(neighbour_figure(images, feats, labels, ds.classes if labelled else [], seed=seed),
               "nearest-neighbour grid"),
    ], notes


def _summary_table(summary: dict[str, Any]) -> str:
    from selfsup.summary import summary_rows

    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in summary_rows(summary))
    return f"<h2>Summary</h2><table class=kv>{cells}</table>" if cells else ""


def write_report(run_dir: str | Path, out: str | Path | None = None, *, test: str | None = None,
                 max_points: int = MAX_POINTS, seed: int = 0) -> Path:
    """Write ``RUN/report.html`` (or ``out``) for the run folder ``run_dir``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import yaml

    from selfsup.checkpoint import atomic_write_text
    from selfsup.errors import ConfigError

    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"run folder not found: {run} (pass the --out folder of `selfsup pretrain`)")
    cfg_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    try:
        cfg = yaml.safe_load(cfg_text) or {} if cfg_text else {}
    except yaml.YAMLError:
        cfg = {}
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    rows, evals = read_metrics(run / "metrics.jsonl")
    parts: list[str] = []
    title = f"selfsup report: {run.name or run.resolve().name}"
    parts.append(f"<h1>{html.escape(title)}</h1>")
    if summary:
        parts.append(_summary_table(summary))
    parts.append("<h2>Configuration</h2>" + (f"<pre>{html.escape(cfg_text)}</pre>" if cfg_text
                                              else "<p class=note>no config.yaml in the run folder</p>"))
    curves = curves_figure(rows)
    parts.append("<h2>Training curves</h2>" + (_img(curves, "loss, learning rate and throughput") if curves
                                                 else "<p class=note>no metrics.jsonl rows</p>"))
    knn = knn_figure(evals)
    pts = knn_points(evals)
    if knn:
        parts.append("<h2>Online kNN</h2>" + _img(knn, "online kNN accuracy"))
    elif pts:
        parts.append(f"<h2>Online kNN</h2><p>top-1 {pts[0][1]:.2f}% at epoch {pts[0][0]:g} (one evaluation; "
                     "set train.knn_every for a curve)</p>")
    else:
        parts.append("<h2>Online kNN</h2><p class=note>no online kNN rows (pass --val to pretrain)</p>")
    ev_path = run / "eval.json"
    if ev_path.is_file():
        try:
            parts.append("<h2>Evaluation</h2>" + _eval_table(json.loads(ev_path.read_text())))
        except json.JSONDecodeError:
            parts.append("<h2>Evaluation</h2><p class=note>eval.json is not valid JSON</p>")
    else:
        parts.append("<h2>Evaluation</h2><p class=note>no eval.json; run `selfsup eval all --checkpoint "
                     f"{html.escape(str(run))} ...`</p>")
    data_cfg = (cfg.get("data") or {}) if isinstance(cfg, dict) else {}
    what = "test embeddings"
    if not test:
        test = data_cfg.get("val")
    if not test and data_cfg.get("path") and not str(data_cfg["path"]).startswith("wds:"):
        test, what = data_cfg["path"], "training-data embeddings"
    if test and ((run / "checkpoint.pt").is_file() or (run / "encoder.safetensors").is_file()):
        sections, notes = _embedding_sections(run, str(test), max_points, seed, what=what)
        parts.extend(sections)
        parts.append("".join(f"<p class=note>{n}</p>" for n in notes))
    else:
        parts.append("<h2>Embeddings</h2><p class=note>no images to embed: pass --test PATH (any image "
                     "folder, labelled or not)</p>")
    masks = run / "masks.png"
    if masks.is_file():
        b64 = base64.b64encode(masks.read_bytes()).decode("ascii")
        parts.append("<h2>FAMT masks</h2>" + _img(b64, "FAMT mask grid"))
    doc = (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + f"\n{SCRIPT}\n</body></html>\n")
    path = Path(out) if out is not None else run / "report.html"
    atomic_write_text(path, doc)
    return path


def check_run_folder(run: Path) -> None:
    """Refuse anything but a run folder, and name any of its files that cannot be read, before writing."""
    import json

    from selfsup.errors import DataError
    from selfsup.runlock import is_run_folder

    if not run.is_dir():
        raise DataError(f"run folder not found: {run} (pass the --out folder of `selfsup pretrain`)")
    if not is_run_folder(run):
        raise DataError(f"{run} is not a selfsup run folder (no config.yaml, checkpoint.pt or metrics.jsonl); pass "
                        "the --out folder of `selfsup pretrain`")
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "eval.json"):
        f = run / name
        if not f.exists():
            continue
        try:
            text = f.read_text(encoding="utf-8")
            if name.endswith(".json") and not isinstance(json.loads(text), dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            raise DataError(f"{f}: cannot read it ({reason}); delete or restore it and rerun") from None


def report(run_dir: str | Path, out: str | Path | None = None, *, test: str | None = None,
           max_points: int = MAX_POINTS) -> Path:
    """``selfsup report``: check the run folder and the output first, then write the report (holding the run
    folder's lock when the report goes into it, so no run writes there meanwhile); returns its path."""
    from contextlib import nullcontext

    from selfsup.config.validate import check_output_file
    from selfsup.runlock import run_folder_lock

    run = Path(run_dir)
    check_run_folder(run)
    path = check_output_file(out or run / "report.html", "--out", (".html", ".htm"))
    into_run = path.absolute().parent == run.absolute()
    with run_folder_lock(run, "run folder") if into_run else nullcontext():
        return write_report(run, path, test=test, max_points=max_points)
