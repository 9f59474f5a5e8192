"""Gemini teacher (Google's official `google-genai` SDK, `client.aio.models.generate_content`).

How the partial answer reaches the model (`teacher.completion_mode`): 'auto' and 'instruct' put it in the user
turn with the instruction to continue it (`instruct.py`); 'chat' sends it as a final `model` turn, for the
models and endpoints that continue one (a prefill). System turns go in `system_instruction`.

- Candidates: one call asks for up to `teacher.candidates_per_call` of a request's n (the API caps
  `candidate_count`); the rest go in further calls, each billed its own prompt.
- Thinking: off by default (`thinking_budget=0`); `teacher.thinking_budget` > 0 lets the model think that many
  tokens, which `max_output_tokens` then also allows for. Thinking tokens are billed as output and counted as
  completion tokens; thought parts never enter the continuation.
- Errors (`classify`): 429 and RESOURCE_EXHAUSTED wait for the RetryInfo delay the body carries (or back off)
  and pause every sender; 5xx, timeouts, connection errors are retried; a 400 that names a parameter we set is
  a config error naming our key, not retried; other 4xx fail at once. A blocked prompt (`prompt_feedback.
  block_reason`) fails at once. A candidate that ends in SAFETY, RECITATION or another block, a candidate with
  no text, and a thinking-only candidate are failed samples, never an empty string: the call's good candidates
  are kept and only the missing ones are asked for again (a new sample may pass); a reply with no candidates
  is retried whole. A thinking-only candidate cut at MAX_TOKENS (the thinking budget leaves no room for the
  answer) and a LANGUAGE finish (a language the model does not take) fail at once. The config key a 400
  blames is the field its `fieldViolations` name, else `teacher.completion_mode` for turns that must
  alternate between user and model, else a parameter its message names.
- The thinking budget is part of the teacher cache key, and the rate budget charges each candidate
  max_tokens + thinking budget up front.
The SDK's own retries are off (it retries only when given retry options): the engine in `remote.py` retries.
"""

from __future__ import annotations

import re

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers.base import TeacherRequest
from omniopd.rollout.teachers.cache import ResponseCache
from omniopd.rollout.teachers.remote import CallError, RemoteTeacher, Reply, parse_retry_after
from omniopd.rollout.teachers.secrets import read_api_key

_OK_FINISH = {"STOP", "MAX_TOKENS", "FINISH_REASON_UNSPECIFIED", None}
# Words in a 400's field violation (or, failing that, its message) -> the config key that set that parameter.
_PARAM_KEYS = (("thinking", "teacher.thinking_budget"), ("candidate", "teacher.candidates_per_call"),
               ("temperature", "teacher.temperature"), ("max_output_tokens", "audit.chunk_len"),
               ("maxoutputtokens", "audit.chunk_len"), ("seed", "teacher.send_seed"), ("model", "teacher.model"))


def retry_info_delay(details: object) -> float | None:
    """Seconds from a google.rpc.RetryInfo entry (`"retryDelay": "22s"`) in an error body, if any."""
    error = details.get("error", details) if isinstance(details, dict) else None
    for entry in (error or {}).get("details") or []:
        if isinstance(entry, dict) and str(entry.get("@type", "")).endswith("RetryInfo"):
            found = re.fullmatch(r"\s*([\d.]+)s\s*", str(entry.get("retryDelay", "")))
            if found:
                return float(found.group(1))
    return None


def _field_violations(details: object) -> list[str]:
    """The fields a google.rpc.BadRequest entry in an error body names (`fieldViolations[].field`)."""
    error = details.get("error", details) if isinstance(details, dict) else None
    fields = []
    for entry in (error or {}).get("details") or []:
        for violation in (entry.get("fieldViolations") or [] if isinstance(entry, dict) else []):
            if isinstance(violation, dict) and violation.get("field"):
                fields.append(str(violation["field"]))
    return fields


def _key_for(text: str) -> str | None:
    lowered = text.lower().replace(" ", "_")
    return next((k for word, k in _PARAM_KEYS if word in lowered or word in lowered.replace("_", "")), None)


def blamed_key(message: str, details: object) -> str | None:
    """The config key a 400 blames: the field its details name first; a complaint that turns do not alternate
    between user and model is about how the partial answer is sent (`teacher.completion_mode`); else a
    parameter the message names."""
    for field in _field_violations(details):
        key = _key_for(field)
        if key is not None:
            return key
    lowered = message.lower()
    if "alternat" in lowered and "user" in lowered and "model" in lowered:
        return "teacher.completion_mode"
    return _key_for(message)


def classify(exc: BaseException) -> CallError:
    """A google-genai SDK or transport exception as a CallError (see the module docstring)."""
    from google.genai import errors

    if isinstance(exc, CallError):
        return exc
    if isinstance(exc, errors.APIError):
        code, status, message = exc.code or 0, exc.status or "", exc.message or str(exc)
        text = f"HTTP {code} {status}: {message}"
        if code == 429 or status == "RESOURCE_EXHAUSTED":
            headers = getattr(getattr(exc, "response", None), "headers", None)
            delay = retry_info_delay(exc.details)
            return CallError(text, retryable=True, status=429,
                             retry_after=delay if delay is not None else parse_retry_after(headers))
        if code == 400:
            key = blamed_key(message, exc.details)
            if key is not None:
                return CallError(f"config error: the API rejects a parameter set by {key}: {text}",
                                 retryable=False, status=400)
        return CallError(text, retryable=code in (408, 409) or code >= 500, status=code)
    if _is_transport_error(exc):
        return CallError(f"connection error ({type(exc).__name__}: {exc})", retryable=True)
    if isinstance(exc, ValueError):  # the SDK's pydantic validation of a body that is not a response
        return CallError(f"malformed response ({type(exc).__name__}: {exc})", retryable=True)
    return CallError(f"{type(exc).__name__}: {exc}", retryable=False)


def _is_transport_error(exc: BaseException) -> bool:
    import httpx

    kinds: tuple[type[BaseException], ...] = (httpx.TransportError, ConnectionError)
    try:
        import aiohttp

        kinds += (aiohttp.ClientError,)
    except ImportError:
        pass
    return isinstance(exc, kinds)


def candidate_text(candidate) -> str:
    """The answer text of one candidate (thought parts left out), or CallError for a failed sample."""
    finish = getattr(candidate.finish_reason, "value", candidate.finish_reason)
    if finish == "LANGUAGE":  # the model does not answer in this language: a new sample will not either
        raise CallError("a candidate was blocked (finish_reason LANGUAGE: a language the model does not "
                        "support)", retryable=False)
    if finish not in _OK_FINISH:
        raise CallError(f"a candidate was blocked (finish_reason {finish})", retryable=True)
    parts = (candidate.content.parts if candidate.content is not None else None) or []
    answer = [p.text for p in parts if p.text is not None and not p.thought]
    if answer:
        return "".join(answer)
    if any(p.thought for p in parts):
        if finish == "MAX_TOKENS":
            raise CallError("the model spent its whole output budget thinking and wrote no answer (lower "
                            "teacher.thinking_budget or set it to 0)", retryable=False)
        raise CallError("a thinking-only candidate (no answer text)", retryable=True)
    raise CallError(f"an empty candidate (finish_reason {finish}, no text)", retryable=True)


def mode_refusal(cfg: TeacherConfig) -> str | None:
    """Why this teacher cannot run in `cfg.completion_mode` (None: it can); the constructor and the preflight
    both ask here."""
    if cfg.completion_mode == "completions":
        return ("teacher.completion_mode=completions: is for OpenAI-compatible servers; the gemini teacher takes "
                "'instruct' (the default under 'auto') or 'chat' (a final model turn)")
    return None


class GeminiTeacher(RemoteTeacher):
    kind = "gemini"

    def __init__(self, cfg: TeacherConfig, cache: ResponseCache | None = None):
        from google import genai
        from google.genai import types

        self.sdk = genai
        self._types = types
        if refusal := mode_refusal(cfg):
            raise ValueError(refusal)
        self.mode = "chat" if cfg.completion_mode == "chat" else "instruct"
        key = read_api_key(cfg.api_key_env, required=True)
        super().__init__(cfg, cache)
        options = types.HttpOptions(base_url=cfg.base_url or None, timeout=int(cfg.timeout_s * 1000))
        self._client = genai.Client(api_key=key, http_options=options)

    @property
    def cache_tag(self) -> str:
        """The thinking budget changes the replies, so it keys the cache too."""
        return f"{super().cache_tag}+thinking-{self.cfg.thinking_budget}"

    def estimate_split(self, req: TeacherRequest, n: int) -> tuple[int, int]:
        """Each candidate may spend `max_output_tokens` = max_tokens + the thinking budget: charged up front."""
        prompt, completion = super().estimate_split(req, n)
        return prompt, completion + n * self.cfg.thinking_budget

    def _split(self, req: TeacherRequest) -> list[int]:
        per_call = self.cfg.candidates_per_call
        return [min(per_call, req.n - i) for i in range(0, req.n, per_call)]

    def request(self, req: TeacherRequest, n: int) -> dict:
        """Keyword arguments of `generate_content` for `n` candidates of `req`."""
        types = self._types
        chat = self.instructed(req) if self.mode == "instruct" else req.messages
        system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
        contents = [types.Content(role="model" if m["role"] == "assistant" else "user",
                                  parts=[types.Part(text=m["content"])]) for m in chat if m["role"] != "system"]
        if self.mode == "chat" and req.prefix:
            contents.append(types.Content(role="model", parts=[types.Part(text=req.prefix)]))
        config = types.GenerateContentConfig(
            candidate_count=n, max_output_tokens=req.max_tokens + self.cfg.thinking_budget,
            temperature=req.temperature, system_instruction=system or None,
            thinking_config=types.ThinkingConfig(thinking_budget=self.cfg.thinking_budget),
            seed=req.seed if req.seed is not None and self.cfg.send_seed else None)
        return {"model": self.cfg.model, "contents": contents, "config": config}

    async def _attempt(self, req: TeacherRequest, n: int) -> Reply:
        try:
            response = await self._client.aio.models.generate_content(**self.request(req, n))
        except Exception as e:  # noqa: BLE001 - classified here: the SDK's errors are not the engine's kind
            raise classify(e) from None
        usage = response.usage_metadata
        prompt = (usage.prompt_token_count or 0) if usage is not None else 0
        output = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
        try:
            feedback = response.prompt_feedback
            if feedback is not None and feedback.block_reason is not None:
                reason = getattr(feedback.block_reason, "value", feedback.block_reason)
                raise CallError(f"the prompt was blocked ({reason})", retryable=False)
            if not response.candidates:
                raise CallError("malformed response: no candidates", retryable=True)
            candidates = sorted(response.candidates, key=lambda c: c.index or 0)
            texts: list[str | None] = []
            failures: list[str] = []
            for candidate in candidates:  # a failed candidate is one failed sample: the others are kept
                try:
                    texts.append(self.continuation(candidate_text(candidate), req))
                except CallError as e:
                    if not e.retryable:
                        raise
                    texts.append(None)
                    failures.append(str(e))
        except CallError as e:  # billed all the same
            e.prompt_tokens, e.completion_tokens = prompt, output
            raise
        return Reply(texts, prompt, output, failure="; ".join(dict.fromkeys(failures)))

    async def _aclose(self) -> None:
        await self._client.aio.aclose()
