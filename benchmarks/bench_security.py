"""CIFAR-10 security table under a CPU budget: backdoors (NA, SSL-Backdoor, CTRL) + defense, UAP, unlearnable.

Every pretraining run uses selfsup's ``--time-budget`` with the same share of ``--minutes`` (so every arm gets
the same compute), SimCLR on ``cnn-compact`` by default. Pretraining runs: clean (shared by all rows), one
victim per attack, one retrained after the defense, one on the protected data: ``3 + 3 = 6``; each gets
``minutes * pretrain_share / 6`` minutes, the rest is left for poisoning, features, probes and the attacks.

    .venv/bin/python benchmarks/bench_security.py --minutes 120               # the full table
    .venv/bin/python benchmarks/bench_security.py --minutes 5 --per-class 100 # a smoke-sized version

Data: CIFAR-10 from ``common.ensure_cifar`` (``../shared/data`` unpacked once to /tmp/cifar); ``--per-class N``
uses the first N training images per class (symlinks) for a smaller run. Writes ``--work/table.json`` and its
own section of RESULTS.md (``--render`` rebuilds that section from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def unpack(work: Path) -> Path:
    """CIFAR-10 from the benchmarks' shared location (``common.ensure_cifar``: $SELFSUP_CIFAR or /tmp/cifar)."""
    root = common.ensure_cifar()
    if root is None:
        raise SystemExit(f"{common.CIFAR_TAR} not found; this benchmark needs the CIFAR-10 archive from ../shared/data")
    return root


def subset(data: Path, work: Path, per_class: int | None, split: str) -> str:
    if not per_class:
        return str(data / split)
    out = work / f"{split}_{per_class}"
    if not out.is_dir():
        for cdir in sorted((data / split).iterdir()):
            (out / cdir.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cdir.iterdir())[:per_class]:
                os.symlink(f, out / cdir.name / f.name)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=120.0, help="total CPU budget for the table")
    ap.add_argument("--pretrain-share", type=float, default=0.7, help="share of the budget spent pretraining")
    ap.add_argument("--work", default="/tmp/selfsup-bench-security")
    ap.add_argument("--per-class", type=int, default=None, help="training images per class (default: all 5,000)")
    ap.add_argument("--test-per-class", type=int, default=None, help="test images per class (default: all 1,000)")
    ap.add_argument("--target", default="airplane")
    ap.add_argument("--poison-rate", type=float, default=0.01)
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--backbone", default="cnn-compact")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--attacks", default="noisy-alignment,ssl-backdoor,ctrl")
    ap.add_argument("--preset", default="cpu-32px", help="CPU preset under every pretraining run ('' for none)")
    ap.add_argument("--render", action="store_true", help="only rebuild the RESULTS.md section from --work/table.json")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    if args.render:
        publish(json.loads((Path(args.work) / "table.json").read_text()), attacks, args)
        return

    from selfsup.security.audit import (
        AuditConfig,
        adversarial_audit,
        backdoor_audit,
        run_pretrain,
        unlearnable_audit,
    )
    from selfsup.security.poison import PoisonSpec

    t0 = time.time()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = unpack(work)
    train = subset(data, work, args.per_class, "train")
    test = subset(data, work, args.test_per_class, "test")
    n_runs = 3 + len(attacks)
    per_run = args.minutes * args.pretrain_share / n_runs
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = work / f"run-{stamp}"

    def cfg(name: str) -> AuditConfig:
        return AuditConfig(train=train, test=test, out=str(base / name), image_size=32, method=args.method,
                           backbone=args.backbone, width=args.width, epochs=1000, batch_size=args.batch_size,
                           device=args.device, cache_dir=str(work / "cache"), time_budget=per_run,
                           preset=args.preset or None)

    print(f"budget {args.minutes} min: {n_runs} pretraining runs of {per_run:.2f} min each", flush=True)
    clean = run_pretrain(cfg("clean"), train, base / "clean")
    rows: dict[str, object] = {"minutes": args.minutes, "per_run_minutes": per_run, "train": train, "test": test,
                               "method": args.method, "backbone": args.backbone, "preset": args.preset,
                               "clean_steps": clean[1]["steps"]}
    for attack in attacks:
        rows[attack] = backdoor_audit(cfg(attack), args.target, PoisonSpec(attack=attack, rate=args.poison_rate),
                                      defense=attack == "noisy-alignment", clean_run=clean)
    rows["adversarial"] = adversarial_audit(cfg("adversarial"), encoder=clean[0], other_train="builtin:mnist",
                                            other_test="builtin:mnist:test", steps=100)
    rows["unlearnable"] = unlearnable_audit(cfg("unlearnable"), clean_run=clean)
    rows["wall_minutes"] = (time.time() - t0) / 60
    rows["command"] = common.command_line()
    rows["finished"] = time.strftime("%Y-%m-%d %H:%M")
    rows["peak_rss_mb"] = round(common.peak_rss_mb())
    (work / "table.json").write_text(json.dumps(rows, indent=2, default=str))

    publish(rows, attacks, args)


def publish(rows: dict[str, Any], attacks: list[str], args: argparse.Namespace) -> None:
    """Print the section and (unless --no-write) replace it in RESULTS.md."""
    text = render(rows, attacks, args.target, args.poison_rate)
    print(text)
    if not args.no_write:
        common.update_section(f"Security audit: CIFAR-10, {rows['method']} victim (bench_security.py)", text)


def render(rows: dict[str, Any], attacks: list[str], target: str, rate: float) -> str:
    """The RESULTS.md section: backdoor rows (victim vs the clean run), the defense, the UAP, unlearnable."""
    out = [common.header({
        "budget": f"{rows['minutes']:g} min in all; each of the pretraining runs gets "
                  f"{rows['per_run_minutes']:.2f} min of `--time-budget` ({rows['method']}, {rows['backbone']}, "
                  f"--preset {rows.get('preset', 'cpu-32px') or 'none'}); the clean run took {rows['clean_steps']} steps",
        "data": f"train {rows['train']}, test {rows['test']}; target class {target}, poison rate {rate:g}",
        "wall time": f"{rows['wall_minutes']:.1f} min",
        "measured by": f"`{rows.get('command', '?')}`, finished {rows.get('finished', '?')}, "
                       f"peak RSS {rows.get('peak_rss_mb', '?')} MiB",
        "ASR": "share of triggered non-target test images classified as the target by a linear probe "
               "fitted on clean labels; CA = clean test accuracy of that probe",
    }), "", "| attack | poisons | victim CA % | victim ASR % | clean-run CA % | clean-run ASR % |",
        "|---|---|---|---|---|---|"]
    for attack in attacks:
        r = rows[attack]
        out.append(f"| {attack} | {r['n_poison']} | {r['victim']['ca']:.1f} | {r['victim']['asr']:.1f} | "
                   f"{r['clean']['ca']:.1f} | {r['clean']['asr']:.1f} |")
        if "defense" in r:
            d = r["defense"]
            out.append(f"| {attack}, retrained after PatchSearch-lite (precision {d['precision']:.1f}% / "
                       f"recall {d['recall']:.1f}%) | - | {d['after']['ca']:.1f} | {d['after']['asr']:.1f} | | |")
    adv = rows["adversarial"]
    out.append("")
    for h in adv["heads"]:
        out.append(f"- UAP (L-inf 8/255) on downstream head `{h['name']}`: fooling rate {h['fooling_rate']:.1f}% "
                   f"(random-sign noise of the same norm: {h['fooling_rate_random_sign']:.1f}%), "
                   f"accuracy {h['clean_acc']:.1f}% -> {h['adv_acc']:.1f}%")
    out.append(f"- retrieval recall@1 {adv['recall@1_clean']:.1f}% -> {adv['recall@1_adv']:.1f}% under the UAP")
    ue = rows["unlearnable"]
    out.append(f"- unlearnable clusters: encoder pretrained on clean data kNN {ue['clean']['knn_top1']:.1f}% / "
               f"linear {ue['clean']['linear_top1']:.1f}%; on protected data kNN {ue['protected']['knn_top1']:.1f}% "
               f"/ linear {ue['protected']['linear_top1']:.1f}%")
    return "\n".join(out)


if __name__ == "__main__":
    main()
