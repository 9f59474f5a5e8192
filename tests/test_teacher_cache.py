"""The teacher's SQLite cache: keys, and a write killed mid-way (SIGKILL) leaves a readable cache."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

from omniopd.rollout.teachers.cache import CachedReply, ResponseCache, cache_key

WRITER = """
import sys
from omniopd.rollout.teachers.cache import CachedReply, ResponseCache
cache = ResponseCache(sys.argv[1])
i = 0
while True:  # large values so that the kill lands inside a write most of the time
    cache.put(f"key-{i}", CachedReply([f"text {i} " + "x" * 20000] * 4, i, 2 * i))
    i += 1
    if i == 50:
        print("writing", flush=True)
"""


def test_key_covers_every_field():
    base = dict(kind="openai", model="m", messages=[{"role": "user", "content": "q"}], prefix="p", n=2,
                max_tokens=8, temperature=0.7, seed=1)
    keys = {cache_key(**base)}
    for name, other in [("kind", "anthropic"), ("model", "m2"), ("messages", [{"role": "user", "content": "r"}]),
                        ("prefix", "p "), ("n", 3), ("max_tokens", 9), ("temperature", 0.8), ("seed", None)]:
        keys.add(cache_key(**{**base, name: other}))
    assert len(keys) == 9
    assert cache_key(**base) == cache_key(**{**base, "temperature": 0.7})


def test_killed_write_leaves_a_readable_cache(tmp_path):
    path = tmp_path / "teacher_cache.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    cache = ResponseCache(path)
    try:
        count = len(cache)
        assert count >= 50
        for i in range(count):  # every committed write reads back whole; keys are written in order
            reply = cache.get(f"key-{i}")
            assert reply is not None and reply.prompt_tokens == i and len(reply.texts) == 4
        cache.put("after", CachedReply(["still writable"], 1, 1))
        assert cache.get("after").texts == ["still writable"]
    finally:
        cache.close()
