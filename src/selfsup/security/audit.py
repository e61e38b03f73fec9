"""End-to-end security audits on selfsup's own pipeline.

backdoor:    build a poisoned folder (round(rate*N) poisons from distinct images, manifest; see
             :mod:`selfsup.security.poison`) -> pretrain a victim with :func:`selfsup.training.loop.pretrain` on
             it (counting the training pairs in which the attack's mechanism occurred,
             :mod:`selfsup.security.mechanism`) and a reference encoder on the clean data with the same
             settings -> fit a linear probe on clean labelled features -> CA on untouched test images, ASR on
             each paper's triggered non-target test images and the trigger->target cosine, for both encoders.
             Optional: PatchSearch (Tejankar et al. CVPR 2023) on the poisoned set with precision/recall
             against the manifest and a retrain without the flagged images; DECREE (Feng et al. CVPR 2023)
             on both encoders. A user who sees "ASR 5%" can tell "the encoder resisted" (mechanism pairs in
             the hundreds, cosine unchanged) from "the attack never happened" (mechanism pairs near 0).
adversarial: a universal perturbation against a frozen encoder (a checkpoint, or one pretrained here) ->
             fooling rate of linear heads fitted on labelled data the attacker never used (the probe set,
             plus an optional second, different labelled folder) and the recall@1 drop.
unlearnable: pretrain on clean data (this encoder is also the protector's surrogate unless --surrogate is
             given) -> protect the data with Unlearnable Clusters -> pretrain on the protected data with the
             same budget -> kNN and linear accuracy of both encoders on the clean test set.
Every audit writes OUT/report.json (the backdoor audit also OUT/audit.json, the same content).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from selfsup.checkpoint import atomic_write, atomic_write_text
from selfsup.config import PretrainConfig
from selfsup.config.build import build_config
from selfsup.data import RaggedImages
from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import as_tensor
from selfsup.security.metrics import clean_accuracy, fit_linear_head
from selfsup.security.poison import PoisonSpec, build_poisoned_folder, resolve_target
from selfsup.security.reading import audit_reading, probe_readout, target_cosines


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


def pretrain_config(cfg: AuditConfig, data: str, out: Path) -> PretrainConfig:
    """The victim's PretrainConfig: the preset (if any), then the audit's own fields, through the one builder."""
    return build_config(
        preset=cfg.preset, method=cfg.method, out=str(out), data=data, image_size=cfg.image_size,
        backbone=cfg.backbone, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
        device=cfg.device, progress=cfg.progress, knn_every=0,
        set={"data": {"cache_dir": cfg.cache_dir}, "backbone": {"width": cfg.width},
             "train": {"max_steps": cfg.max_steps, "threads": cfg.threads, "log_every": 50,
                       "time_budget": cfg.time_budget}},
    )


def victim_config(cfg: AuditConfig, data: str, out: Path) -> Any:
    """:func:`pretrain_config` plus the audit's fixed choices for every arm (victim, clean, retrained).

    - No low-resolution phase (``data.low_res_size = 0``), for every attack: a phase at 24 px resamples each
      crop of a 32 px image to 24 px, and CTRL's trigger components at DCT index 31 (one cycle per ~2 source
      pixels) lie above that phase's Nyquist limit, so they are filtered or aliased away; a 7 px patch is
      likewise blurred into 5 px. The papers train at one resolution.
    - No Gaussian blur for images of 64 px or less (``method.blur = False`` where the method has it): the
      papers' ImageNet recipes (MoCo v2 / SimSiam, SSL-Backdoor, Noisy Alignment) blur, but the CIFAR recipes
      (SimCLR App. B.9, CTRL's ``loaders/diffaugment.py``) do not, and a blur at 32 px removes exactly the
      high frequencies CTRL's trigger lives in.
    Everything else is the method's own view recipe (MoCo v2 / SimSiam: crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1
    p 0.8, grayscale p 0.2, flip), the recipe SSL-Backdoor and Noisy Alignment train with.
    """
    from selfsup.methods import registry

    pc = pretrain_config(cfg, data, out)
    spec = registry().get(str(pc.method.get("name")))
    method = dict(pc.method)
    if cfg.image_size <= 64 and spec is not None and "blur" in getattr(spec.config_cls, "__dataclass_fields__", {}):
        method["blur"] = False
    return dataclasses.replace(pc, data=dataclasses.replace(pc.data, low_res_size=0), method=method)


def run_pretrain(cfg: AuditConfig, data: str, out: Path, on_views: Any = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Pretrain with selfsup's loop (same settings for every arm) and return (encoder, summary)."""
    from selfsup.checkpoint import load_encoder
    from selfsup.training.loop import pretrain

    summary = pretrain(victim_config(cfg, data, out), on_views=on_views) if on_views else pretrain(
        victim_config(cfg, data, out))
    enc, _ = load_encoder(out)
    return enc, summary


def write_folder(out: Path, images: Any) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(np.asarray(im)).save(out / f"{i:06d}.png", compress_level=1)
    return out


def _features(enc: torch.nn.Module, images: np.ndarray, cfg: AuditConfig) -> torch.Tensor:
    from selfsup.security.adversarial import encode

    return encode(enc, images, cfg.image_size)


def stored_sizes(ds: Any) -> np.ndarray:
    """[N, 2] (height, width) of every stored row of a dataset (one shape for a fixed-size array)."""
    imgs = ds.images
    if isinstance(imgs, RaggedImages):  # native-aspect rows (indexing them gives centre squares)
        return imgs.sizes.copy()
    return np.tile(np.array(imgs.shape[1:3], dtype=np.int64), (imgs.shape[0], 1))


def evaluate_encoder(enc: torch.nn.Module, cfg: AuditConfig, train: Any, test: Any, trig: np.ndarray,
                     tid: int) -> dict[str, Any]:
    """CA, ASR and the trigger->target cosine of one encoder.

    ``cos_trigger_target``: mean cosine between the features of triggered non-target test images and the
    mean feature of the target class's (clean) training images; ``cos_clean_target``: the same for the
    untriggered non-target test images (the baseline it must exceed for the trigger to point at the target).
    ``*_centred``: the same with every (L2-normalised) feature taken relative to the mean of all clean
    training features, against the target's direction from that mean. SSL features share a large common
    component, so the plain cosines of every class to every class mean are high (0.5-0.7 on CIFAR-10); the
    centred ones show where the trigger moves images relative to the other classes.
    ``triggered_shares`` / ``untriggered_shares``: the prediction shares of the probe on the triggered and
    untriggered non-target test images (where a trigger sends images when not to the target).
    """
    ftr = _features(enc, train.images, cfg)
    fte = _features(enc, test.images, cfg)
    ftrig = _features(enc, trig, cfg)
    labels = as_tensor(train.labels, "labels")  # copies the read-only cached labels
    head = fit_linear_head(ftr, labels, max(train.num_classes, test.num_classes))
    keep = torch.as_tensor(test.labels != tid)
    return {**probe_readout(head, fte, test.labels, ftrig, tid, train.classes),
            **target_cosines(ftr, np.asarray(train.labels) == tid, ftrig, fte[keep])}


def triggered_test(manifest: dict[str, Any], folder: Path, images: np.ndarray, spec: PoisonSpec, seed: int) -> np.ndarray:
    """Each paper's test-time trigger (:func:`selfsup.security.poison.triggered_test_images`)."""
    from selfsup.security.poison import triggered_test_images

    patch = None
    if manifest.get("trigger"):
        patch = np.asarray(Image.open(folder / str(manifest["trigger"])).convert("RGB"))
    return triggered_test_images(spec.attack, images, patch, np.random.default_rng(seed), alpha=spec.alpha,
                                 ctrl_magnitude=spec.ctrl_magnitude, ctrl_window=spec.ctrl_window)


def mechanism_setup(manifest: dict[str, Any], folder: Path, cfg: AuditConfig) -> tuple[Any, Any]:
    """(PoisonGeometry of the poisoned folder in the loader's row order, the folder's dataset)."""
    from selfsup.security.mechanism import PoisonGeometry

    pois = _open(str(folder / "images"), cfg, labelled=False)
    if len(pois) != manifest["n_images"]:
        raise DataError(f"{folder}: {len(pois)} decodable images but {manifest['n_images']} manifest rows")
    return PoisonGeometry.from_manifest(manifest, pois.paths, stored_sizes(pois)), pois


def backdoor_audit(cfg: AuditConfig, target: str | int, spec: PoisonSpec, *, defense: bool = False,
                   flag_fraction: float = 0.02, defense_tests: int = 128, defense_iterations: int = 300,
                   decree: bool = False, decree_steps: int = 300,
                   clean_run: tuple[torch.nn.Module, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``clean_run``: an (encoder, summary) already pretrained on ``cfg.train`` with the same settings (reused).

    The report's ``mechanism``: the number of training pairs in which the attack's mechanism occurred,
    counted during the victim's training (:class:`selfsup.security.mechanism.MechanismCounter`), and beside
    it the Monte-Carlo expectation for the same recipe and number of samples (a check of the counter).
    """
    from selfsup.security.mechanism import MechanismCounter, expected_count
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
    manifest = build_poisoned_folder(folder, train.images, train.labels, train.classes, train.paths,
                                     target=target, spec=spec, where=cfg.train)
    keep = test.labels != tid
    trig = triggered_test(manifest, folder, np.asarray(test.images)[keep], spec, cfg.seed + 1)
    geom, pois = mechanism_setup(manifest, folder, cfg)
    counter = MechanismCounter(geom)
    _log("pretraining the victim on the poisoned folder")
    victim, vsum = run_pretrain(cfg, str(folder / "images"), out / "victim", on_views=counter)
    if clean_run is None:
        _log("pretraining the reference encoder on the clean data")
        clean_run = run_pretrain(cfg, cfg.train, out / "clean")
    clean, csum = clean_run
    mech = counter.summary()
    try:
        vc = victim_config(cfg, str(folder / "images"), out / "victim")
        from selfsup.training.loop import resolve_config

        views = [(v.size, v.scale, v.ratio) for v in _victim_recipe(vc, resolve_config)]
        seen = float(vsum["steps"]) * vc.train.batch_size / max(1, len(pois))
        mech["expected"] = expected_count(geom, views, seen, n=400, seed=cfg.seed)
    except Exception as e:  # the expectation is a cross-check; its failure must not lose the audit
        mech["expected"] = {"error": f"{type(e).__name__}: {e}"}
    report: dict[str, Any] = {
        "kind": "backdoor", "attack": spec.attack, "target": train.classes[tid], "config": asdict(cfg),
        "spec": asdict(spec), "n_clean": manifest["n_clean"], "n_poison": manifest["n_poison"],
        "n_images": manifest["n_images"], "replaces_originals": manifest["replaces_originals"],
        "trigger_size": manifest["trigger_size"], "victim": evaluate_encoder(victim, cfg, train, test, trig, tid),
        "clean": evaluate_encoder(clean, cfg, train, test, trig, tid), "mechanism": mech,
        "victim_steps": vsum["steps"], "clean_steps": csum["steps"],
    }
    report["reading"] = audit_reading(report)
    if decree:
        report["decree"] = decree_report(victim, clean, train, cfg, steps=decree_steps)
    if defense:
        report["defense"] = defense_report(victim, pois, manifest, cfg, flag_fraction=flag_fraction,
                                           tests=defense_tests, iterations=defense_iterations,
                                           after=lambda enc: evaluate_encoder(enc, cfg, train, test, trig, tid))
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "audit.json", json.dumps(report, indent=2))
    return report


def shadow_sample(images: Any, seed: int, n: int = 1000) -> np.ndarray:
    """``n`` clean images drawn uniformly without replacement (seeded), DECREE's shadow set. A random draw, as
    the official code's ``sample(0.005)`` of the test set: a folder's first rows are one class (class folders
    are read in order), and a single-class shadow set makes every encoder's embeddings look collapsed."""
    rows = np.sort(np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False))
    return np.asarray(images[rows])


def decree_report(victim: torch.nn.Module, clean: torch.nn.Module | dict[str, Any], train: Any, cfg: AuditConfig, *,
                  steps: int = 300) -> dict[str, Any]:
    """DECREE's verdict on the victim and on the clean encoder, from :func:`shadow_sample` of the clean training
    images; ``clean`` may be the clean encoder's verdict from an earlier call (it is then reused, not recomputed)."""
    from selfsup.security.decree import decree_verdict

    _log("DECREE trigger inversion on the victim" + ("" if isinstance(clean, dict) else " and the clean encoder"))
    shadow = shadow_sample(train.images, cfg.seed)
    kw = {"image_size": cfg.image_size, "seed": cfg.seed, "steps": steps}
    return {"victim": decree_verdict(victim, shadow, **kw),
            "clean": clean if isinstance(clean, dict) else decree_verdict(clean, shadow, **kw)}


def defense_report(victim: torch.nn.Module, pois: Any, manifest: dict[str, Any], cfg: AuditConfig, *,
                   flag_fraction: float = 0.02, tests: int = 128, iterations: int = 300,
                   after: Any = None) -> dict[str, Any]:
    """PatchSearch on the poisoned set with the victim encoder: precision/recall of the flagged images against
    the manifest (the classifier's and the poison scores' alone), then, when ``after`` (encoder -> metrics) is
    given, a retrain without the flagged images under the same settings and ``after`` of the retrained encoder."""
    from selfsup.security.defense import flag_top, patchsearch_scores, poison_classifier, precision_recall

    out = Path(cfg.out)
    files = {Path(r["file"]).name: r for r in manifest["files"]}
    is_poison = np.array([bool(files[Path(p).name]["poison"]) for p in pois.paths])
    _log("PatchSearch: clustering, Grad-CAM windows and the iterative poison-score search (victim encoder)")
    ps = patchsearch_scores(victim, pois.images, image_size=cfg.image_size, seed=cfg.seed, n_test=tests)
    _log("PatchSearch: training the poison classifier on the top-scored windows")
    pc = poison_classifier(pois.images, ps["scores"], ps["boxes"], image_size=cfg.image_size, window=ps["window"],
                           iterations=iterations, seed=cfg.seed)
    flagged = pc["flagged"]
    report: dict[str, Any] = {
        "method": ps["method"], "window": ps["window"], "clusters": ps["n_clusters"], "test_images": ps["n_test"],
        "search_rounds": ps["rounds"], "scored": int(ps["scored"].sum()),
        "classifier_val_accuracy": pc["val_accuracy"], **precision_recall(flagged, is_poison),
        # the poison scores alone (no classifier): the top flag_fraction, for the cost of skipping step 5
        "scores_only": {"flag_fraction": flag_fraction, **precision_recall(flag_top(ps["scores"], flag_fraction),
                                                                             is_poison)}}
    if after is not None:
        kept = [pois.images[i] for i in np.flatnonzero(~flagged)]
        filt = write_folder(out / "filtered" / "images", kept)
        _log(f"retraining without {int(flagged.sum())} flagged images")
        retrained, _ = run_pretrain(cfg, str(filt), out / "retrained")
        report["after"] = after(retrained)
    return report


def _victim_recipe(pc: Any, resolve_config: Any) -> list[Any]:
    """The victim method's view specs, from the method built exactly as the training loop builds it."""
    from selfsup.models.backbones import build_backbone

    pc, spec, method_cfg = resolve_config(pc)
    method = spec.build(build_backbone(pc.backbone, pc.data.image_size), method_cfg, image_size=pc.data.image_size)
    return list(method.view_recipe.views)


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
    d = delta.numpy()

    def _save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, d)

    atomic_write(out / "delta.npy", _save)
    report = {"kind": "adversarial", "eps": eps, "steps": steps, "loss_first": hist[0], "loss_last": hist[-1],
              "config": asdict(cfg), **res}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
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
        ytr, yte = as_tensor(train.labels, "train labels"), as_tensor(test.labels, "test labels")
        nc = max(train.num_classes, test.num_classes)
        knn = knn_accuracy(ftr, ytr, fte, yte, k=min(knn_k, len(ftr)), temperature=0.1, num_classes=nc)["top1"]
        lin = clean_accuracy(fit_linear_head(ftr, ytr, nc).predict(fte), yte)
        return {"knn_top1": float(knn), "linear_top1": lin}

    diff = np.abs(prot["images"].astype(np.int16) - np.asarray(train.images).astype(np.int16)).max()
    report = {"kind": "unlearnable", "method": "unlearnable-clusters (Zhang et al. CVPR 2023)", "eps": eps,
              "budget_pixels": prot["budget_pixels"], "max_pixel_change": int(diff), "clusters": clusters,
              "surrogate": surrogate or "encoder pretrained on the clean data", "config": asdict(cfg),
              "clean": score(clean_enc), "protected": score(prot_enc)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    return report


__all__ = ["AuditConfig", "adversarial_audit", "backdoor_audit", "run_pretrain", "unlearnable_audit", "write_folder"]
