"""The in-memory keyword index (BM25) against a direct computation of the formula, through
adds, removals and the rebuilds they trigger."""

from __future__ import annotations

import math
import random

from freehold_serving.memory.keywords import K1, B, KeywordIndex


def bm25(docs: dict[int, dict[str, int]], tokens: list[str]) -> dict[int, float]:
    n = len(docs)
    average = sum(sum(t.values()) for t in docs.values()) / n
    scores: dict[int, float] = {}
    for token in dict.fromkeys(tokens):
        df = sum(1 for t in docs.values() if token in t)
        if not df:
            continue
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for rowid, terms in docs.items():
            if token in terms:
                tf, length = terms[token], sum(terms.values())
                score = idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / average))
                scores[rowid] = scores.get(rowid, 0.0) + score
    return scores


def doc(rng: random.Random) -> dict[str, int]:
    words = [f"w{int(rng.paretovariate(1.2)) % 300}" for _ in range(rng.randint(1, 25))]
    return {w: words.count(w) for w in set(words)}


def test_bm25_matches_the_formula_through_adds_removals_and_rebuilds() -> None:
    rng = random.Random(11)
    docs = {rowid: doc(rng) for rowid in range(1, 400)}
    index = KeywordIndex(docs)
    next_id = 1000
    for step in range(600):
        if rng.random() < 0.5 and docs:
            victim = rng.choice(sorted(docs))
            del docs[victim]
            index.remove(victim)
        else:
            docs[next_id] = doc(rng)
            index.add(next_id, docs[next_id])
            next_id += 1
        if step % 25 == 0:
            query = [f"w{rng.randint(0, 40)}" for _ in range(3)]
            got = index.search(query, 10)
            scores = bm25(docs, query)
            want = sorted(scores, key=lambda r: (-scores[r], r))[:10]
            # Position by position the same score (float32 against float64: records whose
            # scores tie within 1e-4 may swap).
            assert len(got) == len(want), (step, got, want)
            for a, b in zip(got, want, strict=True):
                assert abs(scores[a] - scores[b]) < 1e-4, (step, got, want)
    assert len(index) == len(docs)
    assert all(r in index for r in docs) and 999_999 not in index


def test_an_empty_or_unknown_query_finds_nothing() -> None:
    index = KeywordIndex()
    assert index.search(["a"], 5) == []
    index.add(7, {"a": 2})
    index.add(8, {})  # a record without words is not indexed
    assert index.search(["a"], 5) == [7] and index.search(["b"], 5) == []
    index.remove(7)
    assert index.search(["a"], 5) == [] and len(index) == 0
