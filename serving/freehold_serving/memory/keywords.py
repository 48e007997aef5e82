"""Keyword search over one subject's current records, in a replica's memory (BM25).

Why in memory: on PostgreSQL, ranking a subject's matches in the database read every
matching row's terms from its own heap page (a subject's thousand records sharing their
words made a hybrid search 9 ms at a million records); here the same ranking is a few
array operations. Like the vector index, it holds only what the database already holds
(keyed hashes of words, never words), is built on a subject's first search and follows
the writes of every replica through the subject's revision (store.py).

The layout is compact because every replica holds every searched subject: postings of the
records present at the last build in arrays (token -> [record position, term frequency]),
records written since in a small dict, removals as a mask; it is rebuilt when changes
pile up. Ranking is Okapi BM25 (k1 1.2, b 0.75), as SQLite's FTS5 ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

K1, B = 1.2, 0.75
Terms = Mapping[str, int]  # token -> term frequency in one record


class KeywordIndex:
    def __init__(self, docs: Mapping[int, Terms] | None = None) -> None:
        self._build(dict(docs or {}))

    def _build(self, docs: Mapping[int, Terms]) -> None:
        self._rowids: NDArray[np.int64] = np.array(sorted(docs), dtype=np.int64)
        self._lengths: NDArray[np.float32] = np.array(
            [sum(docs[r].values()) for r in self._rowids.tolist()], dtype=np.float32
        )
        self._alive: NDArray[np.bool_] = np.ones(len(self._rowids), dtype=bool)
        vocab: dict[str, int] = {}
        tokens: list[int] = []
        positions: list[int] = []
        freqs: list[int] = []
        for position, rowid in enumerate(self._rowids.tolist()):
            for token, tf in docs[rowid].items():
                tokens.append(vocab.setdefault(token, len(vocab)))
                positions.append(position)
                freqs.append(tf)
        order = np.argsort(np.array(tokens, dtype=np.int32), kind="stable")
        self._positions: NDArray[np.int32] = np.array(positions, dtype=np.int32)[order]
        self._tf: NDArray[np.float32] = np.array(freqs, dtype=np.float32)[order]
        counts = np.bincount(np.array(tokens, dtype=np.int64), minlength=len(vocab))
        self._start: NDArray[np.int64] = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._vocab = vocab
        self._added: dict[int, Terms] = {}
        self._removed = 0

    def __len__(self) -> int:
        return int(self._alive.sum()) + len(self._added)

    def __contains__(self, rowid: int) -> bool:
        return rowid in self._added or self._position(rowid) is not None

    def _position(self, rowid: int) -> int | None:
        at = int(np.searchsorted(self._rowids, rowid))
        if at < len(self._rowids) and int(self._rowids[at]) == rowid and self._alive[at]:
            return at
        return None

    def add(self, rowid: int, terms: Terms) -> None:
        self.remove(rowid)
        if terms:
            self._added[rowid] = dict(terms)
            self._maybe_rebuild()

    def remove(self, rowid: int) -> None:
        if self._added.pop(rowid, None) is not None:
            return
        at = self._position(rowid)
        if at is not None:
            self._alive[at] = False
            self._removed += 1
            self._maybe_rebuild()

    def _maybe_rebuild(self) -> None:
        if len(self._added) + self._removed > max(64, len(self._rowids) // 4):
            self._build(self._docs())

    def _docs(self) -> dict[int, dict[str, int]]:
        """Every present record's terms (to rebuild)."""
        docs: dict[int, dict[str, int]] = {}
        rowids = self._rowids.tolist()
        for token, t in self._vocab.items():
            start, end = int(self._start[t]), int(self._start[t + 1])
            for position, tf in zip(
                self._positions[start:end].tolist(), self._tf[start:end].tolist(), strict=True
            ):
                if self._alive[position]:
                    docs.setdefault(rowids[position], {})[token] = int(tf)
        docs.update({r: dict(t) for r, t in self._added.items()})
        return docs

    def search(self, tokens: list[str], limit: int) -> list[int]:
        """Rowids of the best `limit` records matching any token, best first (ties: lower
        rowid first)."""
        alive_lengths = self._lengths[self._alive]
        count = len(alive_lengths) + len(self._added)
        if count == 0 or not tokens:
            return []
        total = float(alive_lengths.sum()) + sum(sum(t.values()) for t in self._added.values())
        average = total / count
        scores = np.zeros(len(self._rowids), dtype=np.float32)
        extra: dict[int, float] = {}
        for token in dict.fromkeys(tokens):
            t = self._vocab.get(token)
            positions = np.empty(0, dtype=np.int32)
            tf = np.empty(0, dtype=np.float32)
            if t is not None:
                start, end = int(self._start[t]), int(self._start[t + 1])
                keep = self._alive[self._positions[start:end]]
                positions = self._positions[start:end][keep]
                tf = self._tf[start:end][keep]
            added = [(r, terms[token], terms) for r, terms in self._added.items() if token in terms]
            df = len(positions) + len(added)
            if df == 0:
                continue
            idf = math.log(1 + (count - df + 0.5) / (df + 0.5))
            if len(positions):
                norm = K1 * (1 - B + B * self._lengths[positions] / average)
                scores[positions] += idf * tf * (K1 + 1) / (tf + norm)
            for rowid, freq, terms in added:
                norm_one = K1 * (1 - B + B * sum(terms.values()) / average)
                extra[rowid] = extra.get(rowid, 0.0) + idf * freq * (K1 + 1) / (freq + norm_one)
        hit = np.flatnonzero(scores > 0)
        if len(hit) > limit:
            # The best `limit` without sorting every hit; whatever ties the limit-th
            # score stays in, to compete on rowid.
            cut = np.argpartition(-scores[hit], limit - 1)[:limit]
            hit = hit[scores[hit] >= scores[hit][cut].min()]
        candidate_scores = np.concatenate(
            (scores[hit], np.array(list(extra.values()), dtype=np.float32))
        )
        candidate_rowids = np.concatenate(
            (self._rowids[hit], np.array(list(extra), dtype=np.int64))
        )
        order = np.lexsort((candidate_rowids, -candidate_scores))[:limit]
        return [int(r) for r in candidate_rowids[order].tolist()]

    @property
    def nbytes(self) -> int:
        """About what this index holds in memory (the arrays, and ~100 bytes per
        vocabulary entry and per term of a record written since the last build)."""
        arrays = (self._rowids, self._lengths, self._alive, self._positions, self._tf, self._start)
        added = sum(len(terms) for terms in self._added.values())
        return sum(a.nbytes for a in arrays) + 100 * (len(self._vocab) + added)
