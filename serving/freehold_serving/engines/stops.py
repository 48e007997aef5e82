"""Stop sequences over streamed text: never emit text that a stop string may still claim."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> tuple[str, bool]:
        """Text that is safe to emit now, and whether a stop sequence was reached."""
        if not self._stops:
            return piece, False
        buffer = self._held + piece
        cut = min((i for s in self._stops if (i := buffer.find(s)) >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            self.stopped = True
            return buffer[:cut], True
        # Hold back the longest tail that is a prefix of some stop sequence.
        keep = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), keep, -1):
                if buffer.endswith(stop[:n]):
                    keep = n
                    break
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self, piece: str = "") -> str:
        """At the end of generation: whatever is held is ordinary text."""
        text, _ = self.feed(piece)
        if self.stopped:
            return text
        rest, self._held = self._held, ""
        return text + rest
