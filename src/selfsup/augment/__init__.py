"""Views: augmentation recipes, batched per-sample tensor ops, the fused CPU kernel, and MIM masking."""
