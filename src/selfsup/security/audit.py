"""End-to-end security audits on selfsup's own pipeline.

backdoor:    build a poisoned folder (clean + round(rate*N) poisons, manifest) -> pretrain a victim with
             :func:`selfsup.training.loop.pretrain` on it and a reference encoder on the clean data with the same
             settings -> fit a linear probe on clean labelled features -> CA on untouched test images, ASR on
             triggered non-target test images, for both. Optional PatchSearch-style defense: score the
             poisoned set with the victim encoder, report precision/recall of the flagged images against the
             manifest, retrain without them and report ASR/CA again.
adversarial: a universal perturbation against a frozen encoder (a checkpoint, or one pretrained here) ->
             fooling rate of linear heads fitted on labelled data the attacker never used (the probe set,
             plus an optional second, different labelled folder) and the recall@1 drop.
unlearnable: pretrain on clean data (this encoder is also the protector's surrogate unless --surrogate is
             given) -> protect the data with Unlearnable Clusters -> pretrain on the protected data with the
             same budget -> kNN and linear accuracy of both encoders on the clean test set.
Every audit writes OUT/report.json.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from selfsup.errors import ConfigError, DataError
from selfsup.eval.knn import _as_tensor
from selfsup.security.metrics import attack_success_rate, clean_accuracy, fit_linear_head
from selfsup.security.poison import PoisonSpec, build_poisoned_folder, resolve_target


@dataclass
class AuditConfig:
    train: str = "builtin:synthetic"  # labelled pretraining data (labels only pick references / fit the probe)
    test: str = "builtin:synthetic:test"  # labelled test data
    out: str = "runs/audit"
    image_size: int = 32
    method: str = "simclr"
    backbone: str = "cnn-compact"
    width: int = 32  # cnn-compact only
    epochs: int = 50
    batch_size: int = 256
    max_steps: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    cache_dir: str | None = None
    progress: bool = False
    time_budget: float | None = None  # minutes per pretraining run (selfsup's --time-budget)
    preset: str | None = None  # a packaged CPU preset (`selfsup presets`) layered under the fields above


def _log(msg: str) -> None:
    print(f"audit: {msg}", file=sys.stderr)


def _open(spec: str, cfg: AuditConfig, labelled: bool = True) -> Any:
    from selfsup.data import open_dataset

    return open_dataset(spec, cfg.image_size, cache_dir=cfg.cache_dir, require_labels=labelled,
                        min_classes=2 if labelled else 0, progress=cfg.progress)


def pretrain_config(cfg: AuditConfig, data: str, out: Path) -> Any:
    """The victim's PretrainConfig: the preset (if any), then the audit's own fields."""
    from selfsup.config import PretrainConfig, apply_overrides
    from selfsup.config.validate import validate_config

    pc = PretrainConfig(out=str(out))
    if cfg.preset:
        from selfsup.config.presets import load_preset

        apply_overrides(pc, load_preset(cfg.preset, cfg.method), f"preset {cfg.preset}")
    pc.data.path, pc.data.image_size, pc.data.cache_dir = data, cfg.image_size, cfg.cache_dir
    pc.backbone.name, pc.backbone.width = cfg.backbone, cfg.width
    if pc.method.get("name") != cfg.method:
        pc.method = {"name": cfg.method}
    if cfg.lr is not None:
        pc.optim.lr = cfg.lr
    t = pc.train
    t.epochs, t.batch_size, t.max_steps, t.seed = cfg.epochs, cfg.batch_size, cfg.max_steps, cfg.seed
    t.device, t.threads, t.progress, t.knn_every, t.log_every = cfg.device, cfg.threads, cfg.progress, 0, 50
    t.time_budget = cfg.time_budget
    validate_config(pc)
    return pc


def run_pretrain(cfg: AuditConfig, data: str, out: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Pretrain with selfsup's loop (same settings for every arm) and return (encoder, summary)."""
    from selfsup.checkpoint import load_encoder
    from selfsup.training.loop import pretrain

    summary = pretrain(pretrain_config(cfg, data, out))
    enc, _ = load_encoder(out)
    return enc, summary


def write_folder(out: Path, images: np.ndarray) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(np.asarray(im)).save(out / f"{i:06d}.png", compress_level=1)
    return out


def _features(enc: torch.nn.Module, images: np.ndarray, cfg: AuditConfig) -> torch.Tensor:
    from selfsup.security.adversarial import encode

    return encode(enc, images, cfg.image_size)


def triggered_test(manifest: dict[str, Any], folder: Path, images: np.ndarray, spec: PoisonSpec, seed: int) -> np.ndarray:
    """The test-time trigger: the same patch at a uniformly random location, or CTRL at magnitude 100."""
    from selfsup.security.triggers import apply_ctrl_trigger, apply_patch_trigger

    if spec.attack == "ctrl":
        return apply_ctrl_trigger(images, magnitude=100.0, window=spec.ctrl_window)
    patch = np.asarray(Image.open(folder / str(manifest["trigger"])).convert("RGB"))
    out, _ = apply_patch_trigger(images, patch, np.random.default_rng(seed), location="random", alpha=spec.alpha)
    return out


def _asr_ca(enc: torch.nn.Module, cfg: AuditConfig, train: Any, test: Any, trig: np.ndarray, tid: int) -> dict[str, float]:
    ftr = _features(enc, train.images, cfg)
    labels = _as_tensor(train.labels, "labels")  # copies the read-only cached labels
    head = fit_linear_head(ftr, labels, max(train.num_classes, test.num_classes))
    ca = clean_accuracy(head.predict(_features(enc, test.images, cfg)), test.labels)
    keep = test.labels != tid
    asr = attack_success_rate(head.predict(_features(enc, trig, cfg)), test.labels[keep], tid)
    return {"ca": ca, "asr": asr}


def backdoor_audit(cfg: AuditConfig, target: str | int, spec: PoisonSpec, *, defense: bool = False,
                   flag_fraction: float = 0.02, defense_tests: int = 32,
                   clean_run: tuple[torch.nn.Module, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``clean_run``: an (encoder, summary) already pretrained on ``cfg.train`` with the same settings (reused)."""
    from selfsup.security.poison import check_rate

    check_rate(spec.rate)
    out = Path(cfg.out)
    train, test = _open(cfg.train, cfg), _open(cfg.test, cfg)
    tid = resolve_target(train.classes, train.labels, target, cfg.train)
    if test.classes != train.classes:
        raise DataError(f"{cfg.test} has classes {test.classes[:5]}... but {cfg.train} has {train.classes[:5]}...; "
                        "pass train and test splits of the same dataset")
    resolve_target(test.classes, test.labels, target, cfg.test)
    if cfg.batch_size > len(train):  # the clean reference run would fail only after the poisons were written
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than {cfg.train} ({len(train)} images); use "
                          f"--batch-size {len(train)} or less")
    folder = out / "poisoned"
    _log(f"writing {spec.attack} poisons ({spec.rate:.2%} of {len(train)}) to {folder}")
    manifest = build_poisoned_folder(folder, np.asarray(train.images), train.labels, train.classes, train.paths,
                                     target=target, spec=spec, where=cfg.train)
    keep = test.labels != tid
    trig = triggered_test(manifest, folder, np.asarray(test.images)[keep], spec, cfg.seed + 1)
    _log("pretraining the victim on the poisoned folder")
    victim, vsum = run_pretrain(cfg, str(folder / "images"), out / "victim")
    if clean_run is None:
        _log("pretraining the reference encoder on the clean data")
        clean_run = run_pretrain(cfg, cfg.train, out / "clean")
    clean, csum = clean_run
    report: dict[str, Any] = {
        "kind": "backdoor", "attack": spec.attack, "target": train.classes[tid], "config": asdict(cfg),
        "spec": asdict(spec), "n_clean": manifest["n_clean"], "n_poison": manifest["n_poison"],
        "trigger_size": manifest["trigger_size"], "victim": _asr_ca(victim, cfg, train, test, trig, tid),
        "clean": _asr_ca(clean, cfg, train, test, trig, tid), "victim_steps": vsum["steps"], "clean_steps": csum["steps"],
    }
    if defense:
        from selfsup.security.defense import flag_top, patchsearch_scores, precision_recall
        from selfsup.security.poison import read_manifest

        man = read_manifest(folder)
        files = sorted(man["files"], key=lambda r: r["file"])  # the loader's row order (sorted paths)
        pois = _open(str(folder / "images"), cfg, labelled=False)
        if len(pois) != len(files):
            raise DataError(f"{folder}: {len(pois)} decodable images but {len(files)} manifest rows")
        is_poison = np.array([r["poison"] for r in files])
        _log("PatchSearch-style scoring of the poisoned set with the victim encoder")
        ps = patchsearch_scores(victim, np.asarray(pois.images), image_size=cfg.image_size, seed=cfg.seed,
                                n_test=defense_tests)
        flagged = flag_top(ps["scores"], flag_fraction)
        kept = np.asarray(pois.images)[~flagged]
        filt = write_folder(out / "filtered" / "images", kept)
        _log(f"retraining without {int(flagged.sum())} flagged images")
        retrained, _ = run_pretrain(cfg, str(filt), out / "retrained")
        report["defense"] = {"method": "patchsearch-lite (Tejankar et al. CVPR 2023)", "flag_fraction": flag_fraction,
                             "window": ps["window"], **precision_recall(flagged, is_poison),
                             "after": _asr_ca(retrained, cfg, train, test, trig, tid)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def adversarial_audit(cfg: AuditConfig, *, checkpoint: str | None = None, attacker_data: str | None = None,
                      other_train: str | None = None, other_test: str | None = None, eps: float = 8 / 255,
                      steps: int = 100, encoder: torch.nn.Module | None = None) -> dict[str, Any]:
    """Universal perturbation on ``attacker_data`` (default: the train split, unlabelled use) against the encoder."""
    from selfsup.checkpoint import load_encoder
    from selfsup.security.adversarial import evaluate_perturbation, universal_perturbation

    if not cfg.train or not cfg.test:
        raise ConfigError("the adversarial audit needs a labelled probe set: pass --train and --test (class folders)")
    if (other_train is None) != (other_test is None):
        raise ConfigError("pass both --other-train and --other-test (a second labelled dataset) or neither")
    out = Path(cfg.out)
    train, test = _open(cfg.train, cfg), _open(cfg.test, cfg)
    if encoder is not None:
        enc = encoder
    elif checkpoint:
        enc, info = load_encoder(checkpoint)
        if int(info.get("image_size", cfg.image_size)) != cfg.image_size:
            _log(f"using the checkpoint's image size {info['image_size']}")
            cfg.image_size = int(info["image_size"])
            train, test = _open(cfg.train, cfg), _open(cfg.test, cfg)
    else:
        _log("no --checkpoint: pretraining the victim encoder first")
        enc, _ = run_pretrain(cfg, cfg.train, out / "encoder")
    atk = _open(attacker_data, cfg, labelled=False) if attacker_data else train
    delta, hist = universal_perturbation(enc, np.asarray(atk.images), image_size=cfg.image_size, eps=eps,
                                         steps=steps, seed=cfg.seed)
    heads = [{"name": cfg.train, "train_images": np.asarray(train.images), "train_labels": train.labels,
              "test_images": np.asarray(test.images), "test_labels": test.labels, "num_classes": train.num_classes}]
    if other_train and other_test:
        o_tr, o_te = _open(other_train, cfg), _open(other_test, cfg)
        heads.append({"name": other_train, "train_images": np.asarray(o_tr.images), "train_labels": o_tr.labels,
                      "test_images": np.asarray(o_te.images), "test_labels": o_te.labels,
                      "num_classes": max(o_tr.num_classes, o_te.num_classes)})
    res = evaluate_perturbation(enc, delta, image_size=cfg.image_size, heads=heads, seed=cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "delta.npy", delta.numpy())
    report = {"kind": "adversarial", "eps": eps, "steps": steps, "loss_first": hist[0], "loss_last": hist[-1],
              "config": asdict(cfg), **res}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def unlearnable_audit(cfg: AuditConfig, *, surrogate: str | None = None, clusters: int = 10, eps: float = 8 / 255,
                      steps: int = 30, knn_k: int = 20,
                      clean_run: tuple[torch.nn.Module, dict[str, Any]] | None = None) -> dict[str, Any]:
    from selfsup.checkpoint import load_encoder
    from selfsup.eval.knn import knn_accuracy
    from selfsup.security.unlearnable import unlearnable_clusters

    out = Path(cfg.out)
    train, test = _open(cfg.train, cfg), _open(cfg.test, cfg)
    if clean_run is None:
        _log("pretraining on the clean data")
        clean_run = run_pretrain(cfg, cfg.train, out / "clean")
    clean_enc = clean_run[0]
    sur = load_encoder(surrogate)[0] if surrogate else clean_enc
    prot = unlearnable_clusters(sur, np.asarray(train.images), image_size=cfg.image_size, clusters=clusters,
                                eps=eps, steps=steps, seed=cfg.seed)
    folder = write_folder(out / "protected" / "images", prot["images"])
    _log("pretraining on the protected data (same budget)")
    prot_enc, _ = run_pretrain(cfg, str(folder), out / "protected_run")

    def score(enc: torch.nn.Module) -> dict[str, float]:
        ftr, fte = _features(enc, train.images, cfg), _features(enc, test.images, cfg)
        ytr, yte = _as_tensor(train.labels, "train labels"), _as_tensor(test.labels, "test labels")
        nc = max(train.num_classes, test.num_classes)
        knn = knn_accuracy(ftr, ytr, fte, yte, k=min(knn_k, len(ftr)), temperature=0.1, num_classes=nc)["top1"]
        lin = clean_accuracy(fit_linear_head(ftr, ytr, nc).predict(fte), yte)
        return {"knn_top1": float(knn), "linear_top1": lin}

    diff = np.abs(prot["images"].astype(np.int16) - np.asarray(train.images).astype(np.int16)).max()
    report = {"kind": "unlearnable", "method": "unlearnable-clusters (Zhang et al. CVPR 2023)", "eps": eps,
              "budget_pixels": prot["budget_pixels"], "max_pixel_change": int(diff), "clusters": clusters,
              "surrogate": surrogate or "encoder pretrained on the clean data", "config": asdict(cfg),
              "clean": score(clean_enc), "protected": score(prot_enc)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


__all__ = ["AuditConfig", "adversarial_audit", "backdoor_audit", "run_pretrain", "unlearnable_audit", "write_folder"]
