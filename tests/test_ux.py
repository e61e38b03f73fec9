"""Conventions of the field: --version, bare help, real defaults, example configs, -q/-v, the end-of-run summary."""

import argparse
import re
from pathlib import Path

import pytest

from .helpers import make_class_folder

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    from selfsup import __version__
    from selfsup.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"selfsup {__version__}"


def test_bare_selfsup_prints_help_and_exits_0(capsys):
    from selfsup.cli import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: selfsup") and "pretrain" in out and "export" in out
    assert main(["eval"]) == 0 and "PROTOCOL" in capsys.readouterr().out


def _all_parsers():
    from selfsup.cli import build_parser

    todo = [("selfsup", build_parser())]
    while todo:
        name, p = todo.pop()
        yield name, p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo.extend((f"{name} {k}", v) for k, v in a.choices.items())


def test_help_shows_real_defaults_and_every_flag_has_help():
    seen = set()
    for name, p in _all_parsers():
        text = p.format_help()
        assert "(default: None)" not in text, name
        assert "(default: False)" not in text and "(default: )" not in text, name
        assert not re.search(r"\(default: -?\d+\.\d{5,}", " ".join(text.split())), (name, "an unreadable default")
        for a in p._actions:
            if a.option_strings and a.help != argparse.SUPPRESS:
                assert a.help, (name, a.option_strings, "has no help text")
                seen.add((name.split()[1] if " " in name else name, a.option_strings[-1]))
                if name.startswith("selfsup pretrain") and a.option_strings[-1] in ("--epochs", "--seed"):
                    assert a.help and "default" in a.help
                if name.startswith("selfsup eval") and a.option_strings[-1] in ("--k", "--epochs"):
                    assert a.help, (name, a.option_strings)
    assert ("eval", "--k") in seen


@pytest.mark.parametrize("proto", ["knn", "linear", "finetune", "fewshot", "retrieval", "clustering",
                                   "diagnostics", "all"])
def test_every_eval_protocol_has_the_same_core_flags(proto):
    parsers = dict(_all_parsers())
    flags = {s for a in parsers[f"selfsup eval {proto}"]._actions for s in a.option_strings}
    assert {"--checkpoint", "--train", "--test", "--out", "--device", "--batch-size", "--precision",
            "--no-baselines", "--json", "--no-cache", "-q", "-v"} <= flags


def test_pretrain_help_points_at_example_configs_that_exist():
    parsers = dict(_all_parsers())
    text = parsers["selfsup pretrain"].format_help()
    named = set(re.findall(r"configs/([\w.-]+\.yaml)", text))
    assert named, "pretrain --help names an example config"
    for name in named:
        assert (ROOT / "configs" / name).is_file(), name


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_loads(path):
    from selfsup.config import PretrainConfig, apply_overrides, from_dict, load_yaml
    from selfsup.config.presets import config_file_layer
    from selfsup.methods import registry

    layer = load_yaml(path)
    cfg = apply_overrides(PretrainConfig(), config_file_layer(layer, None), str(path))
    spec = registry()[cfg.method["name"]]
    from_dict(spec.config_cls, {k: v for k, v in cfg.method.items() if k != "name"})  # every field exists
    assert cfg.data.image_size >= 16 and cfg.train.batch_size > 0
    assert path.read_text().startswith("#"), "each example says what it is for"
    assert "selfsup pretrain --config configs/" + path.name in path.read_text(), "and how to run it"


def test_at_least_three_example_configs():
    names = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {"cifar10_simclr.yaml", "photos_simclr.yaml", "mnist_byol.yaml"} <= names


def test_backbones_prints_plain_text(capsys):
    from selfsup.cli import main

    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "resnet18" in out and "cnn-compact" in out
    assert "|" not in out and "``" not in out and "---" not in out and "**" not in out


# ------------------------------------------------------------------------------------------ verbosity


@pytest.mark.integration
@pytest.mark.parametrize("flags,config_shown,summary_shown", [([], False, True), (["-v"], True, True),
                                                              (["-q"], False, False)])
def test_config_dump_only_with_v_and_summary_unless_q(tmp_path, capsys, flags, config_shown, summary_shown):
    from selfsup import console
    from selfsup.cli import main

    data = make_class_folder(tmp_path / "d", classes=2, per_class=6)
    try:
        assert main(["pretrain", "--data", str(data), "--val", str(data), "--method", "simclr", "--epochs", "1",
                     "--batch-size", "6", "--out", str(tmp_path / "run"), "--image-size", "16", "--backbone",
                     "cnn-compact", "--set", "backbone.width=4", "--set", "train.threads=1", *flags]) == 0
    finally:
        console.set_verbosity(console.NORMAL)
    err = capsys.readouterr().err
    assert ("%|" in err) == summary_shown, "-q draws no progress bar (decoding, training or features)"
    assert ("resolved config:" in err) == config_shown
    assert ("next:" in err and "selfsup report" in err) == summary_shown
    assert ("selfsup pretrain: simclr" in err) == summary_shown, "-q drops the header too"
    if summary_shown:
        assert "(1.0 epochs)" in err and "raw pixels" in err
        assert f"selfsup eval all --checkpoint {tmp_path / 'run'}" in err


@pytest.mark.integration
def test_the_progress_bar_runs_against_the_clock_under_a_time_budget(tmp_path, capsys):
    from selfsup.cli import main

    data = make_class_folder(tmp_path / "d", classes=2, per_class=6)
    assert main(["pretrain", "--data", str(data), "--method", "simclr", "--time-budget", "0.1", "--batch-size", "6",
                 "--out", str(tmp_path / "run"), "--image-size", "16", "--backbone", "cnn-compact",
                 "--set", "backbone.width=4", "--set", "train.threads=1", "--set", "train.log_every=1"]) == 0
    err = capsys.readouterr().err
    bars = [ln for ln in re.split(r"[\r\n]", err) if "s of the budget" in ln]
    assert bars, err
    assert all(re.search(r"/6 s of the budget", ln) for ln in bars)  # 0.1 min = 6 s: the total never jumps
    assert any(re.search(r"step \d+/\d+, loss=", ln) for ln in bars)
    assert not any("/1000000000" in ln for ln in bars), "the placeholder total before the first fit is not shown"


# ------------------------------------------------------------------------------------------ summary


def test_end_of_run_text_compares_with_the_baseline():
    from selfsup.summary import fmt_duration, fmt_number, format_end_of_run

    s = {"method": "simclr", "backbone": "cnn-compact", "steps": 31, "epochs_completed": 2.58, "wall_time_s": 243.2,
         "images_per_s": 123.4, "knn_top1": 41.08, "knn_baselines": {"raw pixels": 41.25}}
    text = format_end_of_run(s, "runs/a", data="photos", val="val dir")
    assert "31 steps (2.6 epochs) in 4 min 3 s" in text
    assert "raw pixels score 41.25%: not beaten yet" in text
    assert "selfsup eval all --checkpoint runs/a --train photos --test 'val dir'" in text
    assert "selfsup report runs/a" in text and "selfsup embed --checkpoint runs/a --data photos" in text
    unlabelled = format_end_of_run(s, "runs/a", data="photos", val="v", data_labelled=False)
    assert "selfsup eval" not in unlabelled and "selfsup report runs/a" in unlabelled
    s["knn_top1"] = 55.0
    assert "+13.75 points over raw pixels (41.25%)" in format_end_of_run(s, "runs/a", data="d", val="v")
    assert fmt_number(3.206101655960083) == "3.206" and fmt_number(12000) == "12,000"
    assert fmt_duration(5.04) == "5.0 s" and fmt_duration(3725) == "1 h 02 min"


def test_pixel_knn_baseline_matches_eval_and_is_cached(tmp_path, monkeypatch):
    import torch

    from selfsup.data import open_dataset
    from selfsup.eval.features import raw_pixels
    from selfsup.eval.knn import knn_accuracy
    from selfsup.summary import pixel_knn_baseline

    tr = open_dataset(str(make_class_folder(tmp_path / "tr", classes=3, per_class=6)), 8)
    te = open_dataset(str(make_class_folder(tmp_path / "te", classes=3, per_class=3, seed=1)), 8)
    got = pixel_knn_baseline(tr, te, k=5, temperature=0.1)
    ptr = raw_pixels(tr.images)
    mean = ptr.mean(0)
    want = knn_accuracy(ptr - mean, torch.tensor(tr.labels), raw_pixels(te.images) - mean, torch.tensor(te.labels),
                        k=5, temperature=0.1, num_classes=3)["top1"]
    assert got == pytest.approx(want)
    import selfsup.eval.knn as K

    monkeypatch.setattr(K, "knn_accuracy", lambda *a, **k: pytest.fail("recomputed"))
    assert pixel_knn_baseline(tr, te, k=5, temperature=0.1) == pytest.approx(want)  # from the cache
    assert pixel_knn_baseline(tr, te, k=7, temperature=0.1, max_macs=1) is None  # too big and not cached


# ------------------------------------------------------------------------------------------ README


def readme_quick_start():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [ln.split("  #", 1)[0].strip() for ln in block.strip().splitlines() if ln.strip()]


def test_readme_quick_start_is_five_selfsup_commands():
    lines = readme_quick_start()
    assert len(lines) == 5 and all(ln.startswith("selfsup ") for ln in lines)
    parsers = dict(_all_parsers())
    import shlex

    for ln in lines:  # every line parses with today's CLI
        argv = shlex.split(ln)[1:]
        assert "selfsup " + argv[0] in parsers, ln
        assert callable(parsers["selfsup"].parse_args(argv).func), ln


@pytest.mark.integration
def test_datasets_export_flat_gives_an_unlabelled_folder(tmp_path, capsys):
    from selfsup.cli import main
    from selfsup.data import open_dataset

    assert main(["datasets", "--export", "builtin:synthetic:test", str(tmp_path / "pics"), "--flat"]) == 0
    assert "wrote 100 images" in capsys.readouterr().out
    assert not [p for p in (tmp_path / "pics").iterdir() if p.is_dir()]
    ds = open_dataset(str(tmp_path / "pics"), 16, progress=False)
    assert len(ds) == 100 and ds.labels is None


@pytest.mark.slow
def test_readme_quick_start_runs_verbatim(tmp_path):
    """The README's quick start, line by line, in an empty folder (`selfsup` = this checkout's CLI)."""
    import os
    import shlex
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SELFSUP_CACHE": str(tmp_path / "cache")}
    for ln in readme_quick_start():
        r = subprocess.run([sys.executable, "-m", "selfsup", *shlex.split(ln)[1:]], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, (ln, r.stderr[-2000:])
    assert (tmp_path / "runs/photos/report.html").is_file()
    assert "checker_00000.png" in r.stdout


@pytest.mark.integration
def test_pretrain_json_prints_the_summary(tmp_path, capsys):
    import json

    from selfsup.cli import main

    data = make_class_folder(tmp_path / "d", classes=2, per_class=6)
    assert main(["pretrain", "--data", str(data), "--method", "simclr", "--epochs", "1", "--batch-size", "6",
                 "--out", str(tmp_path / "run"), "--image-size", "16", "--backbone", "cnn-compact", "--set",
                 "backbone.width=4", "--set", "train.threads=1", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads((tmp_path / "run" / "summary.json").read_text()) and out["steps"] == 2


def test_readme_results_are_one_number_per_cell_without_lab_notes():
    text = (ROOT / "README.md").read_text()
    results = text.split("## Results", 1)[1].split("\n## ", 1)[0]
    for word in ("failed", "target", "not met", "TODO", "2026-"):
        assert word not in results, word
    tables: list[list[list[str]]] = []
    previous = ""
    for line in results.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            if not set(line) <= set("|-: "):
                tables[-1].append([c.strip().replace("**", "") for c in line.strip("|").split("|")])
        previous = line
    assert len(tables) == 3
    values = 0
    for header, *body in tables:
        cols = [i for i, h in enumerate(header) if h in ("selfsup", "raw pixels", "random encoder", "lightly")]
        for row in body:
            for i in cols or range(len(row)):  # the method zoo: every cell is a score
                values += 1
                assert re.fullmatch(r"[\d,.]+ ?(%|pairs/s|µs)?|–", row[i]), row[i]  # one number (and a unit)
    assert values >= 30
    assert "## License" in text and "Apache-2.0" in text and (ROOT / "LICENSE").is_file()
    assert "make test" in text and "make demo" in text and "pip install ." in text
    assert (ROOT / "docs" / "report.png").is_file() and "docs/report.png" in text
