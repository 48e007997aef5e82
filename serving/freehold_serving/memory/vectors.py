"""Vector search over one subject's current records, in a replica's memory.

Why two kinds: most subjects hold hundreds to a few thousand records, and for those an
exact search (one matrix product over the subject's unit vectors) is both faster than
walking an HNSW graph (0.05 ms against usearch's 0.4 ms per query for 1,000 x 384 on
this machine, most of it the call's overhead) and exact (recall 1.0 by construction),
with no graph in memory. Past `HNSW_ABOVE` records the product grows linearly while the
graph does not, so such a subject gets a usearch HNSW index (cosine, f32).

Both hold only what the database already holds (the subject's vectors, opened with its
key), keyed by version rowid; the store keeps them in step with every replica's writes.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

# Above this many records a subject's vectors go into an HNSW graph (approximate). At
# 8,192 x 384 an exact search is about 0.5 ms on one core, where usearch's is flat.
HNSW_ABOVE = 8192


class VectorIndex(Protocol):
    def __len__(self) -> int: ...
    def __contains__(self, key: int) -> bool: ...
    def add(self, key: int, vector: NDArray[np.float32]) -> None: ...
    def remove(self, key: int) -> None: ...
    def search(self, query: NDArray[np.float32], k: int) -> list[int]: ...
    @property
    def nbytes(self) -> int: ...


def _unit(matrix: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0  # a zero vector stays zero: it scores 0 against anything
    out: NDArray[np.float32] = (matrix / norms).astype(np.float32, copy=False)
    return out


class ExactIndex:
    """Unit vectors in one growable matrix; removal moves the last row into the gap."""

    def __init__(self, dimension: int, keys: list[int], matrix: NDArray[np.float32]) -> None:
        count = len(keys)
        capacity = max(16, count + count // 4)
        self._matrix: NDArray[np.float32] = np.zeros((capacity, dimension), dtype=np.float32)
        self._keys: NDArray[np.int64] = np.zeros(capacity, dtype=np.int64)
        if count:
            self._matrix[:count] = _unit(matrix)
            self._keys[:count] = keys
        self._count = count
        self._at = {key: i for i, key in enumerate(keys)}

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: int) -> bool:
        return key in self._at

    @property
    def nbytes(self) -> int:
        # The dict's entries (~100 bytes each, measured with sys.getsizeof and the ints).
        return self._matrix.nbytes + self._keys.nbytes + 100 * len(self._at)

    def add(self, key: int, vector: NDArray[np.float32]) -> None:
        at = self._at.get(key)
        if at is None:
            if self._count == len(self._keys):
                grow = max(16, self._count // 2)
                self._matrix = np.concatenate(
                    (self._matrix, np.zeros((grow, self._matrix.shape[1]), dtype=np.float32))
                )
                self._keys = np.concatenate((self._keys, np.zeros(grow, dtype=np.int64)))
            at = self._count
            self._count += 1
            self._at[key] = at
            self._keys[at] = key
        self._matrix[at] = _unit(vector.reshape(1, -1))[0]

    def remove(self, key: int) -> None:
        at = self._at.pop(key, None)
        if at is None:
            return
        last = self._count - 1
        if at != last:
            moved = int(self._keys[last])
            self._matrix[at] = self._matrix[last]
            self._keys[at] = moved
            self._at[moved] = at
        self._count = last

    def search(self, query: NDArray[np.float32], k: int) -> list[int]:
        """The keys of the `k` nearest by cosine, best first (ties: lower key first)."""
        count = self._count
        k = min(k, count)
        if k <= 0:
            return []
        # The query's norm scales every score alike: ranking needs no division by it.
        scores = self._matrix[:count] @ query.astype(np.float32, copy=False)
        if k < count:
            best = np.argpartition(-scores, k - 1)[:k]
            # Whatever ties the k-th score competes on the key too.
            best = np.flatnonzero(scores >= scores[best].min())
        else:
            best = np.arange(count)
        order = np.lexsort((self._keys[best], -scores[best]))[:k]
        return [int(key) for key in self._keys[best[order]].tolist()]

    def items(self) -> tuple[list[int], NDArray[np.float32]]:
        return self._keys[: self._count].tolist(), self._matrix[: self._count]


class HnswIndex:
    """usearch's HNSW graph, for the subjects too large for an exact search."""

    def __init__(self, dimension: int, keys: list[int], matrix: NDArray[np.float32]) -> None:
        from usearch.index import Index

        self._index: Any = Index(ndim=dimension, metric="cos", dtype="f32")
        if keys:
            self._index.add(np.array(keys, dtype=np.uint64), matrix, threads=1)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: int) -> bool:
        return key in self._index

    @property
    def nbytes(self) -> int:
        return int(self._index.memory_usage)

    def add(self, key: int, vector: NDArray[np.float32]) -> None:
        if key in self._index:
            self._index.remove(key)
        self._index.add(key, vector)

    def remove(self, key: int) -> None:
        if key in self._index:
            self._index.remove(key)

    def search(self, query: NDArray[np.float32], k: int) -> list[int]:
        k = min(k, len(self._index))
        if k <= 0:
            return []
        return [int(key) for key in self._index.search(query, k).keys]


def build(dimension: int, keys: list[int], matrix: NDArray[np.float32]) -> VectorIndex:
    if len(keys) > HNSW_ABOVE:
        return HnswIndex(dimension, keys, matrix)
    return ExactIndex(dimension, keys, matrix)


def grown(index: VectorIndex, dimension: int) -> VectorIndex:
    """`index`, or an HNSW graph of its vectors once an exact one outgrew HNSW_ABOVE
    through writes followed one by one."""
    if isinstance(index, ExactIndex) and len(index) > HNSW_ABOVE:
        return HnswIndex(dimension, *index.items())
    return index
