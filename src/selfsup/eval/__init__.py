"""Evaluation of frozen encoders: feature extraction, weighted kNN, linear probe, baselines."""

from selfsup.eval.baselines import evaluate_with_baselines, random_encoder_like, reinitialized_copy
from selfsup.eval.features import (
    autocast_context,
    cached_features,
    checkpoint_key,
    extract_features,
    pixel_features,
    raw_pixels,
    resolve_precision,
)
from selfsup.eval.knn import knn_accuracy, knn_predict, topk_accuracy
from selfsup.eval.linear import fit_standardizer, linear_probe, standardize_features

__all__ = [
    "autocast_context",
    "cached_features",
    "checkpoint_key",
    "evaluate_with_baselines",
    "extract_features",
    "fit_standardizer",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "pixel_features",
    "random_encoder_like",
    "raw_pixels",
    "reinitialized_copy",
    "resolve_precision",
    "standardize_features",
    "topk_accuracy",
]
