"""The record store (SQLite): records, items and chunks with their filter columns; the one owner of
the index's SQL, its schema version and its numbered migrations.

Filters are evaluated here (Chroma's ``where`` on broad filters costs 400-900 ms at 100k rows),
counting and listing questions are answered here exactly, and the lexical index is rebuilt from here.
"""
from __future__ import annotations

import base64
import json
import sqlite3
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..core.filters import COLUMNS, Filters, row_values, write_facets
from ..core.models import DecisionRecord
from .chunk import Chunk, flat
from .problems import IndexProblem

# 2: filter columns from filters.COLUMNS (drug class, partial, dates, counts); 3: chunks.quote;
# 4: records compressed (zlib with the index's dictionary), chunk text only as quote, vectors float16
INDEX_FORMAT = "4"
VEC_DTYPE = np.float16  # half the bytes; recall@10 against float32 exact search measured in BENCHMARKS.md


# Filter columns (``filters.COLUMNS``) sit on both tables: items answer counts exactly, chunks are
# what retrieval filters. The rest of each table is written out here.
_ITEM_BASE = {"letter_id": "TEXT", "item": "INTEGER", "cite_id": "TEXT", "request": "TEXT", "drug": "TEXT",
              "guidelines": "TEXT", "denial_reasons": "TEXT"}
_CHUNK_BASE = {"id": "TEXT UNIQUE", "letter_id": "TEXT", "item": "INTEGER", "n": "INTEGER", "quote": "TEXT", "context": "TEXT",
               "start": "INTEGER", "end": "INTEGER", "digest": "TEXT", "cite_id": "TEXT", "source_path": "TEXT",
               "request": "TEXT", "guidelines": "TEXT", "denial_reasons": "TEXT"}
ITEM_COLUMNS = {**_ITEM_BASE, **{c: t for c, t in COLUMNS.items() if c not in _ITEM_BASE}}
ITEM_FACETS = [c for c in ITEM_COLUMNS if c not in ("request", "drug")]  # what stats and the page group and filter by
CHUNK_COLUMNS = {**_CHUNK_BASE, **{c: t for c, t in COLUMNS.items() if c not in _CHUNK_BASE}}


_ROW_COLUMNS = ", ".join(["rowid"] + [f'"{c}"' for c in CHUNK_COLUMNS])  # every column but the vector


def _cols(d: dict[str, str]) -> str:
    return ", ".join(f'"{c}" {t}' for c, t in d.items())


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS records (letter_id TEXT PRIMARY KEY, cite_id TEXT, source_path TEXT, sha256 TEXT, data BLOB,
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
            raise IndexProblem(f"{path}: index store is damaged ({e}); run `imr index --rebuild RECORDS`") from None
        self._zd: bytes | None = None  # the compression dictionary, read on first use

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
        self.db.execute("INSERT OR REPLACE INTO records (letter_id, cite_id, source_path, sha256, data, paths) VALUES (?,?,?,?,?,?)",
                        (rec.letter_id, rec.cite_id, rec.source_path, rec.sha256, self.pack(rec.model_dump_json()),
                         json.dumps([rec.source_path] + paths)))
        self.db.execute("DELETE FROM items WHERE letter_id=?", (rec.letter_id,))
        rows = [_item_row(rec, i) for i in range(len(rec.items))]
        self.db.executemany(_insert("items", ITEM_COLUMNS), [[r.get(c) for c in ITEM_COLUMNS] for r in rows])
        gone = sorted(old - {c.id for c in chunks})
        if gone:
            self.db.executemany("DELETE FROM chunks WHERE id=?", [(g,) for g in gone])
        self.db.executemany(_insert("chunks", CHUNK_COLUMNS, upsert=True),
                            [[row.get(col) for col in CHUNK_COLUMNS] for row in (_chunk_row(rec, c, rows) for c in chunks)])
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
        got = self.db.execute("SELECT data, paths FROM records WHERE letter_id=?", (letter_id,)).fetchone()
        return (self.unpack(got[0]), json.loads(got[1] or "[]")) if got else None

    def records(self) -> Iterator[tuple[str, list[str]]]:
        """(record JSON, paths) of every letter, in source-path order."""
        for data, paths in self.db.execute("SELECT data, paths FROM records ORDER BY source_path"):
            yield self.unpack(data), json.loads(paths or "[]")

    def letter_paths(self) -> dict[str, tuple[str, list[str]]]:
        return {lid: (src, json.loads(ps or "[]")) for lid, src, ps in self.db.execute("SELECT letter_id, source_path, paths FROM records")}

    def chunk_ids(self, f: Filters) -> list[str]:
        where, args = f.sql()
        return [r[0] for r in self.db.execute(f"SELECT id FROM chunks WHERE {where}", args)]

    # -- schema upgrades: numbered, in order, each in one transaction
    def migrate(self) -> list[str]:
        """Bring a store written by an earlier imr-llm to ``INDEX_FORMAT`` in place; what was done."""
        fmt = int(self.get_meta("index_format") or self._format_of_tables())
        done = []
        for target, step in MIGRATIONS:
            if fmt < target:
                try:
                    done.append(step(self))
                    self.set_meta("index_format", str(target))
                    self.db.commit()
                except sqlite3.Error as e:
                    self.rollback()
                    raise IndexProblem(f"upgrading the index to format {target} failed ({e}); nothing was changed: "
                                       f"run `imr index --rebuild RECORDS`") from None
                except BaseException:
                    self.rollback()
                    raise
                fmt = target
        return done

    def _format_of_tables(self) -> str:
        """The format of a store without the meta row (written before it existed, or by a first
        `imr index` that failed): read from its tables, never assumed from an empty one."""
        rec = _columns(self.db, "records")
        chunks = _columns(self.db, "chunks")
        return INDEX_FORMAT if "data" in rec else "3" if "quote" in chunks else "2" if "paths" in rec else "1"

    def write_item_facets(self, path: Path) -> None:
        """The items table as columns of codes (``items.npz``): filters, counts and rates over a
        million items in milliseconds (``stats``, the page), where a SQL scan takes seconds."""
        cols = list(ITEM_FACETS)
        rows = self.db.execute(f"SELECT {', '.join(f'[{c}]' for c in cols)}, rowid FROM items ORDER BY {self.ITEM_ORDER}").fetchall()
        order = np.array([r[-1] for r in rows], dtype=np.int64)  # rowids, newest decision first (the page's order)
        write_facets((r[:-1] for r in rows), path, cols, {"rowid": order})

    # -- records are stored compressed: zlib with a preset dictionary of generated records (their keys,
    # guideline names and boilerplate repeat in every record; no user letter is in it). Measured on the
    # 91 letters of evals/letters: 15.9 KB of JSON -> 2.1 KB (3.0 KB with zlib alone). A store keeps
    # its own copy of the dictionary, so a later version shipping another never breaks it.
    def _zdict(self) -> bytes:
        if self._zd is None:
            have = self.get_meta("record_zdict")
            if have is None:
                from importlib.resources import files

                have = base64.b64encode(files("imr_llm.index").joinpath("record_zdict.txt").read_bytes()).decode()
                self.set_meta("record_zdict", have)
            self._zd = base64.b64decode(have)
        return self._zd

    def rollback(self) -> None:
        self.db.rollback()
        self._zd = None  # its meta row may have been rolled back with the rest

    def pack(self, record_json: str) -> bytes:
        co = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, self._zdict())  # 9: 4% smaller, 50% slower
        return co.compress(record_json.encode()) + co.flush()

    def unpack(self, data: bytes) -> str:
        do = zlib.decompressobj(15, self._zdict())
        return (do.decompress(data) + do.flush()).decode()

    def set_vectors(self, ids: list[str], vecs) -> None:
        self.db.executemany("UPDATE chunks SET vec=? WHERE id=?", [(np.asarray(v, dtype=VEC_DTYPE).tobytes(), i) for i, v in zip(ids, vecs)])

    def vectors(self) -> Iterator[np.ndarray | None]:
        """Every chunk's vector (float32), in rowid order; None where none was written."""
        for (v,) in self.db.execute("SELECT vec FROM chunks ORDER BY rowid"):
            yield np.frombuffer(v, dtype=VEC_DTYPE).astype(np.float32) if v else None

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def chunk_columns(self, cols: list[str]) -> Iterator[tuple]:
        """``cols`` of every chunk in rowid order (the facet columns beside the lexical index)."""
        yield from self.db.execute(f"SELECT {', '.join(f'[{c}]' for c in cols)} FROM chunks ORDER BY rowid")

    def all_texts(self) -> Iterator[tuple[int, str, str]]:
        """(rowid, chunk id, context and text): what the lexical index reads."""
        for rowid, cid, context, quote in self.db.execute("SELECT rowid, id, context, quote FROM chunks ORDER BY rowid"):
            yield rowid, cid, f"{context} {flat(quote or '')}"

    def rows(self, ids: Iterable[str]) -> dict[str, dict]:
        ids = list(ids)
        out: dict[str, dict] = {}
        cur = self.db.cursor()
        for i in range(0, len(ids), 900):
            part = ids[i:i + 900]
            cur.execute(f"SELECT {_ROW_COLUMNS} FROM chunks WHERE id IN ({','.join('?' * len(part))})", part)
            cols = [d[0] for d in cur.description]
            for r in cur.fetchall():
                d = dict(zip(cols, r))
                d["text"] = flat(d["quote"] or "")
                out[d["id"]] = d
        return out

    def commit(self) -> None:
        self.db.commit()


def _migrate_to_2(store: "Store") -> str:
    """Format 1 -> 2: the filter columns of ``filters.COLUMNS`` and the records' paths, filled from
    each stored record (fields a format-1 record never had stay empty until it is re-extracted)."""
    db = store.db
    for table, cols in (("items", ITEM_COLUMNS), ("chunks", CHUNK_COLUMNS), ("records", {"paths": "TEXT"})):
        have = _columns(db, table)
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


def _migrate_to_3(store: "Store") -> str:
    """Format 2 -> 3: each chunk's exact letter text (``quote``), cut from its record's evidence, so
    answers quote from the chunk row instead of parsing the record."""
    db = store.db
    if "quote" not in _columns(db, "chunks"):
        db.execute('ALTER TABLE chunks ADD COLUMN "quote" TEXT')
    n = 0
    for lid, js in db.execute("SELECT letter_id, json FROM records").fetchall():
        ev = {e["field"]: e for e in json.loads(js)["evidence"] if e["status"] != "not_found"}
        for cid, item, start, end in db.execute("SELECT id, item, start, end FROM chunks WHERE letter_id=?", (lid,)).fetchall():
            e = ev.get("clinical_summary" if item < 0 else f"items[{item}].rationale")
            if e:
                db.execute("UPDATE chunks SET quote=? WHERE id=?", (e["quote"][start - e["start"]:end - e["start"]], cid))
                n += 1
    return f"format 3: the letter text of {n} chunks stored with them"


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in db.execute(f"PRAGMA table_info({table})")}


def _drop_column(db: sqlite3.Connection, table: str, col: str) -> None:
    """DROP COLUMN needs SQLite 3.35 (2021); before it the column is emptied instead."""
    if sqlite3.sqlite_version_info >= (3, 35):
        db.execute(f'ALTER TABLE {table} DROP COLUMN "{col}"')
    else:
        db.execute(f'UPDATE {table} SET "{col}" = NULL')


def _migrate_to_4(store: "Store") -> str:
    """Format 3 -> 4: records compressed, the chunks' folded text dropped (it is their quote with
    whitespace folded), vectors at half precision. The file shrinks at the next VACUUM."""
    db = store.db
    rec_cols = _columns(db, "records")
    if "data" not in rec_cols:
        db.execute("ALTER TABLE records ADD COLUMN data BLOB")
    n = 0
    if "json" in rec_cols:
        for lid, js in db.execute("SELECT letter_id, json FROM records").fetchall():
            db.execute("UPDATE records SET data=? WHERE letter_id=?", (store.pack(js), lid))
            n += 1
        _drop_column(db, "records", "json")
    if "text" in _columns(db, "chunks"):
        _drop_column(db, "chunks", "text")
    m = 0
    for rowid, v in db.execute("SELECT rowid, vec FROM chunks WHERE vec IS NOT NULL").fetchall():
        db.execute("UPDATE chunks SET vec=? WHERE rowid=?", (np.frombuffer(v, dtype=np.float32).astype(VEC_DTYPE).tobytes(), rowid))
        m += 1
    return f"format 4: {n} records compressed, {m} vectors at half precision"


# (index format reached, step): run in order by Store.migrate
MIGRATIONS = [(2, _migrate_to_2), (3, _migrate_to_3), (4, _migrate_to_4)]


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
    return {**base, "id": c.id, "item": c.item, "n": c.n, "quote": c.quote, "context": c.context, "start": c.start,
            "end": c.end, "digest": c.digest, "cite_id": rec.cite_id, "source_path": rec.source_path,
            "kind": "summary" if c.item < 0 else "rationale"}
