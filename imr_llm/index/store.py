"""The record store (SQLite): records, items and chunks with their filter columns; the one owner of
the index's SQL, its schema version and its numbered migrations.

Filters are evaluated here (Chroma's ``where`` on broad filters costs 400-900 ms at 100k rows),
counting and listing questions are answered here exactly, and the lexical index is rebuilt from here.
"""
from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..core.filters import COLUMNS, Filters, facet_columns, merge_facets, row_values, save_facets, take_facets, write_facets
from ..core.models import DecisionRecord
from .chunk import flat
from .prepare import ITEM_COLUMNS, SUMMARY_COLUMNS, Prepared, item_row, pack, summary_values, unpack
from .problems import IndexProblem

# 2: filter columns from filters.COLUMNS (drug class, partial, dates, counts); 3: chunks.quote;
# 4: records compressed (zlib with the index's dictionary), chunk text only as quote, vectors float16;
# 5: vectors, BM25 and facets in segments; chunk rows compressed, item chunks read their filter
#    columns from their item (the ``chunk_rows`` view)
INDEX_FORMAT = "5"
VEC_DTYPE = np.float16  # half the bytes; recall@10 against float32 exact search measured in BENCHMARKS.md

ITEM_FACETS = [c for c in ITEM_COLUMNS if c not in ("request", "drug")]  # what stats and the page group and filter by
_ITEM_FACET_POS = [list(ITEM_COLUMNS).index(c) for c in ITEM_FACETS]
CHUNK_COLUMNS = {"id": "TEXT UNIQUE", "letter_id": "TEXT", "item": "INTEGER", "n": "INTEGER", "body": "BLOB",
                 "start": "INTEGER", "end": "INTEGER", "seg": "INTEGER", **{c: COLUMNS[c] for c in SUMMARY_COLUMNS}}


def _cols(d: dict[str, str]) -> str:
    return ", ".join(f'"{c}" {t}' for c, t in d.items())


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS records (letter_id TEXT PRIMARY KEY, cite_id TEXT, source_path TEXT, sha256 TEXT, data BLOB,
  paths TEXT, rdigest TEXT);
CREATE INDEX IF NOT EXISTS records_sha ON records(sha256);
CREATE TABLE IF NOT EXISTS items ({_cols(ITEM_COLUMNS)}, PRIMARY KEY (letter_id, item));
CREATE TABLE IF NOT EXISTS chunks (rowid INTEGER PRIMARY KEY, {_cols(CHUNK_COLUMNS)});
CREATE INDEX IF NOT EXISTS items_decision ON items(decision, category);
CREATE TABLE IF NOT EXISTS segments (num INTEGER PRIMARY KEY, chunks INTEGER);
CREATE TABLE IF NOT EXISTS server_vectors (rowid INTEGER PRIMARY KEY, vkey TEXT, vlist INTEGER);
CREATE INDEX IF NOT EXISTS server_vectors_key ON server_vectors(vkey);
-- per Chroma list and decision, the sum of that decision's passages' vectors (routing a decision's questions)
CREATE TABLE IF NOT EXISTS server_side_sums (vlist INTEGER, vside INTEGER, vsum BLOB, PRIMARY KEY (vlist, vside)) WITHOUT ROWID;
-- positions of older segments whose passages were replaced (a segment's files are never rewritten)
CREATE TABLE IF NOT EXISTS dead_rows (seg INTEGER, rowid INTEGER, PRIMARY KEY (seg, rowid)) WITHOUT ROWID;
"""

# A chunk with its filter columns: an item's chunk takes them from its item, a summary chunk keeps
# its letter-level values. Recreated on every open, so it follows COLUMNS.
_VIEW = ("DROP VIEW IF EXISTS chunk_rows; CREATE TEMP VIEW chunk_rows AS SELECT c.rowid AS rowid, c.id AS id, "
         "c.letter_id AS letter_id, c.item AS item, c.n AS n, c.body AS body, c.start AS start, c.\"end\" AS \"end\", "
         "c.seg AS seg, r.cite_id AS cite_id, r.source_path AS source_path, "
         "CASE WHEN c.item >= 0 THEN i.request ELSE '' END AS request, "
         "CASE WHEN c.item >= 0 THEN i.guidelines ELSE '|' END AS guidelines, "
         "CASE WHEN c.item >= 0 THEN i.denial_reasons ELSE '|' END AS denial_reasons, "
         + ", ".join(f'CASE WHEN c.item >= 0 THEN i."{k}" ELSE c."{k}" END AS "{k}"' for k in SUMMARY_COLUMNS)
         + " FROM chunks c JOIN records r ON r.letter_id = c.letter_id "
           "LEFT JOIN items i ON i.letter_id = c.letter_id AND i.item = c.item;")
_ROW_COLUMNS = ["rowid", "id", "letter_id", "item", "n", "body", "start", "end", "seg", "cite_id", "source_path", "request",
                "guidelines", "denial_reasons", *SUMMARY_COLUMNS]


class Store:
    """SQLite side of the index."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(path), timeout=30)
            self.db.executescript("PRAGMA journal_mode=WAL;" + _SCHEMA)
            if "body" in _columns(self.db, "chunks"):  # an earlier format gets the view after its upgrade
                self.db.executescript(_VIEW)
        except sqlite3.DatabaseError as e:
            raise IndexProblem(f"{path}: index store is damaged ({e}); run `imr index --rebuild RECORDS`") from None
        self._zd: bytes | None = None  # the compression dictionary, read on first use
        self._next: int | None = None  # the next chunk rowid
        self._next_item: int | None = None
        # items written and removed since the items' columns were last brought up to date
        self.items_added: list[tuple[int, tuple]] = []
        self.items_removed: list[int] = []
        self.items_cols: dict | None = None  # items_added folded into columns

    def get_meta(self, k: str) -> str | None:
        row = self.db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return row[0] if row else None

    def set_meta(self, k: str, v: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (k, v))

    def chunk_ids_of(self, letter_id: str, column: str = "id") -> list:
        """A letter's chunk ids (or rowids, ``column="rowid"``)."""
        assert column in ("id", "rowid")
        # the UNIQUE index on id answers a letter's chunks (ids start "LETTER:"); no index on letter_id
        return [r[0] for r in self.db.execute(f"SELECT {column} FROM chunks WHERE id >= ? AND id < ? AND letter_id = ?",
                                              (letter_id + ":", letter_id + ";", letter_id))]

    def unchanged(self, p: Prepared) -> bool:
        """The same record is indexed already (its rows were committed with their segment)."""
        got = self.db.execute("SELECT rdigest FROM records WHERE letter_id=?", (p.letter_id,)).fetchone()
        return bool(got and got[0] == p.rdigest)

    def next_rowid(self) -> int:
        if self._next is None:
            self._next = (self.db.execute("SELECT max(rowid) FROM chunks").fetchone()[0] or 0) + 1
        return self._next

    def put_letter(self, p: Prepared, seg: int | None) -> tuple[list[int], list[str]]:
        """Replace one letter's rows; its chunks get new rowids in segment ``seg``. Returns (their
        rowids, chunk ids that no longer exist: to delete from a Chroma server)."""
        old = self.chunk_ids_of(p.letter_id)
        kept = self.db.execute("SELECT paths, sha256, source_path FROM records WHERE letter_id=?", (p.letter_id,)).fetchone()
        # copies listed with the letter stay listed while its content is the same
        paths = [x for x in _paths(kept[2], kept[0]) if x != p.source_path] if kept and kept[1] == p.sha256 else []
        self.db.execute("INSERT OR REPLACE INTO records (letter_id, cite_id, source_path, sha256, data, paths, rdigest) "
                        "VALUES (?,?,?,?,?,?,?)", (p.letter_id, p.cite_id, p.source_path, p.sha256, p.data,
                                                   _paths_value([p.source_path] + paths), p.rdigest))
        self.items_removed += [r for (r,) in self.db.execute("SELECT rowid FROM items WHERE letter_id=?", (p.letter_id,))]
        self.db.execute("DELETE FROM items WHERE letter_id=?", (p.letter_id,))
        if self._next_item is None:
            self._next_item = (self.db.execute("SELECT max(rowid) FROM items").fetchone()[0] or 0) + 1
        item_rowids = list(range(self._next_item, self._next_item + len(p.items)))
        self._next_item += len(p.items)
        self.db.executemany(_insert("items", {"rowid": "", **ITEM_COLUMNS}), [[r, *vals] for r, vals in zip(item_rowids, p.items)])
        self.items_added += [(r, tuple(vals[k] for k in _ITEM_FACET_POS)) for r, vals in zip(item_rowids, p.items)]
        if len(self.items_added) >= 50_000:  # kept as columns of codes, not rows: memory stays flat over a run
            self._fold_items()
        if old:
            where = "id >= ? AND id < ? AND letter_id = ?", (p.letter_id + ":", p.letter_id + ";", p.letter_id)
            self.db.execute(f"INSERT OR IGNORE INTO dead_rows SELECT seg, rowid FROM chunks WHERE seg IS NOT NULL AND {where[0]}", where[1])
            self.db.execute(f"DELETE FROM chunks WHERE {where[0]}", where[1])
        first = self.next_rowid()
        rowids = list(range(first, first + len(p.chunks)))
        self._next = first + len(p.chunks)
        self.db.executemany(_insert("chunks", {"rowid": "", **CHUNK_COLUMNS}),
                            [[r, c.id, p.letter_id, c.item, c.n, c.body, c.start, c.end, seg, *summary_values(c)]
                             for r, c in zip(rowids, p.chunks)])
        return rowids, sorted(set(old) - {c.id for c in p.chunks})

    def place_id(self, letter_id: str, sha256: str, source_path: str) -> str | None:
        """Where a record goes. Ids come from file names, so two folders' ``letter.txt`` would share
        one: a different letter (other content, other path) under a taken id gets ``id~sha8``; the
        same content already indexed from another path is one letter (None: its path is listed
        with it, nothing is counted twice); the same path with new content replaces its record."""
        same = self.db.execute("SELECT letter_id, source_path, paths FROM records WHERE sha256=?", (sha256,)).fetchone()
        if same and source_path != same[1]:
            paths = _paths(same[1], same[2])
            if source_path not in paths:
                self.db.execute("UPDATE records SET paths=? WHERE letter_id=?", (_paths_value(paths + [source_path]), same[0]))
            return None
        if same:
            return same[0]  # the same file again: an idempotent re-index
        taken = self.db.execute("SELECT source_path, sha256 FROM records WHERE letter_id=?", (letter_id,)).fetchone()
        if taken and taken[1] != sha256 and taken[0] != source_path:
            return f"{letter_id}~{sha256[:8]}"
        return letter_id

    # -- segments: the live ones, committed with the chunk rows that point at them
    def segments(self) -> list[tuple[int, int]]:
        return self.db.execute("SELECT num, chunks FROM segments ORDER BY num").fetchall()

    def new_segment_number(self) -> int:
        return (self.db.execute("SELECT max(num) FROM segments").fetchone()[0] or 0) + 1

    def add_segment(self, num: int, chunks: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO segments VALUES (?,?)", (num, chunks))

    def drop_segments(self, nums: list[int]) -> None:
        self.db.executemany("DELETE FROM segments WHERE num=?", [(n,) for n in nums])
        self.db.executemany("DELETE FROM dead_rows WHERE seg=?", [(n,) for n in nums])

    def dead_rowids(self, num: int) -> np.ndarray:
        """Rowids of segment ``num``'s passages replaced since it was written (their letters re-indexed)."""
        return np.fromiter((r for (r,) in self.db.execute("SELECT rowid FROM dead_rows WHERE seg=?", (num,))), dtype=np.int64)

    def live_rowids(self, num: int) -> set[int]:
        return {r for (r,) in self.db.execute("SELECT rowid FROM chunks WHERE seg=?", (num,))}

    def move_rows(self, rowids: list[int], num: int) -> None:
        self.db.executemany("UPDATE chunks SET seg=? WHERE rowid=?", [(num, r) for r in rowids])

    def segment_inputs(self, rowids: list[int]) -> tuple[list[str], list[tuple]]:
        """(BM25 texts, facet values) of these chunks, in this order (merges and upgrades)."""
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        texts, facets = {}, {}
        for i in range(0, len(rowids), 900):
            part = rowids[i:i + 900]
            for r, b, *vals in self.db.execute(f"SELECT rowid, body, {cols} FROM chunk_rows WHERE rowid IN ({','.join('?' * len(part))})", part):
                context, _, quote = self.unpack(b).partition("\x00")
                texts[r] = f"{context} {flat(quote)}"
                facets[r] = tuple(vals)
        return [texts[r] for r in rowids], [facets[r] for r in rowids]

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
        got = self.db.execute("SELECT data, source_path, paths FROM records WHERE letter_id=?", (letter_id,)).fetchone()
        return (self.unpack(got[0]), _paths(got[1], got[2])) if got else None

    def records(self) -> Iterator[tuple[str, list[str]]]:
        """(record JSON, paths) of every letter, in source-path order."""
        for data, src, paths in self.db.execute("SELECT data, source_path, paths FROM records ORDER BY source_path"):
            yield self.unpack(data), _paths(src, paths)

    def letter_paths(self) -> dict[str, tuple[str, list[str]]]:
        return {lid: (src, _paths(src, ps)) for lid, src, ps in self.db.execute("SELECT letter_id, source_path, paths FROM records")}

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
        return "5" if "body" in chunks else "4" if "data" in rec else "3" if "quote" in chunks else "2" if "paths" in rec else "1"

    def items_version(self) -> str:
        """Changes with every commit that writes items: ``items.npz`` says which version it shows."""
        return self.get_meta("items_version") or "0"

    def bump_items_version(self) -> None:
        self.set_meta("items_version", str(int(self.items_version()) + 1))

    def write_item_facets(self, path: Path) -> None:
        """The items table as columns of codes (``items.npz``): filters, counts and rates over a
        million items in milliseconds (``stats``, the page), where a SQL scan takes seconds."""
        cols = list(ITEM_FACETS)
        rows = self.db.execute(f"SELECT {', '.join(f'[{c}]' for c in cols)}, rowid FROM items ORDER BY {self.ITEM_ORDER}").fetchall()
        order = np.array([r[-1] for r in rows], dtype=np.int64)  # rowids, newest decision first (the page's order)
        write_facets((r[:-1] for r in rows), path, cols, {"rowid": order, "__version__": np.array(self.items_version())})
        self.items_added, self.items_removed, self.items_cols = [], [], None

    def _fold_items(self) -> None:
        if self.items_added:
            new = facet_columns([v for _, v in self.items_added], ITEM_FACETS)
            new["rowid"] = np.array([r for r, _ in self.items_added], dtype=np.int64)
            self.items_cols = merge_facets(self.items_cols, new) if self.items_cols is not None else new
            self.items_added = []

    def update_item_facets(self, old: dict | None, path: Path) -> None:
        """``old`` (the items' columns; None: no items before) with the items written since and
        without those removed, in the page's order: what ``write_item_facets`` writes, without
        reading the table."""
        self._fold_items()
        new = self.items_cols
        if new is None:
            new = facet_columns([], ITEM_FACETS)
            new["rowid"] = np.zeros(0, dtype=np.int64)
        d = merge_facets(old, new) if old is not None else new
        d["__version__"] = np.array(self.items_version())
        if self.items_removed:
            d = take_facets(d, np.flatnonzero(~np.isin(d["rowid"], np.array(self.items_removed, dtype=np.int64))))
        item = d["item__vocab"].astype(np.int64)[d["item"]]
        order = np.lexsort((item, d["letter_id"], -d["decision_date"].astype(np.int64)))  # ITEM_ORDER
        save_facets(take_facets(d, order), path)
        self.items_added, self.items_removed, self.items_cols = [], [], None

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
        self._next = self._next_item = None
        self.items_added, self.items_removed, self.items_cols = [], [], None

    def pack(self, text: str) -> bytes:
        return pack(text, self._zdict())

    def unpack(self, data: bytes) -> str:
        return unpack(data, self._zdict())

    def zdict(self) -> bytes:
        return self._zdict()

    def has_table(self, name: str) -> bool:
        return bool(self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone())

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def _rows(self, where: str, keys: list) -> Iterator[dict]:
        cols = ", ".join(f'"{c}"' for c in _ROW_COLUMNS)
        for i in range(0, len(keys), 900):
            part = keys[i:i + 900]
            for r in self.db.execute(f"SELECT {cols} FROM chunk_rows WHERE {where} IN ({','.join('?' * len(part))})", part):
                d = dict(zip(_ROW_COLUMNS, r))
                d["context"], _, d["quote"] = self.unpack(d.pop("body")).partition("\x00")
                d["text"] = flat(d["quote"])
                yield d

    def rows(self, rowids: Iterable[int]) -> dict[int, dict]:
        """Chunk rows with their filter columns and exact letter text, by rowid."""
        return {d["rowid"]: d for d in self._rows("rowid", list(rowids))}

    def rows_by_id(self, ids: Iterable[str]) -> dict[str, dict]:
        return {d["id"]: d for d in self._rows("id", list(ids))}

    def commit(self) -> None:
        self.db.commit()


def _migrate_to_2(store: "Store") -> str:
    """Format 1 -> 2: the filter columns of ``filters.COLUMNS`` and the records' paths, filled from
    each stored record (fields a format-1 record never had stay empty until it is re-extracted)."""
    db = store.db
    for table, cols in (("items", ITEM_COLUMNS), ("chunks", COLUMNS), ("records", {"paths": "TEXT"})):
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
            row = item_row(rec, i)
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


def _paths(source_path: str, stored: str | None) -> list[str]:
    """Every path a letter came from; NULL when that is its source path alone (most letters)."""
    return json.loads(stored) if stored else [source_path]


def _paths_value(paths: list[str]) -> str | None:
    return json.dumps(paths) if len(paths) > 1 else None


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


def _migrate_to_5(store: "Store") -> str:
    """Format 4 -> 5: chunk rows compressed (context and letter text together), item chunks without
    copies of their item's filter columns; the vectors wait in ``upgrade_vectors`` until the
    writer puts them in segments (``Index.finish_upgrade``)."""
    db = store.db
    old = _columns(db, "chunks")
    db.create_function("imr_pack", 1, store.pack, deterministic=True)
    db.execute("ALTER TABLE chunks RENAME TO chunks_v4")
    db.execute(f"CREATE TABLE chunks (rowid INTEGER PRIMARY KEY, {_cols(CHUNK_COLUMNS)})")
    summary = ", ".join(f'CASE WHEN item < 0 THEN "{c}" END' if c in old else "NULL" for c in SUMMARY_COLUMNS)
    db.execute(f'INSERT INTO chunks (rowid, id, letter_id, item, n, body, start, "end", seg, {", ".join(f"[{c}]" for c in SUMMARY_COLUMNS)}) '
               f"SELECT rowid, id, letter_id, item, n, imr_pack(coalesce(context, '') || char(0) || coalesce(quote, '')), start, \"end\", "
               f"NULL, {summary} FROM chunks_v4")
    db.execute("CREATE TABLE IF NOT EXISTS upgrade_vectors (rowid INTEGER PRIMARY KEY, vec BLOB)")
    db.execute("INSERT INTO upgrade_vectors SELECT rowid, vec FROM chunks_v4")
    db.execute("DROP TABLE chunks_v4")
    if "rdigest" not in _columns(db, "records"):
        db.execute("ALTER TABLE records ADD COLUMN rdigest TEXT")
    db.executescript(_VIEW)
    n = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
    return f"format 5: {n} chunk rows compressed"


# (index format reached, step): run in order by Store.migrate
MIGRATIONS = [(2, _migrate_to_2), (3, _migrate_to_3), (4, _migrate_to_4), (5, _migrate_to_5)]


def _insert(table: str, cols: dict[str, str]) -> str:
    return f"INSERT INTO {table} ({', '.join(f'[{c}]' for c in cols)}) VALUES ({','.join('?' * len(cols))})"
