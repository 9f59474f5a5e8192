"""Anthropic teacher (official `anthropic` SDK, AsyncAnthropic, the Messages API).

Prefill is native: the prefix goes in as the final assistant message and the reply's text blocks
are its continuation. The API rejects a final assistant message that ends in whitespace, so that
whitespace is held back and removed from the start of the continuation. The Messages API has no
`n` and no `seed`: n samples are n requests (each retried on its own), and seeds only key the cache.
System turns are joined into the top-level `system` parameter.

`temperature` is sent (in the body; SDK 2.x no longer types it) only when it differs from the API's
default of 1.0, so `teacher.temperature=1.0` also works with models that refuse sampling parameters.
Models without prefill support answer HTTP 400; that is a config error naming
`teacher.completion_mode=instruct` (`prefill_refused`), never retried: in that mode the partial answer goes in
the user turn (`instruct.py`).
"""

from __future__ import annotations

import re

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers.base import TeacherRequest
from omniopd.rollout.teachers.cache import ResponseCache
from omniopd.rollout.teachers.instruct import instruct_messages
from omniopd.rollout.teachers.remote import CallError, RemoteTeacher, Reply
from omniopd.rollout.teachers.secrets import read_api_key


def build_messages_params(model: str, req: TeacherRequest, *, instruct: bool = False) -> tuple[dict, str]:
    """Keyword arguments of `messages.create` for `req`, and the prefix whitespace held back. `instruct`: the
    partial answer goes in the user turn (`instruct.py`), nothing is prefilled."""
    chat = instruct_messages(req.messages, req.prefix) if instruct else req.messages
    system = "\n\n".join(m["content"] for m in chat if m["role"] == "system")
    turns = [{"role": m["role"], "content": m["content"]} for m in chat if m["role"] != "system"]
    head = "" if instruct else req.prefix.rstrip()
    if head:
        turns.append({"role": "assistant", "content": head})
    params: dict = {"model": model, "max_tokens": req.max_tokens, "messages": turns}
    if system:
        params["system"] = system
    if req.temperature != 1.0:
        params["extra_body"] = {"temperature": req.temperature}
    return params, "" if instruct else req.prefix[len(head):]


# Anthropic models that Anthropic's own documentation says refuse a prefilled final assistant turn (HTTP 400):
# Claude Opus 4.6. Others (Sonnet 4.6 is reported to refuse it only by third-party guides) are left to the
# request's own 400, which `prefill_refused` turns into the same advice: refusing a model offline on a rule
# we cannot verify would block runs that may work.
_NO_PREFILL = re.compile(r"claude-opus-4[-.]6(?!\d)")


def mode_refusal(cfg: TeacherConfig) -> str | None:
    """Why this teacher cannot run in `cfg.completion_mode` (None: it can); the constructor and the preflight
    both ask here."""
    if cfg.completion_mode != "instruct" and _NO_PREFILL.search(cfg.model.lower()):
        return (f"teacher.completion_mode={cfg.completion_mode} with teacher.model={cfg.model!r}: this model takes no "
                "prefilled assistant turn (Anthropic's Claude 4.6 models answer HTTP 400); set "
                "teacher.completion_mode=instruct")
    return None


def prefill_refused(exc: BaseException) -> CallError | None:
    """An HTTP 400 saying the model takes no prefilled final assistant turn, as a config error naming the mode
    that avoids it (None for any other error)."""
    if getattr(exc, "status_code", None) != 400:
        return None
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    message = str((error or {}).get("message") or getattr(exc, "message", "") or exc)
    lowered = message.lower()
    about_prefill = "prefill" in lowered or ("assistant" in lowered and ("final" in lowered or "last" in lowered))
    refused = any(word in lowered for word in ("not support", "does not accept", "not accept", "not allowed",
                                               "must end with a user", "unsupported"))
    if not (about_prefill and refused):
        return None
    return CallError(f"config error: this model takes no prefilled assistant turn; set "
                     f"teacher.completion_mode=instruct (HTTP 400: {message})", retryable=False, status=400)


def continuation_text(content: list, held_back: str) -> str:
    """The reply's text after the full prefix, given the whitespace that was not sent."""
    text = "".join(block.text for block in content if getattr(block, "type", None) == "text")
    if not held_back:
        return text
    # The model usually re-emits the held-back whitespace; if it chose other whitespace, the prefix's wins.
    return text[len(held_back):] if text.startswith(held_back) else text.lstrip()


class AnthropicTeacher(RemoteTeacher):
    kind = "anthropic"

    def __init__(self, cfg: TeacherConfig, cache: ResponseCache | None = None):
        import anthropic

        self.sdk = anthropic
        if refusal := mode_refusal(cfg):
            raise ValueError(refusal)
        # Every mode but 'instruct' is the native prefill (a final assistant turn the API continues).
        self.mode = "instruct" if cfg.completion_mode == "instruct" else "prefill"
        key = read_api_key(cfg.api_key_env, required=True)
        super().__init__(cfg, cache)
        self._client = anthropic.AsyncAnthropic(api_key=key, base_url=cfg.base_url or None,
                                                timeout=cfg.timeout_s, max_retries=0)

    def _split(self, req: TeacherRequest) -> list[int]:
        return [1] * req.n

    async def _attempt(self, req: TeacherRequest, n: int) -> Reply:
        params, held_back = build_messages_params(self.cfg.model, req, instruct=self.mode == "instruct")
        try:
            message = await self._client.messages.create(**params)
        except self.sdk.BadRequestError as e:
            raise (prefill_refused(e) if self.mode == "prefill" else None) or e from None
        try:
            if message.stop_reason is None or not isinstance(message.content, list):
                raise CallError("malformed response: no stop_reason or content", retryable=True)
            text = self.continuation(continuation_text(message.content, held_back), req)
            return Reply([text], message.usage.input_tokens or 0, message.usage.output_tokens or 0)
        except (AttributeError, TypeError) as e:  # a body that is not a message at all
            raise CallError(f"malformed response ({type(e).__name__}: {e})", retryable=True) from e

    async def _aclose(self) -> None:
        await self._client.close()
