"""`selfsup report`: a self-contained HTML file, checked in real headless Chromium when available."""

import base64
import os
import re
import shutil
import subprocess

import pytest

from .helpers import tiny_cli_run

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--disable-default-apps", "--enable-logging=stderr", "--v=0"]


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium():
    """A headless Chromium; installed with apt (time-bounded) when missing and we are root, else skip."""
    path = find_chromium()
    if path:
        return path
    reason = "chromium is not installed"
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        try:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, timeout=600,
                           capture_output=True, check=False)
        except (subprocess.TimeoutExpired, OSError) as exc:
            reason += f"; `apt-get install -y chromium` failed ({type(exc).__name__})"
        path = find_chromium()
        if path:
            return path
        reason += "; `apt-get install -y chromium` did not provide it"
    else:
        reason += " and cannot be installed here (needs root and apt-get)"
    print(f"SKIP report browser test: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def run_with_eval(tmp_path_factory):
    from selfsup.cli import main

    data, run = tiny_cli_run(tmp_path_factory.mktemp("report"), val=True)
    assert main(["eval", "all", "--checkpoint", str(run), "--train", str(data), "--test", str(data),
                 "--skip", "finetune,diagnostics", "--episodes", "20", "--n-query", "4"]) == 0
    # a stand-in for `selfsup masks`: any PNG at RUN/masks.png is embedded
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.imshow([[0, 1], [1, 0]])
    fig.savefig(run / "masks.png")
    plt.close(fig)
    return data, run


def report_cli(argv):
    """`selfsup report ...` through the command's own parser (independent of cli.COMMANDS)."""
    import argparse

    from selfsup.commands import report

    parser = argparse.ArgumentParser(prog="selfsup")
    report.add_parser(parser.add_subparsers(dest="command"), argparse.HelpFormatter)
    args = parser.parse_args(["report", *argv])
    return args.func(args)


@pytest.mark.integration
def test_report_html_is_self_contained(run_with_eval, capsys):
    data, run = run_with_eval
    capsys.readouterr()
    assert report_cli([str(run)]) == 0
    html = (run / "report.html").read_text()
    assert "wrote" in capsys.readouterr().out
    for section in ("Configuration", "Training curves", "Online kNN", "Evaluation", "Test embeddings",
                    "Nearest neighbours", "FAMT masks", "retrieval", "clustering"):
        assert section in html, section
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I), "external resource"
    assert "<link" not in html and "@import" not in html and "url(" not in html
    imgs = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', html)
    from selfsup.report import knn_points, read_metrics

    knn_curve = len(knn_points(read_metrics(run / "metrics.jsonl")[1])) >= 2
    assert len(imgs) == html.count("<img") == 4 + knn_curve  # curves, (kNN from 2 points), map, grid, masks
    assert knn_curve or "one evaluation" in html
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_report_renders_in_headless_chromium(run_with_eval, chromium, tmp_path):
    from selfsup.report import write_report

    _, run = run_with_eval
    page = write_report(run, tmp_path / "report.html")
    n_imgs = page.read_text().count("<img")

    def browse(target, *extra):
        cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
               *extra, target.as_uri()]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    dom = browse(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f"<title>ok:{n_imgs}</title>" in dom.stdout, re.findall(r"<title>.*?</title>", dom.stdout)
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, console
    network = [ln for ln in dom.stderr.splitlines() if re.search(r"https?://", ln) and "devtools" not in ln]
    assert not network, network
    shot = tmp_path / "shot.png"
    res = browse(page, f"--screenshot={shot}", "--window-size=1200,2400")
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000
    # negative control: a broken image and a console error are detected by the same checks
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
                   .replace("</body>", "<script>console.error('boom')</script></body>"))
    dom_bad = browse(bad, "--dump-dom")
    assert f"<title>broken:{n_imgs - 1}:1</title>" in dom_bad.stdout
    assert any("CONSOLE" in ln and "boom" in ln for ln in dom_bad.stderr.splitlines()), dom_bad.stderr[-1500:]


# ------------------------------------------------------------------------------------------ without labels


def make_photo_folder(root, n=24, seed=0):
    """A plain folder (no class sub-folders) of non-square 'photos' of several sizes and two kinds."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = int(rng.integers(30, 64)), int(rng.integers(18, 40))
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        img[..., i % 2 * 2] += np.uint8(150)  # two kinds: red-ish and blue-ish
        Image.fromarray(img).save(root / f"photo_{i:03d}.{'jpg' if i % 3 else 'png'}")
    return root


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    from selfsup.cli import main

    root = tmp_path_factory.mktemp("photos")
    photos = make_photo_folder(root / "photos")
    run = root / "run"
    assert main(["pretrain", "--data", str(photos), "--method", "simclr", "--epochs", "2", "--batch-size", "8",
                 "--out", str(run), "--image-size", "16", "--backbone", "cnn-compact", "--set", "backbone.width=4",
                 "--set", "train.threads=1", "--set", "train.log_every=1", "--no-progress"]) == 0
    return photos, run


@pytest.mark.integration
def test_report_without_labels_has_a_map_and_a_neighbour_grid(photo_run, tmp_path):
    from selfsup.report import write_report

    photos, run = photo_run
    for test in (None, str(photos)):  # the run's own data, then --test with a plain folder
        page = write_report(run, tmp_path / "r.html", test=test)
        html = page.read_text()
        assert "k-means cluster" in html and "Nearest neighbours" in html and "no labels" in html
        assert "needs class sub-folders" not in html
        assert html.count("<img") == 3  # curves, map, grid (no kNN without --val)
        for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
            assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Training-data embeddings" in write_report(run, tmp_path / "a.html").read_text()
    assert "Test embeddings" in html


@pytest.mark.integration
def test_report_summary_is_readable(photo_run, tmp_path):
    import json

    from selfsup.report import write_report

    _, run = photo_run
    summary = json.loads((run / "summary.json").read_text())
    summary.update({"final_loss": 3.206101655960083, "budget_sec_per_step": 0.123456789, "budget_reserve_s": 4.5,
                    "time_budget_min": 2.0, "wall_time_s": 243.4567})
    (run / "summary.json").write_text(json.dumps(summary))
    html = write_report(run, tmp_path / "r.html").read_text()
    table = html[html.index("<h2>Summary</h2>"):html.index("<h2>Configuration</h2>")]
    assert "3.206" in table and "3.2061" not in table
    assert "budget_sec_per_step" not in table and "budget_reserve" not in table and "0.1234" not in table
    assert "4 min 3 s" in table and "2 min" in table
    assert not re.search(r"\d\.\d{5,}", table), "no raw floats"


def test_knn_plot_needs_two_points_and_curves_show_every_logged_step():
    import matplotlib

    matplotlib.use("Agg")
    from selfsup.report import curves_figure, knn_figure

    assert knn_figure([{"eval": "knn", "epoch": 2, "knn_top1": 41.0}]) is None
    assert knn_figure([{"eval": "knn", "epoch": e, "knn_top1": 40.0 + e} for e in (1, 2)]) is not None
    assert curves_figure([]) is None
    assert curves_figure([{"step": s, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 32)]) is not None


@pytest.mark.integration
def test_label_free_report_renders_in_headless_chromium(photo_run, chromium, tmp_path):
    from selfsup.report import write_report

    photos, run = photo_run
    page = write_report(run, tmp_path / "report.html", test=str(photos))
    n_imgs = page.read_text().count("<img")
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
           "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert n_imgs == 3 and f"<title>ok:{n_imgs}</title>" in dom.stdout
    assert not [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln]
