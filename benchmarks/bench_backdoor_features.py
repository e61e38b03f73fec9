"""A second look at a finished backdoor table (bench_security.py): where the triggers moved the victims' features.

    .venv/bin/python benchmarks/bench_backdoor_features.py --work /tmp/selfsup-bench-security

For the clean encoder (with every attack's test trigger) and each victim (with its own trigger), on the
table's CIFAR-10 splits:
- the centred trigger->target cosines (:func:`selfsup.security.reading.target_cosines`: triggered and
  untriggered non-target test images, relative to the mean clean training feature, against the target's
  direction from it) and the "pull" = triggered - untriggered;
- a kNN ASR: triggered non-target test images that selfsup's kNN protocol (:func:`selfsup.eval.knn.knn_predict`:
  the 20 nearest clean training images by cosine, votes weighted by exp(cos / 0.1)) assigns to the target
  class, beside the same vote's target rate on the untriggered images;
- the mean pairwise cosine of 500 triggered images (near 1: the trigger collapses them onto one point);
- where the triggered images go: the audit's linear probe's prediction shares per class, triggered and
  untriggered (:func:`selfsup.security.reading.probe_readout`), and the centred cosine of the triggered
  images' mean direction to every class's direction from the centre (a trigger pulled toward a group of
  classes, e.g. all vehicles, shows as high cosines to each of them).
Nothing is retrained. Writes ``--work/features.json`` and prints a Markdown table.
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
    ap.add_argument("--k", type=int, default=20, help="neighbours of the kNN vote")
    ap.add_argument("--victim", help="measure this run folder as the (single) attack's victim instead of the "
                                     "table's (e.g. the victim trained further with `selfsup pretrain --resume`)")
    ap.add_argument("--clean", help="measure this run folder as the clean encoder instead of the table's")
    ap.add_argument("--attack", help="measure only this attack's row of the table (e.g. with --victim on a "
                                     "table of three attacks)")
    ap.add_argument("--out", help="the JSON to write (default: --work/features.json)")
    args = ap.parse_args()
    work = Path(args.work)
    rows = json.loads((work / "table.json").read_text())
    if args.attack:
        rows["results"] = [r for r in rows["results"] if r["attack"] == args.attack]
        if not rows["results"]:
            raise SystemExit(f"--attack {args.attack}: not in {work / 'table.json'}")
    if args.victim and len(rows["results"]) != 1:
        raise SystemExit("--victim needs a table with one attack (or --attack NAME)")
    t0 = time.time()
    out = {"table": str(work / "table.json"), "k": args.k, "victim": args.victim, "clean": args.clean,
           "attack": args.attack,
           "rows": measure(rows, args.k, victim=args.victim, clean=args.clean)}
    out["minutes"] = (time.time() - t0) / 60
    out["command"] = common.command_line()
    out["finished"] = time.strftime("%Y-%m-%d %H:%M")
    common.write_text(Path(args.out) if args.out else work / "features.json", json.dumps(out, indent=2))
    print(render(out))


def measure(rows: dict[str, Any], k: int, victim: str | None = None, clean: str | None = None) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from selfsup.checkpoint import load_encoder
    from selfsup.data import open_dataset
    from selfsup.eval.knn import knn_predict
    from selfsup.security.audit import AuditConfig, _features, triggered_test
    from selfsup.security.metrics import fit_linear_head
    from selfsup.security.poison import PoisonSpec, resolve_target
    from selfsup.security.reading import probe_readout, target_cosines

    cfg = AuditConfig(**rows["results"][0]["config"])
    train = open_dataset(cfg.train, cfg.image_size, cache_dir=cfg.cache_dir, require_labels=True, progress=False)
    test = open_dataset(cfg.test, cfg.image_size, cache_dir=cfg.cache_dir, require_labels=True, progress=False)
    tid = resolve_target(train.classes, train.labels, rows["target"], cfg.train)
    keep = test.labels != tid
    ytr = torch.as_tensor(np.array(train.labels))
    is_t = np.asarray(train.labels) == tid
    arms = {}
    for r in rows["results"]:
        arm = Path(r["config"]["out"])
        folder = arm / "poisoned"
        manifest = json.loads((folder / "manifest.json").read_text())
        trig = triggered_test(manifest, folder, np.asarray(test.images)[keep], PoisonSpec(**r["spec"]), cfg.seed + 1)
        arms[r["attack"]] = (arm, trig)
    clean_dir = Path(clean) if clean else common.clean_run_dir(next(iter(arms.values()))[0])
    enc_dirs = {a: Path(victim) if victim else arms[a][0] / "victim" for a in arms}

    def vote(f: torch.Tensor, bank: torch.Tensor) -> float:
        scores = knn_predict(bank, ytr, f, k=k, num_classes=int(ytr.max()) + 1)  # the kNN protocol's vote
        return float((scores.argmax(1) == tid).float().mean() * 100)

    out = []
    for name, enc_dir, attacks in [("clean", clean_dir, list(arms))] + [(a, enc_dirs[a], [a]) for a in arms]:
        enc, _ = load_encoder(enc_dir)
        raw_tr = _features(enc, train.images, cfg).float()
        ftr = F.normalize(raw_tr, dim=1)
        raw_all = _features(enc, test.images, cfg).float()
        raw_te = raw_all[torch.as_tensor(keep)]
        fte = F.normalize(raw_te, dim=1)
        base = vote(fte, ftr)
        head = fit_linear_head(raw_tr, ytr, len(train.classes))  # the audit's probe
        centre = ftr.mean(0)
        class_dirs = F.normalize(torch.stack([ftr[ytr == k].mean(0) for k in range(len(train.classes))]) - centre, dim=1)
        for a in attacks:
            raw_tg = _features(enc, arms[a][1], cfg).float()
            ftg = F.normalize(raw_tg, dim=1)
            c = target_cosines(raw_tr, is_t, ftg, fte)  # raw training features: the audit's plain cosines
            trig_dir = F.normalize(F.normalize(ftg - centre, dim=1).mean(0), dim=0)
            out.append({"encoder": name, "trigger": a, **c,
                        **probe_readout(head, raw_all, test.labels, raw_tg, tid, train.classes),
                        "pull_centred": c["cos_trigger_target_centred"] - c["cos_clean_target_centred"],
                        "knn_asr": vote(ftg, ftr), "knn_target_rate_untriggered": base,
                        "pairwise_cos_triggered": float((ftg[:500] @ ftg[:500].T).mean()),
                        "centred_cos_to_classes": dict(zip(train.classes, (class_dirs @ trig_dir).tolist(),
                                                           strict=True))})
            print(out[-1], flush=True)
    return out


def render(out: dict[str, Any]) -> str:
    lines = [common.header({"input": f"`{out['table']}`", "wall time": f"{out['minutes']:.1f} min",
                            "measured by": f"`{out['command']}`, finished {out['finished']}"}), "",
             "| encoder | trigger | centred cos triggered / untriggered | pull | kNN ASR % (untriggered) | "
             "pairwise cos of triggered |", "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['encoder']} | {r['trigger']} | {r['cos_trigger_target_centred']:.3f} / "
                     f"{r['cos_clean_target_centred']:.3f} | {r['pull_centred']:+.3f} | {r['knn_asr']:.1f} "
                     f"({r['knn_target_rate_untriggered']:.1f}) | {r['pairwise_cos_triggered']:.3f} |")
    lines += ["", "Where the triggered images go: the linear probe's three most predicted classes (share of triggered "
              "non-target images, %; in brackets the same class's share of the untriggered ones), and the classes "
              "whose direction from the centre the triggered images' mean direction is closest to (centred cosine).",
              "", "| encoder | trigger | CA % | ASR % | probe's top classes, triggered (untriggered) | "
              "closest class directions |", "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        if "triggered_shares" not in r:
            continue
        t, u, cc = r["triggered_shares"], r["untriggered_shares"], r["centred_cos_to_classes"]
        top = sorted(t, key=lambda k: -t[k])[:3]
        near = sorted(cc, key=lambda k: -cc[k])[:4]
        lines.append(f"| {r['encoder']} | {r['trigger']} | {r['ca']:.1f} | {r['asr']:.1f} | " + ", ".join(f"{k} {t[k]:.1f} ({u[k]:.1f})" for k in top)
                     + " | " + ", ".join(f"{k} {cc[k]:+.2f}" for k in near) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
