"""Method registry. Adding a method: one new file here, its test, and one import line below."""

from selfsup.methods import byol, simclr  # noqa: F401  (one line per method: importing registers it)
from selfsup.methods import famt, mae, simmim  # noqa: F401  (masked image modelling: MAE, SimMIM and their FAMT variants)
from selfsup.methods import barlowtwins, dino, mocov2, mocov3, nnclr, rotnet, simsiam, swav, vicreg  # noqa: F401  (method zoo)
from selfsup.methods.api import Batch, Method, MethodSpec, Progress, Recipe, StepOutput, register, registry

__all__ = ["Batch", "Method", "MethodSpec", "Progress", "Recipe", "StepOutput", "register", "registry"]
