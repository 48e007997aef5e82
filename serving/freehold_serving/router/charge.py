"""One budgeted request's hold, settled exactly once: with the usage of the target that
answered, at nothing when no target answered, or in full when the usage cannot be known.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from freehold_serving.router.args import TargetConfig
from freehold_serving.router.ledger import Amount, Hold, Ledger, MemoryLedger

log = logging.getLogger(__name__)


def cost_of(target: TargetConfig, prompt: int, completion: int) -> Amount:
    return Amount(
        prompt + completion,
        prompt / 1000 * target.cost_input + completion / 1000 * target.cost_output,
    )


def usage_amount(target: TargetConfig, usage: Any) -> Amount | None:
    """What an OpenAI `usage` object says was used, at `target`'s prices."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(prompt, int) or (completion is not None and not isinstance(completion, int)):
        return None
    return cost_of(target, prompt, completion or 0)


class Charge:
    """The holds of one request: its tenant's budget's, and its key's when the key has
    one. Each is settled with the same amount, once."""

    def __init__(self, ledger: Ledger, holds: list[Hold]) -> None:
        self._ledger = ledger
        self.holds = holds
        self.settled = False
        # A stream took the hold over: it settles when the stream ends (or is drained).
        self.streaming = False

    @property
    def amount(self) -> Amount:
        """What was held (the same for every hold of the request)."""
        return self.holds[0].amount

    async def settle(self, actual: Amount) -> None:
        if self.settled:
            return
        self.settled = True
        held = self.amount
        if actual.tokens > held.tokens or actual.cost > held.cost + 1e-9:
            # The prompt bound is an upper bound for byte-level tokenizers; a target whose
            # tokenizer is not one could go past it. Charged as used, and said.
            log.warning(
                "a request of %s used %s, more than its hold %s",
                " and ".join(h.tenant for h in self.holds),
                actual,
                held,
            )
        for hold in self.holds:
            try:
                if isinstance(self._ledger, MemoryLedger):
                    self._ledger.settle(hold, actual)
                else:
                    await asyncio.to_thread(self._ledger.settle, hold, actual)
            except Exception:
                # The hold stays in the shared ledger and is charged in full when it expires.
                log.warning("could not settle a hold of %s", hold.tenant, exc_info=True)

    async def usage(self, target: TargetConfig, usage: Any) -> None:
        """Settle with the target's reported usage, or in full when it reported none."""
        amount = usage_amount(target, usage)
        await self.settle(self.amount if amount is None else amount)

    async def release(self) -> None:
        """No target answered: nothing was used."""
        await self.settle(Amount())
