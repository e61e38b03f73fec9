"""DINO self-distillation loss and its center (Caron et al. 2021, arXiv 2104.14294)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO cross-entropy between sharpened, centered teacher and student distributions (Sec. 3.1, Eq. 1-3,
    Alg. 1):

        P_t = softmax((g_t(x) - c) / tau_t),  P_s = softmax(g_s(x') / tau_s)
        L = mean over pairs (t-view v, s-view v' != v) of  mean_b  -sum_k P_t[k] log P_s[k]

    student: one [B, K] tensor of logits per view (global views first, then local views);
    teacher: one [B, K] tensor per global view, aligned with ``student[:len(teacher)]`` (no gradient);
    center: [1, K] or [K]. Pairs where teacher and student see the same view are skipped.
    Computed in float32. Returns a scalar.
    """
    if len(teacher) < 1 or len(student) < 2:
        raise ValueError(f"dino_loss needs >= 1 teacher and >= 2 student views, got {len(teacher)}, {len(student)}")
    c = center.detach().float().reshape(1, -1)
    t_probs = [F.softmax((t.detach().float() - c) / teacher_temp, dim=-1) for t in teacher]
    s_logp = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total = s_logp[0].new_zeros(())
    n_terms = 0
    for it, q in enumerate(t_probs):
        for iv, logp in enumerate(s_logp):
            if iv == it:
                continue  # the student never predicts the teacher's own view
            total = total + torch.sum(-q * logp, dim=-1).mean()
            n_terms += 1
    return total / n_terms


@torch.no_grad()
def dino_center_update(center: torch.Tensor, teacher: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """c <- m c + (1 - m) mean_b g_t(x_b) over the global batch (Sec. 3.1, Eq. 4; m = 0.9 in main_dino.py).

    center: [1, K]; teacher: [N, K] teacher logits of all global views of the local batch. The batch mean is
    averaged over processes (equal local batches), so every process keeps the same center.
    Returns the new center (same shape and dtype as ``center``).
    """
    batch_center = distributed.all_reduce_mean(teacher.detach().float().mean(dim=0, keepdim=True))
    new = center.float() * momentum + batch_center.reshape(center.shape) * (1 - momentum)
    return new.to(center.dtype)


def teacher_temperature(epoch_float: float, warmup: float = 0.04, final: float = 0.07, warmup_epochs: float = 30) -> float:
    """Linear warm-up of the teacher temperature from ``warmup`` to ``final`` over the first
    ``warmup_epochs`` epochs, then constant (Sec. 4.1/App.; main_dino.py ``teacher_temp_schedule``, which
    steps once per epoch: we interpolate per step)."""
    if warmup_epochs <= 0 or epoch_float >= warmup_epochs:
        return final
    return warmup + (final - warmup) * max(0.0, epoch_float) / warmup_epochs
