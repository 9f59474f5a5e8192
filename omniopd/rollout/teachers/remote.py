"""The async engine shared by the API teachers: concurrency, ordering, timeouts, retries, deadline.

- A private event loop on a daemon thread, so `generate` is a plain call that also works when the
  caller already runs an event loop, and HTTP connections are reused across steps.
- At most `max_concurrency` HTTP requests in flight (one semaphore around every HTTP call), and
  the provider's budgets kept on our side (`ratelimit.SendBudget`): `tokens_per_minute` (each call
  charged prompt + n * max_tokens before it goes, the prompt estimated from characters at a ratio
  learned from the replies' usage, then corrected with the usage the reply reports),
  `requests_per_minute`, and a pause of every sender after a 429.
- Requests start in ascending-prefix order per trajectory (stable sort by (messages, len(prefix))),
  so a prefix-caching server sees each shared prefix before its extensions.
- Every HTTP call has a hard timeout; connection errors, timeouts, 408/409/429/5xx and malformed
  replies (unparsable, missing text, fewer choices than asked) are retried with exponential backoff
  and jitter, or after the server's Retry-After; other errors fail at once.
- A per-step deadline: whatever is still outstanding then is cancelled and reported failed.
- `submit` returns at once: the requests go out while the caller keeps working (the trainer's forwards),
  and each answer is handed over as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers.base import Teacher, TeacherRequest, TeacherResult
from omniopd.rollout.teachers.cache import ResponseCache
from omniopd.rollout.teachers.instruct import INSTRUCT_VERSION, instruct_messages, normalise
from omniopd.rollout.teachers.ratelimit import BudgetExceeded, SendBudget
from omniopd.rollout.teachers.secrets import scrub

_MAX_BACKOFF_S = 30.0
# Prompt characters per token before any reply has reported usage: low, so the first estimates are high.
_FIRST_CHARS_PER_TOKEN = 3.0
_NO_TEXT = "a sample with no text (in instruct mode: nothing left after normalising the reply)"


class CallError(Exception):
    """One failed HTTP call, classified: retry it or give up."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 status: int | None = None, prompt_tokens: int = 0, completion_tokens: int = 0):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.prompt_tokens, self.completion_tokens = prompt_tokens, completion_tokens
        """What a reply that was then rejected still billed."""


class _Failed(Exception):
    """A request that exhausted its retries or hit a non-retryable error."""


@dataclass
class Reply:
    """What one HTTP call returned: `texts` must hold exactly as many samples as were asked for."""

    texts: list[str | None]
    """None marks a failed sample (the call's other samples are kept; only the missing ones are asked again)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure: str = ""
    """Why the None samples failed, when the backend knows."""


@dataclass
class _Progress:
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date), if present."""
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def classify_sdk_error(exc: BaseException, sdk: ModuleType) -> CallError:
    """Map an `openai` / `anthropic` SDK exception (same class names in both) to a CallError."""
    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, sdk.APIStatusError):
        status = exc.status_code
        retryable = status in (408, 409, 429) or status >= 500
        return CallError(f"HTTP {status}: {exc.message}", retryable=retryable,
                         retry_after=parse_retry_after(exc.response.headers), status=status)
    if isinstance(exc, sdk.APITimeoutError):
        return CallError("request timed out", retryable=True)
    if isinstance(exc, sdk.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        detail = f" ({type(cause).__name__}: {cause})" if cause else ""
        return CallError(f"connection error{detail}", retryable=True)
    # Unparsable JSON or a reply the SDK cannot validate: malformed, worth retrying.
    if isinstance(exc, sdk.APIResponseValidationError | json.JSONDecodeError):
        return CallError(f"malformed response ({type(exc).__name__}: {exc})", retryable=True)
    # Anything else is a bug on our side or in the SDK: retrying would only repeat it.
    return CallError(f"{type(exc).__name__}: {exc}", retryable=False)


class RemoteTeacher(Teacher):
    """Base of the HTTP teachers. Subclasses implement `_attempt` and may override `_split`."""

    sdk: ModuleType  # set by subclasses: the SDK module whose exceptions `_attempt` raises
    mode = "prefill"
    """How the partial answer reaches the model: a backend's prefill mode, or 'instruct' (`instruct.py`)."""

    def __init__(self, cfg: TeacherConfig, cache: ResponseCache | None = None):
        super().__init__(cfg, cache)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"omniopd-teacher-{self.kind}",
                                        daemon=True)
        self._thread.start()
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._budget = SendBudget(cfg.tokens_per_minute, cfg.requests_per_minute, cfg.rate_burst_s,
                                  cfg.input_tokens_per_minute, cfg.output_tokens_per_minute)
        self._seen_chars = 0  # prompt characters and tokens of the replies that reported usage
        self._seen_prompt_tokens = 0
        self._rng = random.Random()
        self._calls = 0  # HTTP calls sent, retries included

    # -- the backend's job ---------------------------------------------------------------------
    async def _attempt(self, req: TeacherRequest, n: int) -> Reply:
        """One HTTP call asking for `n` samples continuing `req`; raise SDK errors or CallError."""
        raise NotImplementedError

    def _split(self, req: TeacherRequest) -> list[int]:
        """Samples per HTTP call for one request: [n] where the API has `n`, else [1] * n."""
        return [req.n]

    async def _aclose(self) -> None:
        """Close the SDK client (runs on the engine's loop)."""

    @property
    def cache_tag(self) -> str:
        return f"{self.kind}+instruct-v{INSTRUCT_VERSION}" if self.mode == "instruct" else self.kind

    def instructed(self, req: TeacherRequest) -> list[dict[str, str]]:
        """Instruct mode: the chat carrying the partial answer and the instruction to continue it."""
        return instruct_messages(req.messages, req.prefix)

    def continuation(self, text: str | None, req: TeacherRequest) -> str | None:
        """A reply's text as the continuation of `req.prefix` (normalised in instruct mode). None is a failed
        sample: no text, or (instruct mode) nothing left after normalising, which is never an empty string."""
        if text is None or self.mode != "instruct":
            return text
        return normalise(text, req.prefix) or None

    def usage(self) -> dict:
        """The base counters plus HTTP calls sent (retries included) and the rate budget's: seconds calls waited
        for it, and 429 pauses."""
        return {**super().usage(), "calls": self._calls, "budget_wait_s": round(self._budget.stats.waited_s, 4),
                "rate_limit_pauses": self._budget.stats.pauses}

    def estimate_tokens(self, req: TeacherRequest, n: int) -> int:
        """What one call for `n` samples will count against the budget, at most: prompt + n * max_tokens."""
        return sum(self.estimate_split(req, n))

    def estimate_split(self, req: TeacherRequest, n: int) -> tuple[int, int]:
        """(prompt tokens, at most n * max_tokens completion tokens) of one call, estimated before it goes."""
        ratio = self._seen_chars / self._seen_prompt_tokens if self._seen_prompt_tokens else _FIRST_CHARS_PER_TOKEN
        return math.ceil(_prompt_chars(req) / ratio), n * req.max_tokens

    # -- engine --------------------------------------------------------------------------------
    def _start(self, work: Callable[[], None]) -> None:
        """A submitted job waits on its own thread (the HTTP calls themselves run on the engine's loop)."""
        if self._loop.is_closed():
            raise RuntimeError(f"{self.kind} teacher is closed")
        threading.Thread(target=work, name=f"{self.kind}-teacher-job", daemon=True).start()

    def _run(self, requests: list[TeacherRequest],
             on_result: Callable[[int, TeacherResult], None]) -> list[TeacherResult]:
        if self._loop.is_closed():
            raise RuntimeError(f"{self.kind} teacher is closed")
        future = asyncio.run_coroutine_threadsafe(self._run_async(requests, on_result), self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def _run_async(self, requests: list[TeacherRequest],
                         on_result: Callable[[int, TeacherResult], None]) -> list[TeacherResult]:
        deadline = self._loop.time() + self.cfg.step_deadline_s
        order = sorted(range(len(requests)), key=lambda i: (json.dumps(requests[i].messages, sort_keys=True),
                                                            len(requests[i].prefix)))
        progress = [_Progress() for _ in requests]
        results: list[TeacherResult | None] = [None] * len(requests)

        async def one(i: int) -> None:
            try:
                results[i] = await self._request(requests[i], progress[i], deadline)
            except Exception as e:  # noqa: BLE001 - a bug must surface as this request's failure, not a hang
                p = progress[i]
                results[i] = TeacherResult(None, scrub(f"internal error: {type(e).__name__}: {e}"),
                                           p.prompt_tokens, p.completion_tokens, p.retries)
            on_result(i, results[i])

        # Tasks start in `order` and queue on the FIFO semaphore in that order.
        tasks = [asyncio.ensure_future(one(i)) for i in order]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - self._loop.time()))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        out = []
        for i, result in enumerate(results):
            if result is None:
                p = progress[i]
                result = TeacherResult(None, f"step deadline of {self.cfg.step_deadline_s:g}s passed before "
                                       f"the reply (after {p.retries} retries)", p.prompt_tokens,
                                       p.completion_tokens, p.retries)
            out.append(result)
        return out

    async def _request(self, req: TeacherRequest, p: _Progress, deadline: float) -> TeacherResult:
        parts = [asyncio.ensure_future(self._part(req, n, p, deadline)) for n in self._split(req)]
        try:
            texts = [t for chunk in await asyncio.gather(*parts) for t in chunk]
        except _Failed as e:
            for part in parts:
                part.cancel()
            return TeacherResult(None, scrub(str(e)), p.prompt_tokens, p.completion_tokens, p.retries)
        return TeacherResult(texts, None, p.prompt_tokens, p.completion_tokens, p.retries)

    async def _part(self, req: TeacherRequest, n: int, p: _Progress, deadline: float) -> list[str]:
        attempt = 0
        got: list[str] = []  # good samples so far: a retry asks only for the ones still missing
        while True:
            want = n - len(got)
            try:
                async with self._slots:
                    reply = await self._budgeted_attempt(req, want, deadline)
                p.prompt_tokens += reply.prompt_tokens  # billed even when the reply is then rejected
                p.completion_tokens += reply.completion_tokens
                if len(reply.texts) != want:
                    raise CallError(f"malformed response: {len(reply.texts)} choices, asked for {want}",
                                    retryable=True)
                good = [t for t in reply.texts if isinstance(t, str)]
                got += good
                if len(got) == n:
                    return got
                raise CallError(f"{want - len(good)} of {want} samples failed: "
                                f"{reply.failure or _NO_TEXT}", retryable=True)
            except asyncio.CancelledError:
                raise
            except BudgetExceeded as e:
                raise _Failed(f"{e} (after {attempt} retries)") from None
            except TimeoutError:
                error = CallError(f"timed out after {self.cfg.timeout_s:g}s", retryable=True)
            except Exception as e:  # noqa: BLE001 - classified below; nothing escapes unreported
                error = classify_sdk_error(e, self.sdk)
                p.prompt_tokens += error.prompt_tokens
                p.completion_tokens += error.completion_tokens
            if error.retry_after is not None:
                delay = error.retry_after
            else:
                delay = min(_MAX_BACKOFF_S, self.cfg.retry_backoff_s * 2**attempt)
                delay *= self._rng.uniform(0.5, 1.5)
            if error.status == 429:  # the provider's limit is shared: every sender backs off, not just this one
                self._budget.pause(delay)
            if not error.retryable:
                raise _Failed(f"{error} (not retried)")
            if attempt >= self.cfg.max_retries:
                raise _Failed(f"{error} (gave up after {attempt} retries)")
            if self._loop.time() + delay >= deadline:
                raise _Failed(f"{error}; the next retry (in {delay:.1f}s) would pass the step deadline "
                              f"(after {attempt} retries)")
            attempt += 1
            p.retries += 1
            await asyncio.sleep(delay)

    async def _budgeted_attempt(self, req: TeacherRequest, n: int, deadline: float) -> Reply:
        """One HTTP call once the budget allows it; the budget is then corrected with the reply's usage (a
        call that failed, or whose reply reports none, keeps its estimate)."""
        estimate = self.estimate_split(req, n)
        await self._budget.acquire(*estimate, deadline)
        self._calls += 1
        used = estimate
        try:
            reply = await asyncio.wait_for(self._attempt(req, n), timeout=self.cfg.timeout_s)
            if reply.prompt_tokens > 0:
                self._seen_chars += _prompt_chars(req)
                self._seen_prompt_tokens += reply.prompt_tokens
            if reply.prompt_tokens + reply.completion_tokens:
                used = (reply.prompt_tokens, reply.completion_tokens)
            return reply
        finally:
            self._budget.settle(estimate, used)

    def close(self) -> None:
        if not self._loop.is_closed():
            with contextlib.suppress(Exception):  # closing a half-dead client must not raise
                asyncio.run_coroutine_threadsafe(self._aclose(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
        super().close()


def _prompt_chars(req: TeacherRequest) -> int:
    return sum(len(m["content"]) for m in req.messages) + len(req.prefix)
