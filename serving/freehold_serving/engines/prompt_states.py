"""Saved KV states of earlier sequences, for the llama.cpp engines.

llama.cpp's context holds one sequence; on its own it reuses only the part of the last
sequence that the next prompt shares. A replica that serves several conversations in
turn would evaluate each one's whole history again at every turn. Before the context
moves to another prompt we keep a copy of its KV state here (bytes from llama.cpp's
per-sequence state API) and restore the one sharing the longest prefix with a new
prompt, so only the new tokens are evaluated. The prefix-aware request router sends a
conversation's turns to the replica that holds them. The batching engine
(llamacpp_batch) keeps the states of its slots' sequences here the same way.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Tokens = npt.NDArray[np.int32]


def as_tokens(tokens: Sequence[int] | Tokens) -> Tokens:
    return np.asarray(tokens, dtype=np.int32)


def common_prefix(a: Tokens, b: Tokens) -> int:
    """How many leading tokens two sequences share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


@dataclass(frozen=True)
class SavedState:
    tokens: Tokens
    data: bytes


class PromptStates:
    """Least recently used states within a byte budget. A state whose tokens are a
    prefix of another's is dropped: the longer one serves every prompt it would."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._states: OrderedDict[int, SavedState] = OrderedDict()
        self._next = 0
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def best(self, prompt: Tokens) -> tuple[SavedState | None, int]:
        """The state sharing the longest prefix with `prompt`, and that length."""
        found: tuple[int, SavedState] | None = None
        length = 0
        for key, state in self._states.items():
            shared = common_prefix(state.tokens, prompt)
            if shared > length:
                found, length = (key, state), shared
        if found is None:
            return None, 0
        self._states.move_to_end(found[0])
        return found[1], length

    def holds(self, tokens: Tokens) -> bool:
        """Whether a saved state already starts with all of `tokens`."""
        return any(
            len(s.tokens) >= len(tokens) and common_prefix(s.tokens, tokens) == len(tokens)
            for s in self._states.values()
        )

    def add(self, tokens: Tokens, data: bytes) -> None:
        if len(data) > self.capacity_bytes:
            return
        for key, state in list(self._states.items()):
            if common_prefix(state.tokens, tokens) == len(state.tokens):
                self._drop(key)
        self._states[self._next] = SavedState(tokens.copy(), data)
        self._next += 1
        self.size_bytes += len(data)
        while self.size_bytes > self.capacity_bytes:
            self._drop(next(iter(self._states)))

    def _drop(self, key: int) -> None:
        self.size_bytes -= len(self._states.pop(key).data)


def seq_state(ctx: Any, seq: int) -> bytes | None:
    """The KV state of one sequence, as bytes (llama.cpp's per-sequence state API)."""
    import llama_cpp

    size = int(llama_cpp.llama_state_seq_get_size(ctx, seq))
    buffer = (ctypes.c_uint8 * size)()
    written = int(llama_cpp.llama_state_seq_get_data(ctx, buffer, size, seq))
    return bytes(memoryview(buffer)[:written]) if 0 < written <= size else None


def load_seq_state(ctx: Any, seq: int, data: bytes) -> bool:
    import llama_cpp

    buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    return int(llama_cpp.llama_state_seq_set_data(ctx, buffer, len(data), seq)) != 0
