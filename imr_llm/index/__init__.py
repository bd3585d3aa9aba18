"""The index: Chroma (dense) + bm25s (lexical) over the same chunk ids, and a SQLite record store.

The SQLite store holds every chunk's text, offsets and filter fields plus the records and items
themselves: filters are evaluated there (Chroma's ``where`` on broad filters costs 400-900 ms at
100k rows), counting/listing questions are answered there exactly, and the BM25 index is rebuilt
from it. Chroma holds the vectors: a local ``PersistentClient`` or, with ``IMR_CHROMA_URL``, a
shared server. The embedder's identity and the schema version are stored and checked on open.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Iterator

from ..providers import embed as emb
from ..config import env
from ..procs import remove_stale
from .chunk import Chunk, chunks_for
from ..core.filters import COLUMNS, Filters, row_values, write_facets
from ..core.models import SCHEMA_VERSION, DecisionRecord

import numpy as np

COLLECTION = "imr_chunks"
INDEX_FORMAT = "2"  # 2: filter columns from filters.COLUMNS (drug class, partial, dates, counts)


class IndexError_(Exception):
    """A one-line, actionable index problem (wrong embedder, newer schema, damaged folder)."""


def index_dir(data_dir: Path) -> Path:
    return data_dir / "index"


# Filter columns (``filters.COLUMNS``) sit on both tables: items answer counts exactly, chunks are
# what retrieval filters. The rest of each table is written out here.
_ITEM_BASE = {"letter_id": "TEXT", "item": "INTEGER", "cite_id": "TEXT", "request": "TEXT", "drug": "TEXT",
              "guidelines": "TEXT", "denial_reasons": "TEXT"}
_CHUNK_BASE = {"id": "TEXT UNIQUE", "letter_id": "TEXT", "item": "INTEGER", "n": "INTEGER", "text": "TEXT", "context": "TEXT",
               "start": "INTEGER", "end": "INTEGER", "digest": "TEXT", "cite_id": "TEXT", "source_path": "TEXT",
               "request": "TEXT", "guidelines": "TEXT", "denial_reasons": "TEXT"}
ITEM_COLUMNS = {**_ITEM_BASE, **{c: t for c, t in COLUMNS.items() if c not in _ITEM_BASE}}
ITEM_FACETS = [c for c in ITEM_COLUMNS if c not in ("request", "drug")]  # what stats and the page group and filter by
CHUNK_COLUMNS = {**_CHUNK_BASE, **{c: t for c, t in COLUMNS.items() if c not in _CHUNK_BASE}}


def _cols(d: dict[str, str]) -> str:
    return ", ".join(f'"{c}" {t}' for c, t in d.items())


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS records (letter_id TEXT PRIMARY KEY, cite_id TEXT, source_path TEXT, sha256 TEXT, json TEXT,
  paths TEXT);
CREATE INDEX IF NOT EXISTS records_sha ON records(sha256);
CREATE TABLE IF NOT EXISTS items ({_cols(ITEM_COLUMNS)}, PRIMARY KEY (letter_id, item));
CREATE TABLE IF NOT EXISTS chunks (rowid INTEGER PRIMARY KEY, {_cols(CHUNK_COLUMNS)}, vec BLOB);
CREATE INDEX IF NOT EXISTS chunks_letter ON chunks(letter_id);
CREATE INDEX IF NOT EXISTS items_decision ON items(decision, category);
"""


class Store:
    """SQLite side of the index."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), timeout=30)
            self.db.executescript("PRAGMA journal_mode=WAL;" + _SCHEMA)
        except sqlite3.DatabaseError as e:
            raise IndexError_(f"{path}: index store is damaged ({e}); run `imr index --rebuild RECORDS`") from None

    def get_meta(self, k: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return row[0] if row else None

    def set_meta(self, k: str, v: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (k, v))

    def digests(self, letter_id: str) -> dict[str, str]:
        return dict(self.db.execute("SELECT id, digest FROM chunks WHERE letter_id=?", (letter_id,)).fetchall())

    def put_letter(self, rec: DecisionRecord, chunks: list[Chunk]) -> list[str]:
        """Replace one letter's rows; returns chunk ids that no longer exist (to delete from Chroma)."""
        old = set(self.digests(rec.letter_id))
        kept = self.db.execute("SELECT paths, sha256 FROM records WHERE letter_id=?", (rec.letter_id,)).fetchone()
        # copies listed with the letter stay listed while its content is the same
        paths = [p for p in json.loads(kept[0] or "[]") if p != rec.source_path] if kept and kept[1] == rec.sha256 else []
        self.db.execute("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?,?)",
                        (rec.letter_id, rec.cite_id, rec.source_path, rec.sha256, rec.model_dump_json(),
                         json.dumps([rec.source_path] + paths)))
        self.db.execute("DELETE FROM items WHERE letter_id=?", (rec.letter_id,))
        rows = [_item_row(rec, i) for i in range(len(rec.items))]
        self.db.executemany(_insert("items", ITEM_COLUMNS), [[r.get(c) for c in ITEM_COLUMNS] for r in rows])
        gone = sorted(old - {c.id for c in chunks})
        if gone:
            self.db.executemany("DELETE FROM chunks WHERE id=?", [(g,) for g in gone])
        self.db.executemany(_insert("chunks", CHUNK_COLUMNS, upsert=True),
                            [[_chunk_row(rec, c, rows).get(col) for col in CHUNK_COLUMNS] for c in chunks])
        return gone

    def place(self, rec: DecisionRecord) -> DecisionRecord | None:
        """Where a record goes. Ids come from file names, so two folders' ``letter.txt`` would share
        one: a different letter (other content, other path) under a taken id gets ``id~sha8``; the
        same content already indexed from another path is one letter (None: its path is listed
        with it, nothing is counted twice); the same path with new content replaces its record."""
        same = self.db.execute("SELECT letter_id, source_path, paths FROM records WHERE sha256=?", (rec.sha256,)).fetchone()
        if same and rec.source_path != same[1]:
            paths = json.loads(same[2] or "[]")
            if rec.source_path not in paths:
                self.db.execute("UPDATE records SET paths=? WHERE letter_id=?", (json.dumps(paths + [rec.source_path]), same[0]))
            return None
        if same:
            return rec.model_copy(update={"letter_id": same[0]})  # the same file again: an idempotent re-index
        taken = self.db.execute("SELECT source_path, sha256 FROM records WHERE letter_id=?", (rec.letter_id,)).fetchone()
        if taken and taken[1] != rec.sha256 and taken[0] != rec.source_path:
            return rec.model_copy(update={"letter_id": f"{rec.letter_id}~{rec.sha256[:8]}"})
        return rec

    # -- reading: every query of the items, records and chunks tables lives here
    ITEM_ORDER = "decision_date DESC, letter_id, item"

    def select_items(self, f: Filters, cols: str, order: str | None = None, limit: int | None = None,
                     offset: int = 0) -> list[tuple]:
        """``cols`` of the items that ``f`` keeps; ``order`` an ORDER BY over items' columns."""
        where, args = f.sql()
        sql = f"SELECT {cols} FROM items WHERE {where}" + (f" ORDER BY {order}" if order else "")
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args = [*args, limit, offset]
        return self.db.execute(sql, args).fetchall()

    def items_by_rowid(self, rowids: list[int], cols: str) -> list[tuple]:
        """``cols`` of these items, in the order given (the page after the columnar path chose them)."""
        got = {r[0]: r[1:] for r in self.db.execute(f"SELECT rowid, {cols} FROM items WHERE rowid IN ({','.join('?' * len(rowids))})", rowids)}
        return [got[i] for i in rowids if i in got]

    def count_items(self, f: Filters | None = None) -> tuple[int, int]:
        """(items, letters) that ``f`` keeps (all when None)."""
        where, args = (f or Filters()).sql()
        return self.db.execute(f"SELECT count(*), count(DISTINCT letter_id) FROM items WHERE {where}", args).fetchone()

    def group_items(self, f: Filters, expr: str) -> list[tuple]:
        """(value of ``expr``, items) for the items ``f`` keeps."""
        where, args = f.sql()
        return self.db.execute(f"SELECT {expr}, count(*) FROM items WHERE {where} GROUP BY 1", args).fetchall()

    def latest_decision(self) -> str | None:
        row = self.db.execute("SELECT max(nullif(decision_date, '')) FROM items").fetchone()
        return row[0] if row else None

    def record(self, letter_id: str) -> tuple[str, list[str]] | None:
        """(record JSON, every path the letter came from), or None for an unknown id."""
        got = self.db.execute("SELECT json, paths FROM records WHERE letter_id=?", (letter_id,)).fetchone()
        return (got[0], json.loads(got[1] or "[]")) if got else None

    def records(self) -> Iterator[tuple[str, list[str]]]:
        """(record JSON, paths) of every letter, in source-path order."""
        for js, paths in self.db.execute("SELECT json, paths FROM records ORDER BY source_path"):
            yield js, json.loads(paths or "[]")

    def letter_paths(self) -> dict[str, tuple[str, list[str]]]:
        return {lid: (src, json.loads(ps or "[]")) for lid, src, ps in self.db.execute("SELECT letter_id, source_path, paths FROM records")}

    def chunk_ids(self, f: Filters) -> list[str]:
        where, args = f.sql()
        return [r[0] for r in self.db.execute(f"SELECT id FROM chunks WHERE {where}", args)]

    # -- schema upgrades: numbered, in order, each in one transaction
    def migrate(self) -> list[str]:
        """Bring a store written by an earlier imr-llm to ``INDEX_FORMAT`` in place; what was done."""
        has_rows = self.db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is not None
        fmt = int(self.get_meta("index_format") or ("1" if has_rows else INDEX_FORMAT))
        done = []
        for target, step in MIGRATIONS:
            if fmt < target:
                try:
                    done.append(step(self))
                    self.set_meta("index_format", str(target))
                    self.db.commit()
                except BaseException:
                    self.db.rollback()
                    raise
                fmt = target
        return done

    def write_item_facets(self, path: Path) -> None:
        """The items table as columns of codes (``items.npz``): filters, counts and rates over a
        million items in milliseconds (``stats``, the page), where a SQL scan takes seconds."""
        cols = list(ITEM_FACETS)
        rows = self.db.execute(f"SELECT {', '.join(f'[{c}]' for c in cols)}, rowid FROM items ORDER BY {self.ITEM_ORDER}").fetchall()
        order = np.array([r[-1] for r in rows], dtype=np.int64)  # rowids, newest decision first (the page's order)
        write_facets((r[:-1] for r in rows), path, cols, {"rowid": order})

    def set_vectors(self, ids: list[str], vecs) -> None:
        self.db.executemany("UPDATE chunks SET vec=? WHERE id=?", [(v.astype("float32").tobytes(), i) for i, v in zip(ids, vecs)])

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def all_texts(self) -> Iterator[tuple[int, str, str]]:
        yield from self.db.execute("SELECT rowid, id, context || ' ' || text FROM chunks ORDER BY rowid")

    def rows(self, ids: Iterable[str]) -> dict[str, dict]:
        ids = list(ids)
        out: dict[str, dict] = {}
        cur = self.db.cursor()
        for i in range(0, len(ids), 900):
            part = ids[i:i + 900]
            cur.execute(f"SELECT * FROM chunks WHERE id IN ({','.join('?' * len(part))})", part)
            cols = [d[0] for d in cur.description]
            for r in cur.fetchall():
                d = dict(zip(cols, r))
                out[d["id"]] = d
        return out

    def commit(self) -> None:
        self.db.commit()


def _migrate_to_2(store: "Store") -> str:
    """Format 1 -> 2: the filter columns of ``filters.COLUMNS`` and the records' paths, filled from
    each stored record (fields a format-1 record never had stay empty until it is re-extracted)."""
    db = store.db
    for table, cols in (("items", ITEM_COLUMNS), ("chunks", CHUNK_COLUMNS), ("records", {"paths": "TEXT"})):
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        for c, t in cols.items():
            if c not in have:
                db.execute(f'ALTER TABLE {table} ADD COLUMN "{c}" {t.replace(" UNIQUE", "")}')
    item_cols = [c for c in ITEM_COLUMNS if c not in ("letter_id", "item")]
    n = 0
    for lid, js, src in db.execute("SELECT letter_id, json, source_path FROM records").fetchall():
        rec = DecisionRecord.model_validate_json(js)
        db.execute("UPDATE records SET paths=? WHERE letter_id=?", (json.dumps([src]), lid))
        for i in range(len(rec.items)):
            row = _item_row(rec, i)
            db.execute(f"UPDATE items SET {', '.join(f'[{c}]=?' for c in item_cols)} WHERE letter_id=? AND item=?",
                       [row.get(c) for c in item_cols] + [lid, i])
        for (item,) in db.execute("SELECT DISTINCT item FROM chunks WHERE letter_id=?", (lid,)).fetchall():
            row = row_values(rec, item)
            cols = [c for c in COLUMNS if c != "letter_id"]
            db.execute(f"UPDATE chunks SET {', '.join(f'[{c}]=?' for c in cols)} WHERE letter_id=? AND item=?",
                       [row.get(c) for c in cols] + [lid, item])
        n += 1
    return f"format 2: filter columns added and filled for {n} letters"


# (index format reached, step): run in order by Store.migrate
MIGRATIONS = [(2, _migrate_to_2)]


def _insert(table: str, cols: dict[str, str], upsert: bool = False) -> str:
    names = ", ".join(f'"{c}"' for c in cols)
    sql = f"INSERT INTO {table} ({names}) VALUES ({','.join('?' * len(cols))})"
    if upsert:  # keep the row (and its vector) when a re-index finds the same chunk id
        sql += " ON CONFLICT(id) DO UPDATE SET " + ", ".join(f'"{c}"=excluded."{c}"' for c in cols if c != "id")
    return sql


def _item_row(rec: DecisionRecord, i: int) -> dict:
    it = rec.items[i]
    return {**row_values(rec, i), "item": i, "cite_id": rec.cite_id, "request": it.request, "drug": it.drug,
            "guidelines": "|" + "|".join(sorted({g.name for g in it.guideline_sources})) + "|",
            "denial_reasons": "|" + "|".join(it.denial_reasons) + "|"}


def _chunk_row(rec: DecisionRecord, c: Chunk, item_rows: list[dict]) -> dict:
    base = item_rows[c.item] if c.item >= 0 else {**row_values(rec, -1), "request": "", "guidelines": "|", "denial_reasons": "|"}
    return {**base, "id": c.id, "item": c.item, "n": c.n, "text": c.text, "context": c.context, "start": c.start,
            "end": c.end, "digest": c.digest, "cite_id": rec.cite_id, "source_path": rec.source_path,
            "kind": "summary" if c.item < 0 else "rationale"}


def chroma_client(path: Path):
    import chromadb
    from chromadb.config import Settings as CSettings

    e = env()
    url = e.chroma_url
    cs = CSettings(anonymized_telemetry=False, allow_reset=False)
    if url:
        from urllib.parse import urlparse

        u = urlparse(url)
        from ..config import is_private_url
        if e.local_only and not is_private_url(url):
            raise IndexError_(f"IMR_LOCAL_ONLY is set: refusing Chroma server {url!r}")
        return chromadb.HttpClient(host=u.hostname, port=u.port or (443 if u.scheme == "https" else 8000),
                                   ssl=u.scheme == "https", settings=cs)
    return chromadb.PersistentClient(path=str(path), settings=cs)


class Index:
    """Open (or create) the index under ``data_dir``; ``embedder`` is an ``embed.make`` spec."""

    def __init__(self, data_dir: Path, embedder: str | None = None, create: bool = False, local_only: bool = False,
                 folder: Path | None = None):
        self.dir = folder or index_dir(data_dir)
        self.lock: WriterLock | None = None
        if create:  # one writer at a time; a second one gets a clear line instead of a corrupted index
            self.lock = WriterLock(data_dir)
        elif not (self.dir / "bm25" / "ids.json").is_file():
            holder = WriterLock.holder(data_dir)
            if holder:
                raise IndexError_(f"the index in {self.dir} is being built (imr pid {holder}); ask again when it finishes")
            if not (self.dir / "store.sqlite").is_file():
                raise IndexError_(f"no index in {self.dir}: run `imr index RECORDS.jsonl` or `imr ingest LETTERS` first")
            raise IndexError_(f"no complete index in {self.dir} (an earlier `imr index` did not finish, or its lexical "
                              f"index was deleted): run `imr index --rebuild RECORDS`")
        self.store = Store(self.dir / "store.sqlite")
        self.spec = embedder or self.store.get_meta("embedder_spec") or emb.spec_from_env()
        want = emb.identity(self.spec)
        have = self.store.get_meta("embedder")
        if have and have != want:
            raise IndexError_(f"the index in {self.dir} was built with embedder {have!r}, not {want!r}: "
                              f"set IMR_EMBEDDER to match, or rebuild with `imr index --rebuild RECORDS`")
        sv = self.store.get_meta("schema_version")
        if sv and sv.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise IndexError_(f"the index in {self.dir} holds schema {sv}, this imr-llm writes {SCHEMA_VERSION}: "
                              f"run `imr index --rebuild RECORDS`")
        self.upgraded = self.store.migrate() if create else []  # a writer upgrades the store in place
        fmt = self.store.get_meta("index_format")
        if fmt != INDEX_FORMAT and self.store.db.execute("SELECT 1 FROM records LIMIT 1").fetchone():
            raise IndexError_(f"the index in {self.dir} was built by an earlier imr-llm (index format {fmt or '1'}, "
                              f"this version reads {INDEX_FORMAT}): `imr index --upgrade` upgrades it in place "
                              f"(or `imr index --rebuild RECORDS`)")
        self.local_only = local_only
        self._embedder = None
        self._collection = None
        self.identity = want

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = emb.make(self.spec, self.local_only)
        return self._embedder

    @property
    def collection(self):
        if self._collection is None:
            name = self.store.get_meta("collection") or COLLECTION
            try:
                client = chroma_client(self.dir / "chroma")
                self._collection = client.get_or_create_collection(
                    name, metadata={"hnsw:space": "cosine", "embedder": self.identity, "imr_format": INDEX_FORMAT},
                    embedding_function=emb.chroma_function(self.spec))
            except IndexError_:
                raise
            except Exception as e:
                if env().chroma_url:
                    raise IndexError_(f"the Chroma server at {env().chroma_url} did not answer ({type(e).__name__}: "
                                      f"{str(e)[:120]}); start it (or unset IMR_CHROMA_URL); nothing was changed") from None
                raise IndexError_(f"cannot open the Chroma index in {self.dir / 'chroma'} ({type(e).__name__}: {str(e)[:120]}); "
                                  f"run `imr index --rebuild RECORDS`") from None
            meta = self._collection.metadata or {}
            if meta.get("embedder") not in (None, self.identity):
                raise IndexError_(f"Chroma collection {COLLECTION!r} holds vectors of {meta.get('embedder')!r}, not {self.identity!r}: "
                                  f"rebuild with `imr index --rebuild RECORDS`")
        return self._collection

    # -- writing
    def add(self, records: Iterable[DecisionRecord], batch: int = 512, on_letter=None) -> dict:
        try:
            return self._add(records, batch, on_letter)
        except BaseException:
            self.store.db.rollback()  # never leave a half-written transaction holding the lock
            raise

    def _add(self, records: Iterable[DecisionRecord], batch: int, on_letter) -> dict:
        self.embedder  # refuse a forbidden or broken embedder before writing anything
        self.store.set_meta("embedder", self.identity)
        self.store.set_meta("embedder_spec", self.spec)
        self.store.set_meta("schema_version", SCHEMA_VERSION)
        self.store.set_meta("index_format", INDEX_FORMAT)
        pending: list[Chunk] = []
        stats = {"letters": 0, "chunks": 0, "embedded": 0, "deleted": 0, "duplicates": 0}

        def flush() -> None:
            if not pending:
                return
            try:
                vecs = self.embedder([c.embed_text for c in pending])
            except Exception as e:  # a remote embedder without network, a refused key...: one line, nothing half-written
                raise IndexError_(f"the embedder {self.spec} failed ({type(e).__name__}: {str(e)[:120]}); nothing of this "
                                  f"batch was written; fix it (or use the offline default, IMR_EMBEDDER=wordllama) and re-run") from None
            self.store.set_vectors([c.id for c in pending], vecs)
            # Filter fields and texts live in the SQLite store; Chroma gets a small metadata set
            # (measured: full metadata + documents upsert at ~530 chunks/s, this at ~1,800/s).
            self.collection.upsert(ids=[c.id for c in pending], embeddings=vecs,
                                   metadatas=[{k: c.meta[k] for k in ("letter_id", "item", "decision", "category")} for c in pending])
            stats["embedded"] += len(pending)
            self.store.commit()  # SQLite commits only after the vectors it describes exist
            pending.clear()

        for rec in records:
            rec = self.store.place(rec)
            if rec is None:  # the same letter (by content) is already indexed: its path was added to it
                stats["duplicates"] += 1
                continue
            chunks = chunks_for(rec)
            before = self.store.digests(rec.letter_id)
            gone = self.store.put_letter(rec, chunks)
            if gone:
                self.collection.delete(ids=gone)
                stats["deleted"] += len(gone)
            pending.extend(c for c in chunks if before.get(c.id) != c.digest)
            stats["letters"] += 1
            stats["chunks"] += len(chunks)
            if on_letter:
                on_letter()
            if len(pending) >= batch:
                flush()
        flush()
        self.store.commit()
        self.build_lexical()
        return stats

    def build_lexical(self) -> None:
        """Rebuild BM25 and the dense mirror from the store; written to a new folder, then swapped in.

        The mirror (``dense.npy``, same row order as BM25) holds the very vectors upserted into
        Chroma. Local queries use it for exact search: importing chromadb alone costs 0.8-1.4 s per
        cold start here, and masks make filters free. Set IMR_DENSE=chroma to query Chroma's HNSW.
        """
        import logging

        import bm25s
        import Stemmer

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        rows = list(self.store.all_texts())
        final = self.dir / "bm25"
        tmp = self.dir / f"bm25.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ids = [r[1] for r in rows]
        vecs = [np.frombuffer(v, dtype=np.float32) if v else None for (v,) in self.store.db.execute("SELECT vec FROM chunks ORDER BY rowid")]
        if rows and all(v is not None for v in vecs):
            np.save(tmp / "dense.npy", np.vstack(vecs))
        if rows:
            stemmer = Stemmer.Stemmer("english")
            toks = bm25s.tokenize([r[2] for r in rows], stopwords="en", stemmer=stemmer, show_progress=False)
            bm = bm25s.BM25()
            bm.index(toks, show_progress=False)
            bm.save(str(tmp), show_progress=False)
        (tmp / "ids.json").write_text(json.dumps(ids))
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        write_facets(self.store.db.execute(f"SELECT {cols} FROM chunks ORDER BY rowid"), tmp / "facets.npz")
        self.store.write_item_facets(tmp / "items.npz")
        old = self.dir / f"bm25.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        self.store.db.close()
        if self.lock:
            self.lock.release()


class WriterLock:
    """An exclusive lock on ``DATA_DIR/index.lock`` held by the one process writing the index
    (released by the OS if that process dies, so a kill -9 never leaves it stuck). Re-entrant
    within one process: a command that opens the index twice does not lock itself out."""

    _held: dict[str, list] = {}  # path -> [file, count]

    def __init__(self, data_dir: Path):
        import fcntl

        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = str((data_dir / "index.lock").resolve())
        self.released = False
        if self.path in self._held:
            self._held[self.path][1] += 1
            return
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise IndexError_(f"another imr (pid {pid}) is writing the index in {data_dir}; wait for it to finish") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._held[self.path] = [f, 1]

    def release(self) -> None:
        if self.released or self.path not in self._held:
            return
        self.released = True
        entry = self._held[self.path]
        entry[1] -= 1
        if entry[1] == 0:
            entry[0].close()
            del self._held[self.path]

    @staticmethod
    def holder(data_dir: Path) -> str | None:
        """Pid of the process writing the index, or None."""
        import fcntl

        path = data_dir / "index.lock"
        if not path.exists() or str(path.resolve()) in WriterLock._held:
            return None
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                return f.read().strip() or "?"
            fcntl.flock(f, fcntl.LOCK_UN)
        return None


def _forget_chroma() -> None:
    """Drop chromadb's per-process client cache before its folder is deleted under it."""
    try:
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    except Exception:
        pass


def check_chroma_server() -> None:
    """With IMR_CHROMA_URL, the server must answer before anything is changed."""
    url = env().chroma_url
    if not url:
        return
    try:
        chroma_client(Path(".")).heartbeat()
    except IndexError_:
        raise
    except Exception as e:
        raise IndexError_(f"the Chroma server at {url} did not answer ({type(e).__name__}: {str(e)[:100]}); "
                          f"start it (or unset IMR_CHROMA_URL); nothing was changed") from None


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
        _forget_chroma()
        old = self.data_dir / f"index.old-{os.getpid()}"
        if self.final.exists():
            self.final.rename(old)
        self.new_dir.rename(self.final)
        shutil.rmtree(old, ignore_errors=True)
        if old_collection and env().chroma_url:
            try:
                chroma_client(self.final / "chroma").delete_collection(old_collection)
            except Exception:
                pass  # the old vectors stay on the server, unused; the new index is complete

    def abort(self) -> None:
        self.index.store.db.close()
        if env().chroma_url:
            try:
                chroma_client(self.new_dir / "chroma").delete_collection(self.index.store.get_meta("collection"))
            except Exception:
                pass
        _forget_chroma()
        shutil.rmtree(self.new_dir, ignore_errors=True)


def rebuild(data_dir: Path, embedder: str | None, records: Iterable[DecisionRecord], on_letter=None,
            batch: int = 512) -> tuple[Index, dict]:
    """Build a whole new index from ``records`` and swap it in; the index in use is untouched on failure."""
    rb = Rebuild(data_dir, embedder)
    try:
        stats = rb.index.add(records, batch=batch, on_letter=on_letter)
    except BaseException:
        rb.abort()
        raise
    rb.swap_in()
    rb.index.lock.release()
    return Index(data_dir, embedder=None), stats


def read_records(path: Path) -> Iterator[DecisionRecord]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield DecisionRecord.model_validate_json(line)
                except Exception as e:
                    raise IndexError_(f"{path}:{n}: not a decision record ({type(e).__name__}); was it written by `imr extract`?") from None
