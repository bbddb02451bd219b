"""Data: sources, splits, partitions, features and the on-disk image cache.

Sources defined in modules of their own register themselves when the package is imported.
"""

from . import imagenet as _imagenet  # noqa: F401  (registers tinyimagenet and tinyimagenet-val)
