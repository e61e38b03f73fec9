"""selfsup: self-supervised visual representation learning that runs well on a CPU.

See ``selfsup.api`` for the Python API (it mirrors the ``selfsup`` command line).
"""

from __future__ import annotations

__version__ = "0.1.0"

from selfsup.api import PretrainConfig, embed, evaluate, load_encoder, pretrain, report, search

__all__ = ["pretrain", "evaluate", "embed", "search", "report", "load_encoder", "PretrainConfig", "__version__"]
