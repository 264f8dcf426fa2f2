"""Array helpers of the feature layer: integer grouping, and one native thread for the small
numeric steps of feature building and reward training.

numpy's OpenBLAS and scikit-learn's OpenMP pools start a thread per core.  On the snapshot's and
the stacked regression's sizes (thousands of items, 10⁵ rows) the threads cost more than they
give, most of all on a busy machine (bench on 2 shared cores: k-means 2.0 s → 0.14 s, truncated
SVD 0.5 s → 0.1 s, logistic regression on 200k rows 2.2 s → 0.8 s), and one thread makes the
floats independent of the core count.  XGBoost shares the OpenMP runtime, so training calls it
outside the block: it keeps the threads of its ``nthread``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


def group_codes(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True)`` of integer keys; by counting when their range is small."""
    key = np.asarray(key, np.int64)
    if len(key) == 0:
        return key.copy(), np.zeros(0, np.int64)
    lo, hi = int(key.min()), int(key.max())
    if hi - lo > 4 * len(key) + 1024:
        distinct, inverse = np.unique(key, return_inverse=True)
        return distinct, inverse.astype(np.int64).ravel()
    present = np.bincount(key - lo, minlength=hi - lo + 1) > 0
    return np.nonzero(present)[0] + lo, (np.cumsum(present) - 1)[key - lo]


@contextmanager
def native_threads(limit: int = 1) -> Iterator[None]:
    """Limit the BLAS and OpenMP thread pools to ``limit`` threads inside the block (process-wide)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit):
        yield
