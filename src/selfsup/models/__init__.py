"""Encoders and the modules around them: backbones, projection heads, EMA teachers, external weights."""
