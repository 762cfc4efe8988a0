"""Bounded oneDNN caches, so RAM does not grow with every edit (issue 20).

Edits train on a bf16 copy of the model (precision.py), whose matrix products on the CPU go
through oneDNN. oneDNN keeps every primitive it builds (JIT code, and through ideep the reordered
operands) in two caches of 1,024 entries each, keyed by shape. Every edit brings new shapes (its
rows and tokens), so the caches only ever grow: hundreds of KB per new shape, megabytes per
edit, held until 1,024 shapes have been seen in each. One edit's training reuses a few dozen
shapes step after step; CAPACITY keeps those and lets older edits' shapes go.

oneDNN and ideep read these variables once, when they first build a primitive: set them before
any bf16 product runs. Importing memoir_core does; a value the operator set is kept.
"""

from __future__ import annotations

import os

CAPACITY = 64
VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's; ideep's (ATen's)


def bound_caches(capacity: int = CAPACITY) -> None:
    for name in VARIABLES:
        os.environ.setdefault(name, str(capacity))
