"""Content-addressed cache (SQLite, WAL): LLM answers and finished records survive any crash.

Keys are sha256 of everything that determines the value (text hash, model, prompt version,
schema version, code version), so a change to any of them is a cache miss, never a stale hit.
Each ``put`` is its own committed transaction: a killed run keeps everything finished before it.
Values are zlib-compressed JSON (a record with its evidence is ~30 KB of text, ~5 KB compressed);
plain-text values written by 0.1.0 are still read.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import zlib
from pathlib import Path


def key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


class Cache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # Two worker processes opening a new cache at once: switching it to WAL answers "database
        # is locked" at once, without waiting out the busy timeout, so the opening is retried.
        deadline = time.monotonic() + 30
        while True:
            db = None
            try:
                db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, kind TEXT, v TEXT)")
                db.commit()
                self._db = db
                return
            except sqlite3.OperationalError as e:
                if db is not None:  # (connect itself can fail: a folder that cannot hold the file)
                    db.close()
                if "locked" not in str(e):
                    raise RuntimeError(f"{path}: cache database is damaged ({e}); delete it to start over") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path}: cache database is locked by another process for 30 s ({e})") from None
                time.sleep(0.05)
            except sqlite3.DatabaseError as e:
                raise RuntimeError(f"{path}: cache database is damaged ({e}); delete it to start over") from None

    def get(self, k: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT v FROM kv WHERE k=?", (k,)).fetchone()
        if not row:
            return None
        v = row[0]
        return json.loads(zlib.decompress(v) if isinstance(v, bytes) else v)

    def put(self, k: str, kind: str, value: dict) -> None:
        data = zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 1)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv (k, kind, v) VALUES (?,?,?)", (k, kind, data))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
