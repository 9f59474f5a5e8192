"""API keys: read only from the environment, and scrubbed from every error and log record.

A key is registered when a teacher reads it; from then on `scrub` replaces it in any text, and a
log-record factory (installed once per process) removes it from every logging record of every
library — the SDKs and httpx included — before any handler formats or writes it.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback

REDACTED = "[REDACTED]"
_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False


class MissingKeyError(RuntimeError):
    """The environment variable named by `teacher.api_key_env` is not set."""


def read_api_key(env_name: str, *, required: bool) -> str | None:
    """The key held by environment variable `env_name` (registered for scrubbing), or None."""
    value = os.environ.get(env_name, "") if env_name else ""
    if not value:
        if required:
            raise MissingKeyError(f"teacher.api_key_env={env_name!r}: set this environment variable to "
                                  "the API key (keys are never read from config files)")
        return None
    register_secret(value)
    return value


def register_secret(value: str) -> None:
    """Scrub `value` from errors and log records from now on."""
    if len(value) < 4:  # a one-letter "key" would redact every such letter in every log line
        return
    with _lock:
        _secrets.add(value)
    _install_log_scrubber()


def scrub(text: str) -> str:
    """`text` with every registered secret replaced by [REDACTED]."""
    for secret in tuple(_secrets):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _install_log_scrubber() -> None:
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    make_record = logging.getLogRecordFactory()

    def scrubbing_factory(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if not _secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not ours
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters use a preset exc_text instead of formatting the traceback themselves.
            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(scrubbing_factory)
