"""Image data: folders (class-folder trees or plain), builtin datasets, and the uint8 memmap cache.

Images keep their own aspect ratio (shorter side = the dataset's size); see :mod:`selfsup.data.images`
for the dense and ragged representations and :func:`gather` for training batches.

``open_dataset(spec, size)`` is the single entry point; see :mod:`selfsup.data.folder` for the layout and
decoding rules, :mod:`selfsup.data.cache` for the cache and :mod:`selfsup.data.builtin` for ``builtin:``.
"""

from selfsup.data.builtin import export_builtin, list_builtin
from selfsup.data.cache import default_cache_dir, default_cache_size
from selfsup.data.folder import IMAGE_EXTENSIONS, decode_image, decode_native, open_dataset
from selfsup.data.images import MAX_ASPECT, ImageDataset, RaggedImages, gather, spread_rows

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT",
    "ImageDataset",
    "RaggedImages",
    "decode_image",
    "decode_native",
    "default_cache_dir",
    "default_cache_size",
    "export_builtin",
    "gather",
    "spread_rows",
    "list_builtin",
    "open_dataset",
]
