"""Defenses on the victims of a finished backdoor table (bench_security.py): DECREE's verdict on every victim and
on the clean encoder, and PatchSearch's detection precision/recall on the Noisy Alignment and SSL-Backdoor
poisoned sets (issue 25, "What it must show" 3).

    .venv/bin/python benchmarks/bench_defense.py --work /tmp/selfsup-bench-security            # detection only
    .venv/bin/python benchmarks/bench_defense.py --work /tmp/selfsup-bench-security --retrain  # + ASR/CA after removal
    .venv/bin/python benchmarks/bench_defense.py --work /tmp/selfsup-bench-security --render   # RESULTS.md from the JSON

It reads ``--work/table.json`` (or ``table.partial.json`` while the table still runs) and each arm's run folders
(``victim/``, ``poisoned/``, the shared ``clean/``), so nothing is retrained unless ``--retrain`` is given: then
each defended arm is pretrained again without the flagged images, under the table's settings (one more arm's
time each). Writes ``--work/defense.json`` and its section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import common
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="bench_security.py's --work folder")
    ap.add_argument("--attacks", default="noisy-alignment,ssl-backdoor", help="arms PatchSearch defends")
    ap.add_argument("--decree-steps", type=int, default=300)
    ap.add_argument("--tests", type=int, default=128, help="PatchSearch test images per cluster search")
    ap.add_argument("--iterations", type=int, default=300, help="poison-classifier training iterations")
    ap.add_argument("--retrain", action="store_true", help="retrain each defended arm without the flagged images")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--render", action="store_true", help="only rebuild the RESULTS.md section from --work/defense.json")
    args = ap.parse_args()
    work = Path(args.work)
    if args.render:
        publish(json.loads((work / "defense.json").read_text()), args)
        return
    table = work / "table.json" if (work / "table.json").exists() else work / "table.partial.json"
    rows = json.loads(table.read_text())
    t0 = time.time()
    out: dict[str, Any] = {"table": str(table), "method": rows["method"], "steps": rows["steps"], "arms": []}
    for r in rows["results"]:
        out["arms"].append(defend(r, args))
        common.write_text(work / "defense.json", json.dumps(out, indent=2, default=str))
    out["wall_minutes"] = (time.time() - t0) / 60
    out["command"] = common.command_line()
    out["finished"] = time.strftime("%Y-%m-%d %H:%M")
    common.write_text(work / "defense.json", json.dumps(out, indent=2, default=str))
    publish(out, args)


def publish(out: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the section and (unless --no-write) replace it in RESULTS.md."""
    text = render(out)
    print(text)
    if not args.no_write:
        common.update_section(f"Defenses on the backdoor table's victims: {out['method']} (bench_defense.py)", text)


_CLEAN_DECREE: dict[str, dict[str, Any]] = {}


def defend(r: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from selfsup.checkpoint import load_encoder
    from selfsup.data import open_dataset
    from selfsup.security.audit import (
        AuditConfig,
        decree_report,
        defense_report,
        evaluate_encoder,
        mechanism_setup,
        triggered_test,
    )
    from selfsup.security.poison import PoisonSpec, resolve_target

    cfg = AuditConfig(**r["config"])
    arm = Path(cfg.out)
    folder = arm / "poisoned"
    manifest = json.loads((folder / "manifest.json").read_text())
    victim, _ = load_encoder(arm / "victim")
    clean_dir = common.clean_run_dir(arm)
    clean, _ = load_encoder(clean_dir)
    train = open_dataset(cfg.train, cfg.image_size, cache_dir=cfg.cache_dir, require_labels=True, progress=False)
    row: dict[str, Any] = {"attack": r["attack"], "rate": r["rate"], "victim_asr": r["victim"]["asr"],
                           "clean_asr": r["clean"]["asr"], "victim_ca": r["victim"]["ca"]}
    key = str(clean_dir)
    row["decree"] = decree_report(victim, _CLEAN_DECREE.get(key, clean), train, cfg, steps=args.decree_steps)
    _CLEAN_DECREE[key] = row["decree"]["clean"]  # one clean encoder serves every arm of a table
    if r["attack"] in args.attacks.split(","):
        _, pois = mechanism_setup(manifest, folder, cfg)
        after = None
        if args.retrain:
            test = open_dataset(cfg.test, cfg.image_size, cache_dir=cfg.cache_dir, require_labels=True,
                                progress=False)
            tid = resolve_target(train.classes, train.labels, r["target"], cfg.train)
            spec = PoisonSpec(**r["spec"])
            keep = test.labels != tid
            trig = triggered_test(manifest, folder, np.asarray(test.images)[keep], spec, cfg.seed + 1)

            def after(enc: Any) -> dict[str, float]:
                return evaluate_encoder(enc, cfg, train, test, trig, tid)

        t = time.time()
        row["defense"] = defense_report(victim, pois, manifest, cfg, tests=args.tests, iterations=args.iterations,
                                        after=after)
        row["defense"]["minutes"] = (time.time() - t) / 60
    return row


def render(out: dict[str, Any]) -> str:
    lines = [common.header({
        "input": f"`{out['table']}` ({out['method']} victims, {out['steps']} steps each)",
        "wall time": f"{out.get('wall_minutes', float('nan')):.1f} min",
        "measured by": f"`{out.get('command', '?')}`, finished {out.get('finished', '?')}",
        "columns": "DECREE PL1: the inverted trigger's mask L1 / image area (backdoored when < the threshold); "
                   "PatchSearch: precision / recall of the flagged images against the manifest (the poison "
                   "classifier's flags; in brackets the poison scores' top 2% alone)",
    }), "", "| attack | rate | victim ASR % | clean-enc. ASR % | DECREE PL1 victim / clean (verdicts) | "
        "PatchSearch precision / recall % | after removal CA / ASR % | PatchSearch min |", "|---|---|---|---|---|---|---|---|"]
    for a in out["arms"]:
        d = a["decree"]
        dec = (f"{d['victim']['pl1']:.3f} / {d['clean']['pl1']:.3f} ({d['victim']['verdict']} / "
               f"{d['clean']['verdict']}, threshold {d['victim']['threshold']})")
        ps, after, mins = "-", "-", "-"
        if "defense" in a:
            f = a["defense"]
            so = f["scores_only"]
            ps = f"{f['precision']:.1f} / {f['recall']:.1f} ({so['precision']:.1f} / {so['recall']:.1f})"
            mins = f"{f['minutes']:.1f}"
            if "after" in f:
                after = f"{f['after']['ca']:.1f} / {f['after']['asr']:.1f}"
        lines.append(f"| {a['attack']} | {a['rate']:g} | {a['victim_asr']:.1f} | {a['clean_asr']:.1f} | {dec} | "
                     f"{ps} | {after} | {mins} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
