"""A provider's rate limits, kept on our side: tokens per minute, requests per minute, and a pause after a 429.

Tokens are budgeted as a total (`tokens_per_minute`), and, for providers that limit them separately
(Anthropic's input- and output-tokens-per-minute), as input and output tokens each in its own bucket.

One `SendBudget` is shared by every HTTP call of one teacher. Each budget is a token bucket that refills
continuously at `per_minute / 60` per second and holds at most `per_minute * burst_s / 60` (the
Anthropic-documented shape; a smaller `burst_s` suits providers that enforce a minute's limit over
shorter windows). A call is charged its estimate when it goes out and corrected with the usage the
reply reports. Calls wait in FIFO order, so a large call is never starved by small ones behind it.

A call may go once the bucket holds `min(cost, capacity)`: the bucket then runs into debt that later
calls wait off. So a call larger than the whole budget still goes out (alone: it waits for a full
bucket, i.e. nothing else spent within the burst window) instead of waiting forever.

A 429 pauses every sender, not just the call that got it: nothing goes out before the Retry-After
(or the backoff) has passed, and the token bucket is emptied so sending restarts at the budget's rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass


class BudgetExceeded(Exception):
    """The wait for the budget would pass the step deadline; the message says which budget."""


class TokenBucket:
    """`per_minute` units per minute, at most `capacity` at once; the level may go negative (debt)."""

    def __init__(self, per_minute: float, burst_s: float):
        if per_minute < 0 or not burst_s > 0:
            raise ValueError(f"per_minute must be >= 0 and burst_s > 0, got {per_minute!r}, {burst_s!r}")
        self.rate = per_minute / 60.0
        self.capacity = per_minute * burst_s / 60.0
        self.level = self.capacity  # full at the first call
        self._updated: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
        if now > self._updated:
            self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
            self._updated = now

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until a call costing `cost` may go (0 = now)."""
        if self.unlimited:
            return 0.0
        self._refill(now)
        need = min(cost, self.capacity)
        return max(0.0, (need - self.level) / self.rate)

    def take(self, cost: float, now: float) -> None:
        if not self.unlimited:
            self._refill(now)
            self.level -= cost

    def give_back(self, amount: float, now: float) -> None:
        """Correct an earlier charge: positive when a call cost less than estimated, negative when more."""
        if not self.unlimited:
            self._refill(now)
            self.level = min(self.capacity, self.level + amount)

    def empty(self, now: float) -> None:
        if not self.unlimited:
            self._refill(now)
            self.level = min(self.level, 0.0)


@dataclass
class BudgetStats:
    waited_s: float = 0.0
    """Total seconds calls spent waiting for the budget (summed over calls)."""
    pauses: int = 0
    """429s that paused every sender."""


class SendBudget:
    """The shared gate in front of every HTTP call of one teacher. Use on the teacher's event loop only."""

    def __init__(self, tokens_per_minute: float = 0, requests_per_minute: float = 0, burst_s: float = 60.0,
                 input_tokens_per_minute: float = 0, output_tokens_per_minute: float = 0):
        self.tokens = TokenBucket(tokens_per_minute, burst_s)
        self.inputs = TokenBucket(input_tokens_per_minute, burst_s)
        self.outputs = TokenBucket(output_tokens_per_minute, burst_s)
        self.requests = TokenBucket(requests_per_minute, burst_s)
        self.paused_until = -math.inf
        self.stats = BudgetStats()
        self._lock: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None
        self._in_flight = 0  # calls charged and not yet settled: their refunds may shorten any wait

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    async def acquire(self, inputs: int, outputs: int, deadline: float) -> None:
        """Wait (FIFO) until a call estimated at `inputs` prompt and `outputs` completion tokens may go, then
        charge it; `settle` it afterwards.

        Raises BudgetExceeded as soon as the wait is sure to end after `deadline` (loop time): at once
        when no call in flight can give tokens back, else when the deadline comes.
        """
        if self._lock is None:
            self._lock, self._changed = asyncio.Lock(), asyncio.Event()
        start = self._now()
        async with self._lock:  # the head of the queue waits; everyone else waits behind it
            while True:
                now = self._now()
                tokens = inputs + outputs
                waits = {"a 429 from the provider": self.paused_until - now,
                         f"teacher.tokens_per_minute ({tokens} tokens estimated)": self.tokens.wait_s(tokens, now),
                         f"teacher.input_tokens_per_minute ({inputs} estimated)": self.inputs.wait_s(inputs, now),
                         f"teacher.output_tokens_per_minute ({outputs} asked)": self.outputs.wait_s(outputs, now),
                         "teacher.requests_per_minute": self.requests.wait_s(1, now)}
                reason, wait = max(waits.items(), key=lambda kv: kv[1])
                if wait <= 0:
                    break
                if now + wait > deadline:
                    if reason.startswith("a 429") or self._in_flight == 0 or now >= deadline:
                        raise BudgetExceeded(f"waiting {wait:.1f}s for {reason} would pass the step deadline")
                    wait = deadline - now  # unless calls in flight give back enough before then
                self._changed.clear()
                # A correction or a 429 may change the wait: look again when one arrives.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=wait)
            self.tokens.take(inputs + outputs, now)
            self.inputs.take(inputs, now)
            self.outputs.take(outputs, now)
            self.requests.take(1, now)
            self._in_flight += 1
            self.stats.waited_s += now - start

    def settle(self, estimated: tuple[int, int], used: tuple[int, int]) -> None:
        """Once per acquired call, however it ended: it counted `used` (input, output) tokens against the
        `estimated` ones it was charged (pass the estimate when the usage is unknown)."""
        self._in_flight -= 1
        now = self._now()
        self.tokens.give_back(sum(estimated) - sum(used), now)
        self.inputs.give_back(estimated[0] - used[0], now)
        self.outputs.give_back(estimated[1] - used[1], now)
        self._wake()

    def pause(self, seconds: float) -> None:
        """A 429: nobody sends for `seconds`, and the token budget restarts from empty."""
        now = self._now()
        self.paused_until = max(self.paused_until, now + seconds)
        for bucket in (self.tokens, self.inputs, self.outputs, self.requests):
            bucket.empty(now)
        self.stats.pauses += 1
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
