"""The teacher interface: requests in, exactly `n` continuation texts (or an explicit failure) out.

`Teacher.generate` validates the batch, answers what it can from the on-disk cache, hands the rest
to the backend (`_run`), stores every complete reply in the cache as soon as it arrives, and keeps
the usage/cost counters. Backends implement `_run` only.

`Teacher.submit` is the same call without waiting: it returns a `TeacherJob` whose results can be
taken as they arrive (`as_completed`) or all at once (`results`). By default the work is done inside
`submit` (a local model shares the trainer's devices); API teachers run it in the background.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers.cache import CachedReply, ResponseCache, cache_key
from omniopd.rollout.teachers.secrets import scrub

log = logging.getLogger("omniopd.teacher")
_ROLES = ("system", "user", "assistant")


class TeacherInputError(ValueError):
    """A malformed TeacherRequest; the message names it (its `key`, or its index in the batch)."""


@dataclass
class TeacherRequest:
    messages: list[dict[str, str]]
    """The chat so far (system/user/... turns), as the teacher should see it."""
    prefix: str
    """Partial assistant text to continue (may be empty)."""
    n: int
    max_tokens: int
    temperature: float
    seed: int | None = None
    key: str = ""
    """Caller's id for error messages, e.g. 'seq 3 anchor 17'."""

    def name(self, index: int) -> str:
        return f"teacher request {index} ({self.key})" if self.key else f"teacher request {index}"

    def validate(self, index: int) -> None:
        def bad(why: str) -> TeacherInputError:
            return TeacherInputError(f"{self.name(index)}: {why}")

        if not isinstance(self.messages, list) or not self.messages:
            raise bad("messages must be a non-empty list of {'role', 'content'} dicts")
        for j, m in enumerate(self.messages):
            if not (isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in _ROLES):
                raise bad(f"messages[{j}] must be a dict with role in {_ROLES} and string content, got {m!r}")
        if not isinstance(self.prefix, str):
            raise bad(f"prefix must be a string, got {type(self.prefix).__name__}")
        for name in ("n", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.temperature, int | float) or not self.temperature >= 0:
            raise bad(f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise bad(f"seed must be an integer or None, got {self.seed!r}")


@dataclass
class TeacherResult:
    texts: list[str] | None
    """Exactly n continuation texts (the text after the prefix), or None when the request failed."""
    error: str | None
    """Why it failed (never contains an API key)."""
    prompt_tokens: int = 0
    """Tokens billed by this call (0 for a cache hit)."""
    completion_tokens: int = 0
    retries: int = 0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.texts is not None


class TeacherJob:
    """The answers of one `Teacher.submit`, filled in as they arrive (from any thread)."""

    def __init__(self, size: int):
        self.size = size
        self._arrived: queue.SimpleQueue = queue.SimpleQueue()
        self._results: list[TeacherResult | None] = [None] * size
        self._final: list[TeacherResult] | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._submitted = time.perf_counter()
        self.seconds = 0.0
        """From submit to the last answer (the teacher's latency as the step saw it)."""

    def _put(self, index: int, result: TeacherResult) -> None:
        self._arrived.put((index, result))

    def _finish(self, results: list[TeacherResult] | None, error: BaseException | None = None) -> None:
        self._final, self._error = results, error
        self.seconds = time.perf_counter() - self._submitted
        self._arrived.put(None)
        self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def as_completed(self) -> Iterator[tuple[int, TeacherResult]]:
        """(request index, final result) as each answer arrives; every index exactly once (call once)."""
        seen: set[int] = set()
        while (item := self._arrived.get()) is not None:
            index, result = item
            if index not in seen:
                seen.add(index)
                yield index, result
        if self._error is not None:
            raise self._error
        for index, result in enumerate(self._final or []):  # failures the backend never streamed (deadline)
            if index not in seen:
                yield index, result

    def results(self) -> list[TeacherResult]:
        """Every result in request order, once all have arrived (the backend's deadline bounds the wait)."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._final is not None
        return self._final


@dataclass
class _Counters:
    requests: int = 0
    failures: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


class Teacher:
    """Base class: validation, cache, usage. Subclasses implement `_run` (and may override `close`)."""

    kind = "base"

    @property
    def cache_tag(self) -> str:
        """The backend's part of the cache key: its kind, plus anything that changes what the same request
        returns (instruct mode and its version)."""
        return self.kind

    def __init__(self, cfg: TeacherConfig, cache: ResponseCache | None = None):
        self.cfg = cfg
        self.cache = cache
        self._total = _Counters()
        self._last = _Counters()

    # -- the backend's job ---------------------------------------------------------------------
    def _run(self, requests: list[TeacherRequest],
             on_result: Callable[[int, TeacherResult], None]) -> list[TeacherResult]:
        """Results for `requests` in order; calls `on_result(i, result)` as each one completes."""
        raise NotImplementedError

    # -- public ------------------------------------------------------------------------------
    def generate(self, requests: list[TeacherRequest]) -> list[TeacherResult]:
        """n continuation texts per request (or a reported failure), in request order."""
        self._validate(requests)
        return self._generate(requests, lambda i, result: None)

    def submit(self, requests: list[TeacherRequest]) -> TeacherJob:
        """`generate` without waiting for it: a job to take the answers from as they arrive. Bad requests raise
        here, at once; the backend's errors surface from the job."""
        self._validate(requests)
        job = TeacherJob(len(requests))
        self._start(lambda: self._fill(job, requests))
        return job

    def _start(self, work: Callable[[], None]) -> None:
        """Runs a submitted job's work: here, in the caller (a backend that can wait in the background
        overrides this)."""
        work()

    def _fill(self, job: TeacherJob, requests: list[TeacherRequest]) -> None:
        try:
            results = self._generate(requests, job._put)
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the job
            job._finish(None, e)
            return
        job._finish(results)

    def _validate(self, requests: list[TeacherRequest]) -> None:
        if not isinstance(requests, list):
            raise TeacherInputError("generate() takes a list of TeacherRequest, got "
                                    f"{type(requests).__name__}")
        for i, req in enumerate(requests):
            if not isinstance(req, TeacherRequest):
                raise TeacherInputError(f"teacher request {i}: expected TeacherRequest, got "
                                        f"{type(req).__name__}")
            req.validate(i)

    def _generate(self, requests: list[TeacherRequest],
                  emit: Callable[[int, TeacherResult], None]) -> list[TeacherResult]:
        """`generate`'s work on validated requests; `emit(i, final result)` as each one is known."""
        start = time.perf_counter()
        keys = [cache_key(self.cache_tag, self.cfg.model, r.messages, r.prefix, r.n, r.max_tokens, r.temperature,
                          r.seed) for r in requests]
        results: list[TeacherResult | None] = [None] * len(requests)
        if self.cache is not None:
            for i, key in enumerate(keys):
                hit = self.cache.get(key)
                if hit is not None and len(hit.texts) == requests[i].n:
                    results[i] = TeacherResult(hit.texts, None, cached=True)
                    emit(i, results[i])
        todo = [i for i, r in enumerate(results) if r is None]

        def store(j: int, result: TeacherResult) -> None:
            i = todo[j]
            emit(i, self._checked(requests[i], i, result))
            if self.cache is None or result.texts is None:
                return
            try:
                self.cache.put(keys[todo[j]], CachedReply(result.texts, result.prompt_tokens,
                                                          result.completion_tokens))
            except Exception as e:  # noqa: BLE001 - a full disk must not lose a paid reply
                log.warning("teacher cache write failed for %s: %s", requests[todo[j]].name(todo[j]), e)

        if todo:
            fresh = self._run([requests[i] for i in todo], store)
            for i, result in zip(todo, fresh, strict=True):
                results[i] = result
        final = [self._checked(requests[i], i, r) for i, r in enumerate(results)]
        self._account(final, time.perf_counter() - start)
        return final

    def usage(self) -> dict:
        """Cumulative counters at the top level (requests, failures, cache_hits, retries, prompt_tokens,
        completion_tokens, cost_usd, seconds, errors), the same for the last generate() call under 'last'."""
        return {"kind": self.kind, "model": self.cfg.model, **self._as_dict(self._total),
                "last": self._as_dict(self._last)}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------
    def _checked(self, req: TeacherRequest, index: int, result: TeacherResult | None) -> TeacherResult:
        """Never fewer than n texts silently: a short or missing result becomes an explicit failure."""
        if result is None:
            return TeacherResult(None, f"{req.name(index)}: the backend returned no result")
        if result.texts is not None and (len(result.texts) != req.n
                                         or not all(isinstance(t, str) for t in result.texts)):
            return TeacherResult(None, f"{req.name(index)}: expected {req.n} texts, got "
                                 f"{len(result.texts)}", result.prompt_tokens, result.completion_tokens,
                                 result.retries)
        if result.error is not None:
            error = scrub(result.error)
            if not error.startswith(req.name(index)):
                error = f"{req.name(index)}: {error}"
            result.error = error
        return result

    def _account(self, results: list[TeacherResult], seconds: float) -> None:
        last = _Counters(seconds=seconds)
        for r in results:
            last.requests += 1
            last.failures += r.texts is None
            last.cache_hits += r.cached
            last.retries += r.retries
            last.prompt_tokens += r.prompt_tokens
            last.completion_tokens += r.completion_tokens
            if r.error is not None and len(last.errors) < 5:
                last.errors.append(r.error)
        last.cost_usd = (last.prompt_tokens * self.cfg.price_in_per_mtok
                         + last.completion_tokens * self.cfg.price_out_per_mtok) / 1e6
        self._last = last
        t = self._total
        for name in ("requests", "failures", "cache_hits", "retries", "prompt_tokens", "completion_tokens",
                     "cost_usd", "seconds"):
            setattr(t, name, getattr(t, name) + getattr(last, name))
        t.errors = (t.errors + last.errors)[-5:]
        if last.failures:
            log.warning("teacher: %d of %d requests failed; first: %s", last.failures, last.requests,
                        last.errors[0] if last.errors else "?")

    @staticmethod
    def _as_dict(c: _Counters) -> dict:
        return {"requests": c.requests, "failures": c.failures, "cache_hits": c.cache_hits,
                "retries": c.retries, "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens, "cost_usd": c.cost_usd,
                "seconds": round(c.seconds, 4), "errors": [scrub(e) for e in c.errors]}
