"""What a backdoor audit's numbers mean: where triggered images go, the trigger->target cosines and the verdict.

Pure functions of features, predictions and report dicts (no training, no files), used by
:mod:`selfsup.security.audit` and the benchmarks that re-read finished audits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from selfsup.security.metrics import LinearHead, attack_success_rate, clean_accuracy


def probe_readout(head: LinearHead, test_feats: torch.Tensor, test_labels: np.ndarray, trig_feats: torch.Tensor,
                  tid: int, classes: list[str]) -> dict[str, Any]:
    """A fitted probe on one encoder's test features: CA on every test image, ASR of the triggered non-target
    ones (``trig_feats``, in the order of ``test_labels != tid``) and :func:`prediction_shares` of the triggered
    and the untriggered non-target images."""
    pred_test, pred_trig = head.predict(test_feats), head.predict(trig_feats)
    keep = test_labels != tid
    return {"ca": clean_accuracy(pred_test, test_labels), "asr": attack_success_rate(pred_trig, test_labels[keep], tid),
            "triggered_shares": prediction_shares(pred_trig, classes),
            "untriggered_shares": prediction_shares(pred_test[torch.as_tensor(keep)], classes)}


def prediction_shares(pred: torch.Tensor, classes: list[str]) -> dict[str, float]:
    """% of ``pred`` that names each class (every class present, in ``classes`` order)."""
    counts = np.bincount(np.asarray(pred.cpu()), minlength=len(classes))[: len(classes)]
    return {c: float(100.0 * n / max(1, len(pred))) for c, n in zip(classes, counts, strict=True)}


def diversion(report: dict[str, Any]) -> dict[str, Any] | None:
    """The non-target class whose share of the triggered images grew most on the victim, against the same
    trigger on the clean encoder: ``{"class", "victim", "clean", "gain"}`` (shares in %), or None when the
    report has no prediction shares (audits written before they were recorded)."""
    v, c = report["victim"].get("triggered_shares"), report["clean"].get("triggered_shares")
    if not v or not c:
        return None
    gains = {k: v[k] - c.get(k, 0.0) for k in v if k != report.get("target")}
    if not gains:
        return None
    k = max(gains, key=lambda x: gains[x])
    return {"class": k, "victim": v[k], "clean": c.get(k, 0.0), "gain": gains[k]}


def target_cosines(train_feats: torch.Tensor, is_target: np.ndarray, trig_feats: torch.Tensor,
                   clean_feats: torch.Tensor) -> dict[str, float]:
    """The trigger->target cosines of :func:`selfsup.security.audit.evaluate_encoder` (plain and centred) from features."""
    import torch.nn.functional as F

    is_t = torch.as_tensor(is_target)
    mu = F.normalize(train_feats[is_t].float().mean(0), dim=0)
    trig_n, clean_n = F.normalize(trig_feats.float(), dim=1), F.normalize(clean_feats.float(), dim=1)
    tr_n = F.normalize(train_feats.float(), dim=1)
    centre = tr_n.mean(0)
    direction = F.normalize(tr_n[is_t].mean(0) - centre, dim=0)
    return {"cos_trigger_target": float((trig_n @ mu).mean()), "cos_clean_target": float((clean_n @ mu).mean()),
            "cos_trigger_target_centred": float((F.normalize(trig_n - centre, dim=1) @ direction).mean()),
            "cos_clean_target_centred": float((F.normalize(clean_n - centre, dim=1) @ direction).mean())}


TOOK_RATIO, TOOK_POINTS = 3.0, 20.0  # "took": ASR at least 3x and 20 points above the clean encoder's
MOVED_POINTS = 5.0  # a partial effect: ASR at least 5 points above the clean encoder's


def audit_reading(report: dict[str, Any]) -> dict[str, Any]:
    """What a backdoor audit's numbers mean, as a verdict and one sentence a user can act on.

    verdict: ``took`` (victim ASR >= 3x and >= 20 points above the same trigger's ASR on the clean encoder),
    ``partial`` (>= 5 points above), ``diverted`` (ASR did not move, but the trigger raised the share of
    triggered images the probe gives one other class by >= 20 points over the clean encoder: the trigger
    became a feature that controls the output, pointed at the wrong class; see :func:`diversion`),
    ``no-chance`` (the mechanism never occurred during training: the audit tested nothing), or ``not-learned``
    (the mechanism occurred but ASR stayed at the clean encoder's level: this training budget did not plant the
    backdoor; a longer run may, so it is no evidence of resistance).
    ``net_cosine_shift``: how much closer triggered non-target images moved to the target class than untriggered
    ones, on the victim relative to the clean encoder (> 0: the trigger points toward the target), from the
    centred cosines (:func:`selfsup.security.audit.evaluate_encoder`) when the report has them, else the plain ones.
    """
    v, c, m = report["victim"], report["clean"], report.get("mechanism", {})
    gap = v["asr"] - c["asr"]
    sfx = "_centred" if "cos_trigger_target_centred" in v and "cos_trigger_target_centred" in c else ""

    def pull(r: dict[str, Any]) -> float:
        return float(r["cos_trigger_target" + sfx] - r["cos_clean_target" + sfx])

    shift = pull(v) - pull(c)
    pairs = int(m.get("mechanism_pairs", -1))
    div = diversion(report)
    if v["asr"] >= TOOK_RATIO * c["asr"] and gap >= TOOK_POINTS:
        verdict, text = "took", (f"the backdoor took: ASR {v['asr']:.1f}% against {c['asr']:.1f}% for the same "
                                 "trigger on a clean encoder")
    elif pairs == 0:
        verdict, text = "no-chance", ("the attack never had its chance (its mechanism occurred in no training "
                                      "pair): this audit says nothing about the encoder's resistance")
    elif gap >= MOVED_POINTS:
        verdict, text = "partial", (f"a partial backdoor: ASR {v['asr']:.1f}% against {c['asr']:.1f}% on a clean "
                                    f"encoder, below the 3x / +20-point mark of one that took")
    elif div is not None and div["gain"] >= TOOK_POINTS:
        verdict, text = "diverted", (
            f"the encoder learned the trigger, but not as the target: it sends {div['victim']:.1f}% of triggered "
            f"images to '{div['class']}' ({div['clean']:.1f}% on a clean encoder), and ASR stayed at "
            f"{v['asr']:.1f}% ({c['asr']:.1f}% clean). The trigger controls this encoder's output; whether more "
            "training moves it to the target, this run cannot say")
    else:
        seen = f"in {pairs} training pair{'' if pairs == 1 else 's'}" if pairs > 0 else "(not counted)"
        verdict, text = "not-learned", (f"the mechanism occurred {seen} but ASR stayed at the clean encoder's "
                                        f"level ({v['asr']:.1f}% vs {c['asr']:.1f}%): this training budget did not "
                                        "plant the backdoor; longer training may, so this is no evidence that the "
                                        "method resists the attack")
    return {"verdict": verdict, "text": text, "asr_gap": gap, "net_cosine_shift": shift,
            "cosines": "centred" if sfx else "plain", "diversion": div}
