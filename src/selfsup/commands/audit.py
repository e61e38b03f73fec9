"""``selfsup audit backdoor|adversarial|unlearnable``: security audits on selfsup's own pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from selfsup.config.validate import device_name, float_range, int_range


def _common(p: argparse.ArgumentParser, train_default: str | None = "builtin:synthetic") -> None:
    p.add_argument("--train", default=train_default, help="labelled pretraining / probe data (class folders or builtin:NAME)")
    p.add_argument("--test", default=None if train_default is None else "builtin:synthetic:test",
                   help="labelled test data")
    p.add_argument("--out", required=True, help="output folder (report.json, runs, poisoned data)")
    p.add_argument("--image-size", type=int_range(8, 2048), default=32, help="pixels of every image and view (images are resized to it)")
    p.add_argument("--method", default="simclr", help="pretraining method of the victim (see `selfsup methods`)")
    p.add_argument("--backbone", default="cnn-compact", help="the victim's encoder (see `selfsup backbones`)")
    p.add_argument("--width", type=int_range(1, 4096), default=32, help="cnn-compact width")
    p.add_argument("--epochs", type=int_range(1), default=50, help="epochs of every pretraining run (the LR schedule's length)")
    p.add_argument("--batch-size", type=int_range(2), default=256, help="images per step of every pretraining run")
    p.add_argument("--max-steps", type=int_range(1), default=None, help="stop every pretraining run after this many steps (equal budgets)")
    p.add_argument("--lr", type=float_range(0, open_lo=True), default=None, help="peak learning rate (default: the method's)")
    p.add_argument("--seed", type=int_range(0, 2**31 - 1), default=0, help="seed of the poisons, the runs and the probes")
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int_range(1), default=None, help="CPU threads (default: all cores)")
    p.add_argument("--cache-dir", default=None, help="image cache folder (default $SELFSUP_CACHE or ~/.cache/selfsup)")
    p.add_argument("--preset", default=None,
                   help="a packaged CPU recipe under the victim's pretraining (e.g. cpu-32px; flags above win)")
    p.add_argument("--time-budget", type=float_range(0, open_lo=True), default=None, metavar="MINUTES",
                   help="wall-clock minutes per pretraining run (schedule fitted to it)")


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("audit", help="security audits: backdoor poisoning, adversarial encoders, unlearnable data",
                       formatter_class=formatter,
                       epilog="examples:\n  selfsup audit backdoor --attack noisy-alignment --target disc --poison-rate 0.01 "
                       "--out runs/bd\n  selfsup audit adversarial --checkpoint runs/a --train DIR --test DIR --out runs/adv\n"
                       "  selfsup audit unlearnable --out runs/ue")
    s = p.add_subparsers(dest="audit_kind", metavar="KIND")
    s.required = True

    b = s.add_parser("backdoor", help="poison the pretraining set, pretrain a victim, report ASR/CA vs clean",
                     formatter_class=formatter)
    _common(b)
    b.add_argument("--attack", default="noisy-alignment", choices=["noisy-alignment", "ssl-backdoor", "ctrl"],
                   help="the poisoning attack (each built as its official code builds it)")
    b.add_argument("--target", default="0", help="target class name (or index)")
    b.add_argument("--poison-rate", type=float, default=0.01,
                   help="poisons = round(rate * N_clean), each from distinct images; in (0, 1)")
    b.add_argument("--trigger-size", type=int_range(1), default=None, help="patch side in px; default round(S * 50 / 224)")
    b.add_argument("--alpha", type=float_range(0, 1), default=None,
                   help="weight of the image under the patch (default: the attack's official value, NA 0.2, "
                   "SSL-Backdoor 0 = opaque)")
    b.add_argument("--defense", action="store_true", help="also run PatchSearch on the poisoned set and retrain")
    b.add_argument("--flag-fraction", type=float_range(0, 1, open_lo=True, open_hi=True), default=0.02,
                   help="share flagged by the poison scores alone (reported beside PatchSearch's classifier)")
    b.add_argument("--decree", action="store_true",
                   help="also run DECREE (encoder-level trigger inversion, no labels) on the victim and clean encoders")
    b.set_defaults(func=run_backdoor)

    a = s.add_parser("adversarial", help="universal perturbation against a frozen encoder; fooling rate, recall@1",
                     formatter_class=formatter)
    _common(a, train_default=None)
    a.add_argument("--checkpoint", default=None, help="encoder to attack (run folder, checkpoint.pt, encoder.safetensors); "
                   "default: pretrain one on --train")
    a.add_argument("--attacker-data", default=None, help="images the attacker optimises on (default: --train)")
    a.add_argument("--other-train", default=None, help="a second, different labelled folder for an unseen head")
    a.add_argument("--other-test", default=None, help="test split of --other-train")
    a.add_argument("--eps", type=float_range(0, 1, open_lo=True), default=8 / 255, help="L-inf budget in pixel units (default 8/255)")
    a.add_argument("--steps", type=int_range(1), default=100, help="optimisation steps of the perturbation")
    a.set_defaults(func=run_adversarial)

    u = s.add_parser("unlearnable", help="protect data with Unlearnable Clusters; compare encoders trained on it",
                     formatter_class=formatter)
    _common(u)
    u.add_argument("--surrogate", default=None, help="surrogate encoder (default: the clean-data encoder)")
    u.add_argument("--clusters", type=int_range(2), default=10, help="k-means clusters of the surrogate's features")
    u.add_argument("--eps", type=float_range(0, 1, open_lo=True), default=8 / 255, help="L-inf budget in pixel units (default 8/255)")
    u.add_argument("--steps", type=int_range(1), default=30, help="optimisation steps per cluster's perturbation")
    u.set_defaults(func=run_unlearnable)


def _cfg(args: argparse.Namespace) -> Any:
    """The audit's config, with the victim's pretraining config validated now: before anything is written."""
    from selfsup.config.validate import check_output_dir
    from selfsup.security.audit import AuditConfig, pretrain_config

    check_output_dir(args.out)
    cfg = AuditConfig(train=args.train or "", test=args.test or "", out=args.out, image_size=args.image_size,
                       method=args.method, backbone=args.backbone, width=args.width, epochs=args.epochs,
                       batch_size=args.batch_size, max_steps=args.max_steps, lr=args.lr, seed=args.seed,
                       device=args.device, threads=args.threads, cache_dir=args.cache_dir, preset=args.preset,
                       time_budget=args.time_budget)
    pretrain_config(cfg, cfg.train or "unused", Path(cfg.out) / "check")  # validates; creates nothing
    return cfg


def _print(report: dict[str, Any]) -> int:
    print(json.dumps({k: v for k, v in report.items() if k not in ("config", "spec")}, indent=2))
    return 0


def backdoor_table(report: dict[str, Any]) -> str:
    """The audit's summary table: CA, ASR and trigger->target cosine per encoder, then the mechanism count."""
    m = report.get("mechanism", {})
    lines = [f"backdoor audit: {report['attack']} -> {report['target']} ({report['n_poison']} poisons)",
             f"{'encoder':<10} {'CA %':>7} {'ASR %':>7} {'cos(trig,target)':>17} {'cos(clean,target)':>18}"]
    for arm in ("victim", "clean"):
        r = report[arm]
        lines.append(f"{arm:<10} {r['ca']:>7.1f} {r['asr']:>7.1f} {r['cos_trigger_target']:>17.3f} "
                     f"{r['cos_clean_target']:>18.3f}")
    if "defense" in report:
        r = report["defense"]["after"]
        lines.append(f"{'retrained':<10} {r['ca']:>7.1f} {r['asr']:>7.1f} {r['cos_trigger_target']:>17.3f} "
                     f"{r['cos_clean_target']:>18.3f}")
    if m:
        exp = m.get("expected", {})
        e = f"{exp['mechanism_pairs']:.0f}" if "mechanism_pairs" in exp else "n/a"
        lines.append(f"mechanism: {m['mechanism_pairs']} of {m['poison_pairs']} poison view pairs "
                     f"({100 * m['rate']:.2f}%; Monte-Carlo expectation {e}); "
                     f"{m['poisons_with_a_hit']} of {m['poisons']} poisons had at least one")
        if m["mechanism_pairs"] == 0:
            lines.append(f"WARNING: {m['note']}")
    if "reading" in report:
        r = report["reading"]
        if r.get("diversion"):
            d = r["diversion"]
            lines.append(f"largest shift of the triggered images' predictions: '{d['class']}' {d['victim']:.1f}% "
                         f"on the victim, {d['clean']:.1f}% on the clean encoder")
        lines.append(f"reading: {r['text']} (trigger->target {r.get('cosines', 'plain')} cosine shift "
                     f"{r['net_cosine_shift']:+.3f}, net of the clean encoder's)")
    if "decree" in report:
        d = report["decree"]
        lines.append("DECREE PL1: victim {:.3f} ({}), clean {:.3f} ({}), threshold {:.2f}".format(
            d["victim"]["pl1"], d["victim"]["verdict"], d["clean"]["pl1"], d["clean"]["verdict"],
            d["victim"]["threshold"]))
    return "\n".join(lines)


def run_backdoor(args: argparse.Namespace) -> int:
    import sys

    from selfsup.runlock import run_folder_lock
    from selfsup.security.audit import backdoor_audit
    from selfsup.security.poison import PoisonSpec, check_rate

    check_rate(args.poison_rate)
    spec = PoisonSpec(attack=args.attack, rate=args.poison_rate, trigger_size=args.trigger_size, alpha=args.alpha,
                      seed=args.seed)
    cfg = _cfg(args)
    with run_folder_lock(cfg.out):
        report = backdoor_audit(cfg, args.target, spec, defense=args.defense, flag_fraction=args.flag_fraction,
                                decree=args.decree)
    print(backdoor_table(report), file=sys.stderr)
    return _print(report)


def run_adversarial(args: argparse.Namespace) -> int:
    from selfsup.runlock import run_folder_lock
    from selfsup.security.audit import adversarial_audit

    cfg = _cfg(args)
    with run_folder_lock(cfg.out):
        return _print(adversarial_audit(cfg, checkpoint=args.checkpoint, attacker_data=args.attacker_data,
                                        other_train=args.other_train, other_test=args.other_test, eps=args.eps,
                                        steps=args.steps))


def run_unlearnable(args: argparse.Namespace) -> int:
    from selfsup.runlock import run_folder_lock
    from selfsup.security.audit import unlearnable_audit

    cfg = _cfg(args)
    with run_folder_lock(cfg.out):
        return _print(unlearnable_audit(cfg, surrogate=args.surrogate, clusters=args.clusters, eps=args.eps,
                                        steps=args.steps))
