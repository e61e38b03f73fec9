"""Every subcommand against a table of bad inputs: exit 2, one line naming the value or file, no traceback,
nothing left behind. Plus a property test: random ``--set`` values for every config field never crash.

The table drives ``selfsup.cli.main`` in-process. "Nothing left behind" compares a snapshot of every file
under the test's folders before and after (the run folder's hidden ``.selfsup.lock`` files, which the OS lock
needs, are not outputs).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from selfsup.cli import main

from .helpers import make_class_folder

TINY = ["--image-size", "16", "--backbone", "cnn-compact", "--set", "backbone.width=4", "--set", "train.threads=1",
        "--no-progress"]


@dataclass
class Env:
    root: Path  # this test's folder
    data: Path  # a labelled 3-class folder (shared)
    run: Path  # a finished tiny run folder (shared, never modified)

    @property
    def out(self) -> Path:
        return self.root / "out"

    def file(self, name: str, content: bytes | str = b"hello, not what you expected\n") -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p

    def folder(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits from parse_args
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad-inputs")
    data = make_class_folder(root / "data", classes=3, per_class=4)
    run = root / "run"
    os.environ.setdefault("SELFSUP_CACHE", str(root / "cache"))
    code = main(["pretrain", "--data", str(data), "--method", "simclr", "--epochs", "1", "--batch-size", "6",
                 "--out", str(run), *TINY])
    assert code == 0
    return data, run


def P(e: Env, *extra: str) -> list[str]:
    """A pretrain command that would run, plus ``extra``."""
    return ["pretrain", "--data", str(e.data), "--method", "simclr", "--batch-size", "6", "--out", str(e.out),
            *TINY, *extra]


def E(e: Env, proto: str, *extra: str, checkpoint: str | None = None) -> list[str]:
    return ["eval", proto, "--checkpoint", checkpoint or str(e.run), "--train", str(e.data), "--test", str(e.data),
            "--no-baselines", *extra]


def _index(e: Env) -> Path:
    from selfsup.embed import write_embeddings

    p = e.root / "idx.safetensors"
    write_embeddings(p, np.ones((3, 16), np.float32), ["a.png", "b.png", "c.png"], None, [],
                     source=str(e.run.resolve()))
    return p


def _truncated_checkpoint(e: Env) -> str:
    blob = (e.run / "checkpoint.pt").read_bytes()
    return str(e.file("half.pt", blob[: len(blob) // 2]))


def _bad_encoder_json(e: Env) -> str:
    d = e.folder("enc")
    shutil.copy(e.run / "encoder.safetensors", d / "encoder.safetensors")
    (d / "encoder.json").write_text('{"backbone": {"name": "cnn-compact", "width": 4}, "image_')
    return str(d / "encoder.safetensors")


def _fake_run(e: Env, **files: str) -> Path:
    d = e.folder("fakerun")
    (d / "config.yaml").write_text("out: x\n")
    for name, text in files.items():
        (d / name.replace("_", ".")).write_text(text)
    return d


def _resume_copy(e: Env, checkpoint: bytes | None = None) -> Path:
    d = e.root / "resumed"
    shutil.copytree(e.run, d)
    if checkpoint is not None:
        (d / "checkpoint.pt").write_bytes(checkpoint)
    return d


Case = tuple[str, Callable[[Env], list[str]], Callable[[Env], str]]
# (id, argv, a text the one error line must contain)
CASES: list[Case] = [
    # ---- pretrain: every flag and --set value goes through the config validation
    ("epochs-text-flag", lambda e: P(e, "--epochs", "ten"), lambda e: "'ten'"),
    ("epochs-text-set", lambda e: P(e, "--set", "train.epochs=ten"), lambda e: "train.epochs='ten'"),
    ("epochs-zero", lambda e: P(e, "--epochs", "0"), lambda e: "train.epochs=0"),
    ("width-zero", lambda e: P(e, "--set", "backbone.width=0"), lambda e: "backbone.width=0"),
    ("log-every-zero", lambda e: P(e, "--set", "train.log_every=0"), lambda e: "train.log_every=0"),
    ("lr-negative", lambda e: P(e, "--lr", "-1"), lambda e: "optim.lr=-1.0"),
    ("lr-nan", lambda e: P(e, "--lr", "nan"), lambda e: "optim.lr=nan"),
    ("lr-inf", lambda e: P(e, "--lr", "inf"), lambda e: "optim.lr=inf"),
    ("lr-set-text", lambda e: P(e, "--set", "optim.lr=fast"), lambda e: "optim.lr='fast'"),
    ("max-steps-zero", lambda e: P(e, "--max-steps", "0"), lambda e: "--max-steps"),
    ("max-steps-negative", lambda e: P(e, "--max-steps", "-5"), lambda e: "train.max_steps=-5"),
    ("time-budget-zero", lambda e: P(e, "--time-budget", "0"), lambda e: "--time-budget"),
    ("time-budget-negative", lambda e: P(e, "--time-budget", "-1"), lambda e: "train.time_budget=-1.0"),
    ("time-budget-nan", lambda e: P(e, "--time-budget", "nan"), lambda e: "train.time_budget=nan"),
    ("batch-size-one", lambda e: P(e, "--batch-size", "1"), lambda e: "train.batch_size=1"),
    ("image-size-zero", lambda e: P(e, "--image-size", "0"), lambda e: "data.image_size=0"),
    ("betas-one-value", lambda e: P(e, "--set", "optim.betas=0.9"), lambda e: "optim.betas"),
    ("betas-out-of-range", lambda e: P(e, "--set", "optim.betas=0.9,1.5"), lambda e: "optim.betas=1.5"),
    ("bool-not-bool", lambda e: P(e, "--set", "train.compile=maybe"), lambda e: "train.compile='maybe'"),
    ("unknown-field", lambda e: P(e, "--set", "train.nope=1"), lambda e: "nope"),
    ("unknown-section", lambda e: P(e, "--set", "nosection=1"), lambda e: "nosection"),
    ("section-as-value", lambda e: P(e, "--set", "train=1"), lambda e: "train=1"),
    ("set-without-equals", lambda e: P(e, "--set", "noequals"), lambda e: "noequals"),
    ("set-empty-key", lambda e: P(e, "--set", "=3"), lambda e: "'=3'"),
    ("method-temperature-zero", lambda e: P(e, "--set", "method.temperature=0"), lambda e: "method.temperature=0"),
    ("method-field-text", lambda e: P(e, "--set", "method.proj_out_dim=big"), lambda e: "method.proj_out_dim='big'"),
    ("method-unknown-field", lambda e: P(e, "--set", "method.bogus=1"), lambda e: "bogus"),
    ("method-unknown", lambda e: P(e, "--method", "nope"), lambda e: "'nope'"),
    ("backbone-unknown", lambda e: P(e, "--backbone", "nope"), lambda e: "'nope'"),
    ("device-unknown", lambda e: P(e, "--device", "gpu"), lambda e: "'gpu'"),
    ("weight-decay-negative", lambda e: P(e, "--set", "optim.weight_decay=-1"), lambda e: "optim.weight_decay=-1.0"),
    ("seed-negative", lambda e: P(e, "--seed", "-1"), lambda e: "train.seed=-1"),
    ("threads-zero", lambda e: P(e, "--set", "train.threads=0"), lambda e: "train.threads=0"),
    ("low-res-fraction", lambda e: P(e, "--set", "data.low_res_fraction=1.5"), lambda e: "data.low_res_fraction=1.5"),
    ("cache-smaller-than-image", lambda e: P(e, "--set", "data.cache_size=8"), lambda e: "data.cache_size=8"),
    ("precision-choice", lambda e: P(e, "--precision", "fp8"), lambda e: "'fp8'"),
    ("config-missing", lambda e: P(e, "--config", str(e.root / "missing.yaml")), lambda e: "missing.yaml"),
    ("config-not-yaml", lambda e: P(e, "--config", str(e.file("bad.yaml", "a: [1, 2\n"))),
     lambda e: "bad.yaml"),
    ("config-binary", lambda e: P(e, "--config", str(e.file("bin.yaml", b"\xff\xfe\x00\x81garbage"))),
     lambda e: "bin.yaml"),
    ("config-list", lambda e: P(e, "--config", str(e.file("list.yaml", "- 1\n- 2\n"))), lambda e: "list.yaml"),
    ("config-bad-value", lambda e: P(e, "--config", str(e.file("v.yaml", "train:\n  epochs: many\n"))),
     lambda e: "train.epochs='many'"),
    ("data-missing", lambda e: P(e, "--data", str(e.root / "nodata")), lambda e: "nodata"),
    ("data-unprintable-name", lambda e: P(e, "--data", str(e.root / "bad\udcffname")), lambda e: "name"),
    ("out-is-a-file", lambda e: [*P(e), "--out", str(e.file("taken"))], lambda e: "taken"),
    ("out-inside-a-file", lambda e: [*P(e), "--out", str(e.file("plain") / "run")], lambda e: "plain"),
    ("resume-nothing", lambda e: [*P(e), "--out", str(e.folder("empty")), "--resume"], lambda e: "--resume"),
    ("resume-other-data", lambda e: ["pretrain", "--out", str(_resume_copy(e)), "--resume", "--no-progress",
                                     "--data", str(make_class_folder(e.root / "other", classes=2, per_class=4))],
     lambda e: "other"),
    ("resume-text-checkpoint", lambda e: ["pretrain", "--out", str(_resume_copy(e, b"just text\n")), "--resume",
                                          "--no-progress"], lambda e: "checkpoint.pt"),
    # ---- eval
    ("eval-text-checkpoint", lambda e: E(e, "knn", checkpoint=str(e.file("notes.pt", "text, not a checkpoint\n"))),
     lambda e: "notes.pt"),
    ("eval-empty-checkpoint", lambda e: E(e, "knn", checkpoint=str(e.file("empty.pt", b""))), lambda e: "empty.pt"),
    ("eval-truncated-checkpoint", lambda e: E(e, "knn", checkpoint=_truncated_checkpoint(e)), lambda e: "half.pt"),
    ("eval-missing-checkpoint", lambda e: E(e, "knn", checkpoint=str(e.root / "nope.pt")), lambda e: "nope.pt"),
    ("eval-broken-encoder-json", lambda e: E(e, "knn", checkpoint=_bad_encoder_json(e)), lambda e: "encoder.json"),
    ("eval-k-zero", lambda e: E(e, "knn", "--k", "0"), lambda e: "--k"),
    ("eval-temperature-negative", lambda e: E(e, "knn", "--temperature", "-1"), lambda e: "'-1'"),
    ("eval-epochs-zero", lambda e: E(e, "linear", "--epochs", "0"), lambda e: "--epochs"),
    ("eval-batch-size-zero", lambda e: E(e, "knn", "--batch-size", "0"), lambda e: "--batch-size"),
    ("eval-all-out-is-a-folder", lambda e: E(e, "all", "--out", str(e.folder("adir"))), lambda e: "adir"),
    ("eval-all-out-inside-a-file", lambda e: E(e, "all", "--out", str(e.file("f") / "eval.json")), lambda e: "f"),
    ("eval-all-bad-labels", lambda e: E(e, "all", "--labels", "200%", "--out", str(e.out)), lambda e: "200%"),
    ("eval-fewshot-bad-shots", lambda e: E(e, "fewshot", "--k-shots", "a,b"), lambda e: "'a'"),
    ("eval-finetune-bad-blocks", lambda e: E(e, "finetune", "--blocks", "x"), lambda e: "'x'"),
    ("eval-all-bad-skip", lambda e: E(e, "all", "--skip", "nope", "--out", str(e.out)), lambda e: "nope"),
    ("eval-bad-device", lambda e: E(e, "retrieval", "--device", "gpu"), lambda e: "'gpu'"),
    # ---- embed
    ("embed-out-is-a-folder", lambda e: ["embed", "--checkpoint", str(e.run), "--data", str(e.data), "--out",
                                         str(e.folder("emb.npz"))], lambda e: "emb.npz"),
    ("embed-out-suffix", lambda e: ["embed", "--checkpoint", str(e.run), "--data", str(e.data), "--out",
                                    str(e.out) + ".txt"], lambda e: "out.txt"),
    ("embed-batch-size-zero", lambda e: ["embed", "--checkpoint", str(e.run), "--data", str(e.data), "--out",
                                         str(e.out) + ".npz", "--batch-size", "0"], lambda e: "--batch-size"),
    ("embed-text-checkpoint", lambda e: ["embed", "--checkpoint", str(e.file("t.pt", "text")), "--data", str(e.data),
                                         "--out", str(e.out) + ".npz"], lambda e: "t.pt"),
    # ---- search
    ("search-broken-index", lambda e: ["search", "--index", str(e.file("i.safetensors", b"\x08\x00\x00\x00junk")),
                                       "--query", str(e.data)], lambda e: "i.safetensors"),
    ("search-broken-npz", lambda e: ["search", "--index", str(e.file("i.npz", b"PK\x03\x04 not a zip")),
                                     "--query", str(e.data), "--checkpoint", str(e.run)], lambda e: "i.npz"),
    ("search-missing-index", lambda e: ["search", "--index", str(e.root / "no.safetensors"), "--query",
                                        str(e.data)], lambda e: "no.safetensors"),
    ("search-k-zero", lambda e: ["search", "--index", str(_index(e)), "--query", str(e.data), "-k", "0"],
     lambda e: "-k"),
    ("search-missing-query", lambda e: ["search", "--index", str(_index(e)), "--query", str(e.root / "noq.png")],
     lambda e: "noq.png"),
    # ---- report
    ("report-not-a-run-folder", lambda e: ["report", str(e.folder("photos"))], lambda e: "photos"),
    ("report-out-is-a-folder", lambda e: ["report", str(e.run), "--out", str(e.folder("r.html"))],
     lambda e: "r.html"),
    ("report-broken-summary", lambda e: ["report", str(_fake_run(e, summary_json='{"steps": 3'))],
     lambda e: "summary.json"),
    ("report-max-points-zero", lambda e: ["report", str(e.run), "--max-points", "0"], lambda e: "--max-points"),
    # ---- audit
    ("audit-epochs-zero", lambda e: ["audit", "backdoor", "--epochs", "0", "--out", str(e.out)], lambda e: "--epochs"),
    ("audit-out-is-a-file", lambda e: ["audit", "backdoor", "--out", str(e.file("audit-out"))],
     lambda e: "audit-out"),
    ("audit-lr-nan", lambda e: ["audit", "backdoor", "--lr", "nan", "--out", str(e.out)], lambda e: "nan"),
    ("audit-poison-rate", lambda e: ["audit", "backdoor", "--poison-rate", "1.5", "--out", str(e.out)],
     lambda e: "--poison-rate"),
    ("audit-clusters-one", lambda e: ["audit", "unlearnable", "--clusters", "1", "--out", str(e.out)],
     lambda e: "--clusters"),
    ("audit-eps-negative", lambda e: ["audit", "adversarial", "--eps", "-1", "--out", str(e.out)],
     lambda e: "--eps"),
    ("audit-batch-larger-than-data", lambda e: ["audit", "backdoor", "--train", str(e.data), "--test", str(e.data),
                                               "--target", "class0", "--image-size", "16", "--batch-size", "64",
                                               "--out", str(e.out)], lambda e: "--batch-size 64"),
    ("audit-unknown-method", lambda e: ["audit", "backdoor", "--method", "nope", "--out", str(e.out)],
     lambda e: "'nope'"),
    # ---- masks
    ("masks-out-suffix", lambda e: ["masks", "--checkpoint", str(e.run), "--data", str(e.data), "--out",
                                    str(e.out) + ".jpg"], lambda e: "out.jpg"),
    ("masks-num-zero", lambda e: ["masks", "--checkpoint", str(e.run), "--data", str(e.data), "--out",
                                  str(e.out) + ".png", "--num", "0"], lambda e: "--num"),
    ("masks-not-masked-method", lambda e: ["masks", "--checkpoint", str(e.run), "--data", str(e.data), "--out",
                                           str(e.out) + ".png"], lambda e: "simclr"),
    # ---- export
    ("export-text-checkpoint", lambda e: ["export", "--checkpoint", str(e.file("ck.pt", b"just text\n")), "--out",
                                          str(e.out) + ".onnx"], lambda e: "ck.pt"),
    ("export-missing-checkpoint", lambda e: ["export", "--checkpoint", str(e.root / "nope"), "--out",
                                             str(e.out) + ".pt", "--format", "torchscript"], lambda e: "nope"),
    ("export-out-is-a-folder", lambda e: ["export", "--checkpoint", str(e.run), "--out", str(e.folder("outdir"))],
     lambda e: "outdir"),
    # ---- views
    ("views-missing-data", lambda e: ["views", "--data", str(e.root / "nodata"), "--out", str(e.out) + ".png"],
     lambda e: "nodata"),
    ("views-unknown-method", lambda e: ["views", "--data", str(e.data), "--method", "nosuch", "--out",
                                        str(e.out) + ".png"], lambda e: "nosuch"),
    ("views-out-is-a-folder", lambda e: ["views", "--data", str(e.data), "--out", str(e.folder("vdir"))],
     lambda e: "vdir"),
    # ---- demo
    ("demo-minutes-zero", lambda e: ["demo", "--minutes", "0", "--out", str(e.out)], lambda e: "--minutes"),
    ("demo-minutes-nan", lambda e: ["demo", "--minutes", "nan", "--out", str(e.out)], lambda e: "'nan'"),
    ("demo-into-a-foreign-folder", lambda e: ["demo", "--minutes", "1", "--out",
                                              str(e.file("photos/keep.jpg", b"x").parent)], lambda e: "photos"),
    # ---- the listing commands and the parser
    ("methods-unknown-flag", lambda e: ["methods", "--bogus"], lambda e: "--bogus"),
    ("unknown-command", lambda e: ["nope"], lambda e: "'nope'"),
]


def _snapshot(*roots: Path) -> dict[str, bytes]:
    snap = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.name.startswith(".selfsup.lock"):
                continue
            snap[str(p)] = p.read_bytes() if p.is_file() else b"<dir>"
    return snap


def test_the_table_has_at_least_60_kinds_across_every_subcommand():
    from selfsup.cli import COMMANDS

    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
    covered = {c[1](Env(Path("/x"), Path("/d"), Path("/r")))[0] for c in CASES
               if not c[0].startswith(("resume", "search-k", "search-missing-q", "eval-trunc", "eval-broken",
                                       "report-broken", "out-"))}
    assert set(COMMANDS) - {"info"} <= covered | {"info"}
    assert {"methods", "eval", "audit", "demo", "masks", "report", "search", "embed", "pretrain"} <= covered


@pytest.mark.integration  # the shared run folder is trained once per module (about 2 s)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case: Case, shared, tmp_path, capsys):
    name, argv_of, needle_of = case
    data, run = shared
    e = Env(tmp_path, data, run)
    argv = argv_of(e)  # builds this case's fixture files first
    before = _snapshot(tmp_path, run, data)
    code, out, err = run_cli(capsys, argv)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert code == 2, (name, code, err)
    assert len(lines) == 1 and lines[0].startswith("selfsup: error:"), (name, err)
    assert "Traceback" not in err and "internal error" not in err, err
    assert needle_of(e) in lines[0].encode("utf-8", "backslashreplace").decode(), (needle_of(e), lines[0])
    after = _snapshot(tmp_path, run, data)
    assert after == before, (name, sorted(set(after) ^ set(before)))


def test_unprintable_file_names_do_not_crash_printing(tmp_path, capsys):
    import io
    import sys

    from selfsup.cli import _say

    buf = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    _say("selfsup: error: f\udcffé not found", buf)
    buf.seek(0)
    assert buf.read() == "selfsup: error: f\\udcff\\xe9 not found\n"
    assert sys.stderr is not None


def test_internal_errors_ask_for_a_report_and_keep_the_traceback_behind_debug(monkeypatch, capsys):
    import selfsup.cli as cli

    def boom(args):
        raise ZeroDivisionError("a bug")

    parser = cli.build_parser()
    args = parser.parse_args(["datasets"])
    args.func = boom
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args))
    code, _, err = run_cli(capsys, ["datasets"])
    assert code == 1
    assert err.count("\n") == 1 and "internal error: ZeroDivisionError: a bug" in err and "--debug" in err
    assert "please report" in err and "Traceback" not in err
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "datasets"])


class _Fixed:
    def __init__(self, parser, args):
        self.parser, self.args = parser, args

    def parse_args(self, argv):
        if "--debug" in argv:
            self.args.debug = True
        return self.args


def test_os_errors_on_a_named_file_are_one_line(monkeypatch, capsys):
    import selfsup.cli as cli

    def full(args):
        raise OSError(28, "No space left on device", "/data/run/checkpoint.pt")

    parser = cli.build_parser()
    args = parser.parse_args(["datasets"])
    args.func = full
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args))
    code, _, err = run_cli(capsys, ["datasets"])
    assert code == 2 and err == "selfsup: error: /data/run/checkpoint.pt: No space left on device\n"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the crafted file's protocol
def test_unsafe_pickle_message_is_whole_words(tmp_path):
    import pickle

    from selfsup.checkpoint import load_checkpoint
    from selfsup.errors import CheckpointError

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(p)
    msg = str(info.value)
    assert "\n" not in msg and str(p) in msg
    inner = msg[msg.index("(") + 1 : msg.index(")")]
    assert "refuses" in inner and not inner.endswith(("weig", "Weights only load fa"))


# ------------------------------------------------------------------------------------- property test


def _fields() -> list[tuple[str, str]]:
    """(method, key) for every PretrainConfig field (with simclr) and every field of every method's config."""
    from selfsup.config import PretrainConfig
    from selfsup.methods import registry

    out: list[tuple[str, str]] = []
    cfg = PretrainConfig()
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            out += [("simclr", f"{section.name}.{f.name}") for f in dataclasses.fields(value)]
        elif not isinstance(value, dict):
            out.append(("simclr", section.name))
    for name, spec in sorted(registry().items()):
        out += [(name, f"method.{f.name}") for f in dataclasses.fields(spec.config_cls)]
    return out


FIELDS = _fields()
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_numbers = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["0", "-0", "1e309", "nan", "-inf", "true", "null", "[1, 2]", "0.9,0.95", "{}",
                                      "1e-6", "0x10", "1_000", " 3 ", ""]))


@pytest.mark.integration  # ~15 s: 400 random values
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=st.one_of(_text, _numbers))
def test_any_set_value_for_any_field_is_accepted_or_one_line(field, value, capsys, tmp_path):
    method, key = field
    code, out, err = run_cli(capsys, ["pretrain", "--check", "--data", "x", "--out", str(tmp_path / "r"),
                                      "--method", method, "--set", f"{key}={value}"])
    assert code in (0, 2), (method, key, value, code, err)
    assert "Traceback" not in err and "internal error" not in err, (key, value, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("selfsup: error:"), err
    else:
        saved = yaml.safe_load(out)  # --check prints the validated config: every float in it is finite
        def walk(v):
            if isinstance(v, float):
                assert math.isfinite(v), (key, value)
            elif isinstance(v, dict):
                for x in v.values():
                    walk(x)
            elif isinstance(v, list):
                for x in v:
                    walk(x)
        walk(saved)
    assert not (tmp_path / "r").exists()


def test_check_prints_the_validated_config_and_creates_nothing(tmp_path, capsys):
    code, out, err = run_cli(capsys, ["pretrain", "--check", "--data", "x", "--out", str(tmp_path / "r"),
                                      "--set", "method.temperature=0.3", "--set", "train.max_steps=1e1"])
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["method"] == {"name": "simclr", "temperature": 0.3} and cfg["train"]["max_steps"] == 10
    assert not (tmp_path / "r").exists()
    assert json.dumps(cfg)  # plain data


@pytest.mark.integration  # 60+ in-process validations, ~2 s
def test_every_method_and_preset_default_passes_validation(tmp_path, capsys):
    """The rules must not reject a shipped default (else every random value above would be 'refused' too)."""
    from selfsup.config.presets import list_presets
    from selfsup.methods import registry

    for name in sorted(registry()):
        code, _, err = run_cli(capsys, ["pretrain", "--check", "--data", "x", "--out", str(tmp_path / "r"),
                                        "--method", name])
        assert code == 0, (name, err)
        for preset in list_presets():
            code, _, err = run_cli(capsys, ["pretrain", "--check", "--data", "x", "--out", str(tmp_path / "r"),
                                            "--method", name, "--preset", preset])
            assert code == 0, (name, preset, err)
