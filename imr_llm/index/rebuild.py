"""``imr index --rebuild``: a whole new index beside the one in use, swapped in when complete."""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Iterable

from ..config import env
from ..core.models import DecisionRecord
from ..procs import remove_stale
from ..providers import embed as emb
from . import COLLECTION, Index, index_dir
from .vectors import check_chroma_server, drop_server_lists, forget_clients


class Rebuild:
    """``--rebuild``: a new index is built beside the current one (its own folder, and with a Chroma
    server its own collection) and swapped in only when complete; until then, and if the build
    fails or is killed, the current index stays as it was."""

    def __init__(self, data_dir: Path, embedder: str | None):
        check_chroma_server()
        self.data_dir = data_dir
        final = index_dir(data_dir)
        remove_stale(data_dir, "index.rebuild-*")  # left by a killed rebuild
        if not final.exists():  # a rebuild killed between its two renames: the previous index comes back
            olds = sorted(data_dir.glob("index.old-*"), key=lambda p: p.stat().st_mtime)
            if olds:
                olds[-1].rename(final)
        self.new_dir = data_dir / f"index.rebuild-{os.getpid()}"
        shutil.rmtree(self.new_dir, ignore_errors=True)
        self.index = Index(data_dir, embedder=embedder or emb.spec_from_env(), create=True, folder=self.new_dir)
        self.index.store.set_meta("collection", f"{COLLECTION}_{int(time.time() * 1000)}")
        self.index.store.commit()
        self.final = final

    def swap_in(self) -> None:
        old_collection = None
        if (self.final / "store.sqlite").exists():
            try:
                db = sqlite3.connect(str(self.final / "store.sqlite"))
                old_collection = (db.execute("SELECT v FROM meta WHERE k='collection'").fetchone() or [COLLECTION])[0]
                db.close()
            except sqlite3.Error:
                pass
        self.index.store.db.close()
        forget_clients()
        old = self.data_dir / f"index.old-{os.getpid()}"
        if self.final.exists():
            self.final.rename(old)
        self.new_dir.rename(self.final)
        shutil.rmtree(old, ignore_errors=True)
        if old_collection and env().chroma_url:
            try:
                drop_server_lists(old_collection)
            except Exception:
                pass  # the old vectors stay on the server, unused; the new index is complete

    def abort(self) -> None:
        self.index.store.db.close()
        if env().chroma_url:
            try:
                drop_server_lists(self.index.store.get_meta("collection"))
            except Exception:
                pass
        forget_clients()
        shutil.rmtree(self.new_dir, ignore_errors=True)


def rebuild(data_dir: Path, embedder: str | None, records: Iterable[DecisionRecord] | Path, on_letter=None,
            batch: int = 512) -> tuple[Index, dict]:
    """Build a whole new index from ``records`` (or a records file) and swap it in; the index in use
    is untouched on failure."""
    rb = Rebuild(data_dir, embedder)
    try:
        if isinstance(records, Path):
            stats = rb.index.add_file(records, batch=batch, on_letter=on_letter)
        else:
            stats = rb.index.add(records, batch=batch, on_letter=on_letter)
    except BaseException:
        rb.abort()
        raise
    rb.swap_in()
    rb.index.lock.release()
    return Index(data_dir, embedder=None), stats
