"""The in-memory vector indexes (memory/vectors.py) against a brute-force cosine ranking,
through adds, replacements and removals, and the switch to HNSW past HNSW_ABOVE."""

from __future__ import annotations

import numpy as np
import pytest

from freehold_serving.memory import vectors
from freehold_serving.memory.vectors import ExactIndex, HnswIndex

DIM = 16


def brute(live: dict[int, np.ndarray], query: np.ndarray, k: int) -> list[int]:
    def cosine(v: np.ndarray) -> float:
        norm = float(np.linalg.norm(v)) or 1.0
        return float(np.float32(v @ query / norm))

    return sorted(live, key=lambda key: (-cosine(live[key]), key))[:k]


def test_the_exact_index_ranks_as_brute_force_through_adds_and_removals() -> None:
    rng = np.random.default_rng(3)
    live = {key: rng.standard_normal(DIM).astype(np.float32) for key in range(0, 300, 3)}
    index = ExactIndex(DIM, list(live), np.stack(list(live.values())))
    for step in range(400):
        key = int(rng.integers(0, 400))
        if step % 3 == 0 and key in live:
            index.remove(key)
            del live[key]
        else:  # a new key, or a new vector for one present
            live[key] = rng.standard_normal(DIM).astype(np.float32) * 3
            index.add(key, live[key])
        if step % 25 == 0:
            query = rng.standard_normal(DIM).astype(np.float32)
            for k in (1, 10, 500):
                assert index.search(query, k) == brute(live, query, k)
        assert len(index) == len(live)
        assert all(key in index for key in live)
    assert 401 not in index
    index.remove(401)  # absent: nothing happens
    assert len(index) == len(live)


def test_ties_are_broken_by_the_lower_key_and_a_zero_vector_scores_zero() -> None:
    same = np.ones(DIM, dtype=np.float32)
    index = ExactIndex(DIM, [9, 4, 7], np.stack([same, same * 2, np.zeros(DIM, np.float32)]))
    assert index.search(same, 2) == [4, 9]
    assert index.search(-same, 3) == [7, 4, 9]  # 0 beats -1
    assert ExactIndex(DIM, [], np.zeros((0, DIM), np.float32)).search(same, 5) == []


def test_a_subject_past_the_threshold_gets_an_hnsw_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vectors, "HNSW_ABOVE", 50)
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((50, DIM)).astype(np.float32)
    index = vectors.build(DIM, list(range(50)), matrix)
    assert isinstance(index, ExactIndex)
    assert vectors.grown(index, DIM) is index
    index.add(50, rng.standard_normal(DIM).astype(np.float32))
    graph = vectors.grown(index, DIM)
    assert isinstance(graph, HnswIndex) and len(graph) == 51
    query = matrix[7]
    assert graph.search(query, 1) == [7]
    assert vectors.build(DIM, list(range(51)), np.vstack([matrix, matrix[:1]])).nbytes > 0
    graph.remove(7)
    assert 7 not in graph and graph.search(query, 1) != [7]
