"""Method registry. Adding a method: one new file here, its test, and one import line below."""

from . import byol, simclr  # noqa: F401  (one line per method: importing registers it)
from . import famt, mae, simmim  # noqa: F401  (masked image modelling: MAE, SimMIM and their FAMT variants)
from . import barlowtwins, dino, mocov2, mocov3, nnclr, rotnet, simsiam, swav, vicreg  # noqa: F401  (method zoo)
from .api import Batch, MethodSpec, Progress, Recipe, StepOutput, register, registry

__all__ = ["Batch", "MethodSpec", "Progress", "Recipe", "StepOutput", "register", "registry"]
