"""On-disk response cache (SQLite) so a resumed or repeated run does not pay the teacher twice.

Keyed by sha256 of (backend kind, model, messages, prefix, n, max_tokens, temperature, seed); only
complete replies (exactly n texts) are stored. WAL journal + one transaction per write: a process
killed in the middle of a write leaves the database readable with every earlier write intact.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class CachedReply:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: int


def cache_key(kind: str, model: str, messages: list[dict[str, str]], prefix: str, n: int,
              max_tokens: int, temperature: float, seed: int | None) -> str:
    payload = [kind, model, messages, prefix, n, max_tokens, float(temperature), seed]
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Thread-safe get/put of teacher replies in one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE ... COMMIT) in `put`.
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except sqlite3.DatabaseError as e:
            raise RuntimeError(f"teacher cache {self.path}: cannot open ({e}); delete it or set "
                               "teacher.cache=off") from e

    def get(self, key: str) -> CachedReply | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM replies WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = json.loads(row[0])
        return CachedReply(list(value["texts"]), int(value["prompt_tokens"]), int(value["completion_tokens"]))

    def put(self, key: str, reply: CachedReply) -> None:
        value = json.dumps({"texts": reply.texts, "prompt_tokens": reply.prompt_tokens,
                            "completion_tokens": reply.completion_tokens}, ensure_ascii=False)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT OR REPLACE INTO replies (key, value) VALUES (?, ?)", (key, value))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
