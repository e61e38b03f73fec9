"""CIFAR-10 backdoor table: a clean victim + Noisy Alignment, SSL-Backdoor and CTRL, every arm the same fixed steps.

One command runs the table (issue 25, "What it must show" 1)::

    .venv/bin/python benchmarks/bench_security.py                      # the full table (<= 150 CPU-minutes)
    .venv/bin/python benchmarks/bench_security.py --defense --decree   # plus PatchSearch and DECREE (longer)
    .venv/bin/python benchmarks/bench_security.py --rates 0.01,0.1 --attacks noisy-alignment  # a rate curve

Every pretraining run (the clean encoder, one victim per attack) takes exactly ``--steps`` optimizer steps at
``--batch-size``, so the arms are comparable; no time budget. Per attack the table reports clean accuracy
(CA) and attack success rate (ASR) of a linear probe on the victim, the SAME trigger's ASR on the clean
encoder, the mechanism count (training pairs in which the attack's mechanism occurred, counted in the loop,
with its Monte-Carlo expectation) and the trigger->target cosine on both encoders.

Defaults and why:
- victim SimSiam (``--method simsiam``; Noisy Alignment's strongest published victim, 97.1% ASR on ImageNet-100;
  ``--method mocov2`` is the other, 84.8%), backbone cnn-compact width 32 (the CPU preset's backbone), 32 px,
  the method's own views (crop scale 0.2-1) without blur and without the low-resolution phase (see
  :func:`selfsup.security.audit.victim_config`);
- poison rate 10% of the training set (``--poison-rate 0.1``: 5,000 poisons from distinct images), target class
  airplane (the official NA CIFAR-10 checkpoint's target). The papers poison 0.5% (NA, ImageNet-100) to 1%
  (CTRL, CIFAR-10) and train for hundreds of epochs; a CPU table trains for about 3 epochs, and at 1% the NA
  mechanism occurred in 47 training pairs in a 300-step pilot (benchmarks/RESULTS.md), so ten times the rate
  gives every attack ten times the chances within the same budget;
- ``--steps 600`` at batch 256 (about 3 epochs): SimSiam on cnn-compact width 32 trains at about 120 two-view
  images/s in fp32 on a 2-core AVX2 host (about 4x that with native bf16), so 4 runs x 600 x 256 / 120 s is
  about 85 minutes of pretraining; with 3 poisoned folders, cache builds, features and probes the table fits
  150 CPU-minutes there (``wall_minutes`` in the table states what it took).

Data: CIFAR-10 class folders unpacked from ``../shared/data/cifar10-jpg.tar.gz`` (``common.ensure_cifar``), or
``--train DIR --test DIR`` (any labelled class folders: the smoke test uses a few synthetic images).
Writes ``--work/table.json`` and its section of RESULTS.md (``--render`` rebuilds it from the JSON; this file
does not run on import).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# published numbers to print beside ours (each paper's own protocol; see the render notes)
PUBLISHED = {
    "noisy-alignment": "ImageNet-100, 0.5% poisons, ResNet-18: ASR 97.1 (SimSiam) / 84.8 (MoCo v2) "
                       "(third-party summary of Chen, Gui et al. ICCV 2025; check the paper's table)",
    "ssl-backdoor": "ImageNet-100, MoCo v2 / BYOL, ResNet-18: reported as targeted false positives on the target "
                    "class, not as ASR (Saha et al. CVPR 2022)",
    "ctrl": "abstract: <= 1% poisons, ASR >= 99% (Li et al. ICCV 2023; CIFAR-10 SimCLR 800 epochs in the code)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of EVERY pretraining run")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--work", default="/tmp/selfsup-bench-security")
    ap.add_argument("--train", default=None, help="labelled class folders (default: CIFAR-10 train)")
    ap.add_argument("--test", default=None, help="labelled class folders (default: CIFAR-10 test)")
    ap.add_argument("--target", default="airplane")
    ap.add_argument("--poison-rate", type=float, default=0.1)
    ap.add_argument("--rates", default=None, help="comma-separated poison rates: a rate curve instead of one rate")
    ap.add_argument("--method", default="simsiam")
    ap.add_argument("--backbone", default="cnn-compact")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--attacks", default="noisy-alignment,ssl-backdoor,ctrl")
    ap.add_argument("--preset", default="cpu-32px", help="CPU preset under every pretraining run ('' for none)")
    ap.add_argument("--defense", action="store_true", help="PatchSearch on the NA and SSL-Backdoor victims + retrain")
    ap.add_argument("--decree", action="store_true", help="DECREE's verdict on every victim and the clean encoder")
    ap.add_argument("--render", action="store_true", help="only rebuild the RESULTS.md section from --work/table.json")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.poison_rate]
    work = Path(args.work)
    if args.render:
        publish(json.loads((work / "table.json").read_text()), args)
        return
    rows = run(args, attacks, rates, work)
    common.write_text(work / "table.json", json.dumps(rows, indent=2, default=str))
    publish(rows, args)


def run(args: argparse.Namespace, attacks: list[str], rates: list[float], work: Path) -> dict[str, Any]:
    from selfsup.security.audit import AuditConfig, backdoor_audit, run_pretrain
    from selfsup.security.poison import PoisonSpec

    t0 = time.time()
    work.mkdir(parents=True, exist_ok=True)
    if args.train and args.test:
        train, test = args.train, args.test
    else:
        root = common.ensure_cifar()
        if root is None:
            raise SystemExit(f"{common.CIFAR_TAR} not found; this benchmark needs the CIFAR-10 archive in ../shared/data")
        train, test = str(root / "train"), str(root / "test")
    base = work / f"run-{time.strftime('%Y%m%d-%H%M%S')}"

    # The LR schedule (warm-up + cosine) is fitted to whole epochs, so epochs = the fewest whole epochs that hold
    # --steps steps of the clean set; max_steps then ends every run after exactly --steps steps (a poisoned set
    # is at most a few % larger: its schedule ends at the same epoch, a few steps later). A ceiling such as
    # 10,000 epochs would keep every run inside the warm-up.
    from selfsup.data import open_dataset

    n_clean = len(open_dataset(train, args.image_size, cache_dir=str(work / "cache"), progress=False))
    epochs = max(1, math.ceil(args.steps / max(1, n_clean // args.batch_size)))

    def cfg(name: str) -> AuditConfig:
        return AuditConfig(train=train, test=test, out=str(base / name), image_size=args.image_size,
                           method=args.method, backbone=args.backbone, width=args.width, epochs=epochs,
                           batch_size=args.batch_size, max_steps=args.steps, device=args.device, threads=args.threads,
                           cache_dir=str(work / "cache"), preset=args.preset or None)

    print(f"{1 + len(attacks) * len(rates)} pretraining runs of {args.steps} steps at batch {args.batch_size}",
          flush=True)
    clean = run_pretrain(cfg("clean"), train, base / "clean")
    rows: dict[str, Any] = {"steps": args.steps, "batch_size": args.batch_size, "train": train, "test": test,
                            "method": args.method, "backbone": args.backbone, "width": args.width,
                            "preset": args.preset, "target": args.target, "rates": rates, "attacks": attacks,
                            "clean_steps": clean[1]["steps"], "results": []}
    for rate in rates:
        for attack in attacks:
            r = backdoor_audit(cfg(f"{attack}-{rate:g}"), args.target, PoisonSpec(attack=attack, rate=rate),
                               defense=args.defense and attack != "ctrl", decree=args.decree, clean_run=clean)
            r["rate"] = rate
            rows["results"].append(r)
            common.write_text(work / "table.partial.json", json.dumps(rows, indent=2, default=str))
            print(f"{attack} @ {rate:g}: victim ASR {r['victim']['asr']:.1f} / clean-encoder ASR "
                  f"{r['clean']['asr']:.1f}; mechanism {r['mechanism']['mechanism_pairs']}", flush=True)
    rows["wall_minutes"] = (time.time() - t0) / 60
    rows["command"] = common.command_line()
    rows["finished"] = time.strftime("%Y-%m-%d %H:%M")
    rows["peak_rss_mb"] = round(common.peak_rss_mb())
    return rows


def publish(rows: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the section and (unless --no-write) replace it in RESULTS.md."""
    text = render(rows)
    print(text)
    if not args.no_write:
        common.update_section(section_title(rows), text)


def section_title(rows: dict[str, Any]) -> str:
    """The RESULTS.md section of a table: one per victim and step budget (a budget point never overwrites the
    table of another budget)."""
    return f"Backdoor table: CIFAR-10, {rows['method']} victim, {rows['steps']} steps (bench_security.py)"


def _diverted(reading: dict[str, Any]) -> str:
    d = reading.get("diversion")
    if reading["verdict"] != "diverted" or not d:
        return ""
    return f": {d['class']} {d['victim']:.1f}% (clean {d['clean']:.1f}%)"


def render(rows: dict[str, Any]) -> str:
    out = [common.header({
        "budget": f"every pretraining run {rows['steps']} steps at batch {rows['batch_size']} ({rows['method']}, "
                  f"{rows['backbone']} width {rows['width']}, --preset {rows.get('preset') or 'none'}; no "
                  "low-resolution phase, no blur)",
        "data": f"train {rows['train']}, test {rows['test']}; target class {rows['target']}",
        "wall time": f"{rows['wall_minutes']:.1f} min",
        "measured by": f"`{rows.get('command', '?')}`, finished {rows.get('finished', '?')}, "
                       f"peak RSS {rows.get('peak_rss_mb', '?')} MiB",
        "columns": "CA / ASR: linear probe on clean labels; ASR = triggered non-target test images classified as "
                   "the target (each paper's test trigger); clean-enc. ASR: the same trigger on the clean encoder; "
                   "mechanism: training pairs in which the attack's mechanism occurred (counted in the loop; "
                   "Monte-Carlo expectation in brackets); cos: mean cosine of triggered non-target test features "
                   "to the target class's mean feature, victim / clean encoder; reading: "
                   "selfsup.security.reading.audit_reading (took / partial / diverted / not-learned / no-chance), with "
                   "the non-target class whose share of the triggered images grew most when it grew 20 points",
    }), "", "| attack | rate | poisons | CA % | ASR % | clean-enc. ASR % | mechanism pairs | cos victim / clean | "
        "reading |", "|---|---|---|---|---|---|---|---|---|"]
    from selfsup.security.reading import audit_reading

    for r in rows["results"]:
        m = r["mechanism"]
        reading = r.get("reading") or audit_reading(r)
        exp = m.get("expected", {})
        e = f" ({exp['mechanism_pairs']:.0f})" if "mechanism_pairs" in exp else ""
        out.append(f"| {r['attack']} | {r['rate']:g} | {r['n_poison']} | {r['victim']['ca']:.1f} | "
                   f"{r['victim']['asr']:.1f} | {r['clean']['asr']:.1f} | {m['mechanism_pairs']}{e} of "
                   f"{m['poison_pairs']} | {r['victim']['cos_trigger_target']:.3f} / "
                   f"{r['clean']['cos_trigger_target']:.3f} | {reading['verdict']}{_diverted(reading)} |")
    for r in rows["results"]:
        if "defense" in r:
            d = r["defense"]
            out.append(f"- {r['attack']}: PatchSearch flagged {d['flagged']} (precision {d['precision']:.1f}%, recall "
                       f"{d['recall']:.1f}%; scores alone, top {d['scores_only']['flag_fraction']:.0%}: precision "
                       f"{d['scores_only']['precision']:.1f}%, recall {d['scores_only']['recall']:.1f}%); after "
                       f"retraining CA {d['after']['ca']:.1f}%, ASR {d['after']['asr']:.1f}%")
        if "decree" in r:
            d = r["decree"]
            out.append(f"- {r['attack']}: DECREE PL1 victim {d['victim']['pl1']:.3f} ({d['victim']['verdict']}), "
                       f"clean {d['clean']['pl1']:.3f} ({d['clean']['verdict']}), threshold {d['victim']['threshold']}")
    out.append("")
    out += [f"- published ({a}): {PUBLISHED[a]}" for a in rows["attacks"] if a in PUBLISHED]
    return "\n".join(out)


if __name__ == "__main__":
    main()
