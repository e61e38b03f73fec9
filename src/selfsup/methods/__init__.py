"""Method registry. Adding a method: one new file here, its test, and one import line below."""

from .api import Batch, MethodSpec, Progress, Recipe, StepOutput, register, registry

__all__ = ["Batch", "MethodSpec", "Progress", "Recipe", "StepOutput", "register", "registry"]
