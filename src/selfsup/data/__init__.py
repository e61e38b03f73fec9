"""Image data: folders (class-folder trees or plain), builtin datasets, and the uint8 memmap cache.

``open_dataset(spec, size)`` is the single entry point; see :mod:`selfsup.data.folder` for the layout and
decoding rules, :mod:`selfsup.data.cache` for the cache and :mod:`selfsup.data.builtin` for ``builtin:``.
"""

from selfsup.data.builtin import export_builtin, list_builtin
from selfsup.data.cache import default_cache_dir
from selfsup.data.folder import IMAGE_EXTENSIONS, ImageDataset, decode_image, open_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "decode_image",
    "default_cache_dir",
    "export_builtin",
    "list_builtin",
    "open_dataset",
]
