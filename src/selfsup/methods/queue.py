"""Methods that keep a feature queue in registered buffers (checkpointed with the method): NNCLR's support set
and SwAV's queue of past embeddings."""

from __future__ import annotations

import torch

from selfsup.methods.api import MethodModule


class QueueMethod(MethodModule):
    """A method that keeps a queue of features: ``queue`` ``[*lead, size, dim]`` of feature rows, ``queue_ptr``
    ``[*lead, 1]`` (the next row to write) and ``queue_filled`` ``[*lead, 1]`` (how many rows hold real entries);
    written by :func:`selfsup.losses.contrastive.enqueue`."""

    queue: torch.Tensor
    queue_ptr: torch.Tensor
    queue_filled: torch.Tensor

    def init_queue(self, *shape: int) -> None:
        """Register the three buffers, empty, for a queue of ``shape`` (``(size, dim)`` or ``(*lead, size, dim)``)."""
        lead = shape[:-2]
        self.register_buffer("queue", torch.zeros(*shape))
        self.register_buffer("queue_ptr", torch.zeros(*lead, 1, dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros(*lead, 1, dtype=torch.long))
