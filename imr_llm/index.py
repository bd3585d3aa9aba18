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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from . import embed as emb
from .chunk import Chunk, chunks_for, letter_meta
from .models import SCHEMA_VERSION, DecisionRecord

import numpy as np

COLLECTION = "imr_chunks"
INDEX_FORMAT = "1"


class IndexError_(Exception):
    """A one-line, actionable index problem (wrong embedder, newer schema, damaged folder)."""


def index_dir(data_dir: Path) -> Path:
    return data_dir / "index"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS records (letter_id TEXT PRIMARY KEY, cite_id TEXT, source_path TEXT, sha256 TEXT, json TEXT);
CREATE TABLE IF NOT EXISTS items (letter_id TEXT, item INTEGER, cite_id TEXT, request TEXT, decision TEXT, category TEXT,
  regions TEXT, had_surgery INTEGER, had_fusion INTEGER, license_states TEXT, licensed_outside_ca INTEGER,
  specialties TEXT, guidelines TEXT, denial_reasons TEXT, decision_date TEXT, PRIMARY KEY (letter_id, item));
CREATE TABLE IF NOT EXISTS chunks (rowid INTEGER PRIMARY KEY, id TEXT UNIQUE, letter_id TEXT, item INTEGER, n INTEGER,
  kind TEXT, text TEXT, context TEXT, start INTEGER, "end" INTEGER, digest TEXT, decision TEXT, category TEXT,
  regions TEXT, had_surgery INTEGER, had_fusion INTEGER, license_states TEXT, licensed_outside_ca INTEGER,
  specialties TEXT, guidelines TEXT, denial_reasons TEXT, decision_date TEXT, cite_id TEXT, source_path TEXT, request TEXT,
  vec BLOB);
CREATE INDEX IF NOT EXISTS chunks_letter ON chunks(letter_id);
CREATE INDEX IF NOT EXISTS items_decision ON items(decision, category);
"""


@dataclass
class Filters:
    decision: str | None = None
    category: str | None = None
    region: str | None = None
    after_surgery: bool = False
    fusion: bool = False
    licensed_outside_ca: bool | None = None
    license_state: str | None = None
    specialty: str | None = None
    letter_id: str | None = None
    kind: str | None = None  # rationale | summary

    def active(self) -> bool:
        return any(v not in (None, False) for v in self.__dict__.values())

    def sql(self) -> tuple[str, list]:
        """WHERE clause over the chunks or items table."""
        w, a = [], []
        if self.decision:
            w.append("lower(decision) = lower(?)"); a.append(self.decision)
        if self.category:
            w.append("category = ?"); a.append(self.category)
        if self.region:
            w.append("regions LIKE ?"); a.append(f"%|{self.region}|%")
        if self.fusion:
            w.append("had_fusion = 1")
        elif self.after_surgery:
            w.append("had_surgery = 1")
        if self.licensed_outside_ca is not None:
            w.append("licensed_outside_ca = ?"); a.append(int(self.licensed_outside_ca))
        if self.license_state:
            w.append("lower(license_states) LIKE ?"); a.append(f"%|{self.license_state.lower()}|%")
        if self.specialty:
            w.append("lower(specialties) LIKE ?"); a.append(f"%{self.specialty.lower()}%")
        if self.letter_id:
            w.append("letter_id = ?"); a.append(self.letter_id)
        if self.kind:
            w.append("kind = ?"); a.append(self.kind)
        return (" AND ".join(w) or "1"), a

    def match(self, row: dict) -> bool:
        """The same predicate as ``sql()``, on one chunk/item row (for post-filtering)."""
        if self.decision and (row.get("decision") or "").lower() != self.decision.lower():
            return False
        if self.category and row.get("category") != self.category:
            return False
        if self.region and f"|{self.region}|" not in (row.get("regions") or ""):
            return False
        if self.fusion and not row.get("had_fusion"):
            return False
        if self.after_surgery and not row.get("had_surgery"):
            return False
        if self.licensed_outside_ca is not None and bool(row.get("licensed_outside_ca")) != self.licensed_outside_ca:
            return False
        if self.license_state and f"|{self.license_state.lower()}|" not in (row.get("license_states") or "").lower():
            return False
        if self.specialty and self.specialty.lower() not in (row.get("specialties") or "").lower():
            return False
        if self.letter_id and row.get("letter_id") != self.letter_id:
            return False
        if self.kind and row.get("kind") != self.kind:
            return False
        return True

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.__dict__.items() if v not in (None, False)) or "none"

    def facet_mask(self, facets: dict) -> "np.ndarray":
        """The chunks this filter keeps, as a boolean array in the lexical index's row order.

        ``facets`` (``facets.npz``) holds each filterable column as codes into its distinct values,
        so each predicate is ``match`` run once per distinct value, then a vectorised lookup: a
        few milliseconds at 350k chunks, where a SQL scan plus an id loop took 300-600 ms."""
        mask = None
        for fname, col in FACET_FIELDS.items():
            value = getattr(self, fname)
            if value in (None, False):
                continue
            one = Filters(**{fname: value})
            vocab = facets[f"{col}__vocab"]
            ok = np.fromiter((one.match({col: _facet_value(col, v)}) for v in vocab), dtype=bool, count=len(vocab))
            m = ok[facets[col]]
            mask = m if mask is None else mask & m
        return mask if mask is not None else np.ones(len(facets["decision"]), dtype=bool)


# Filter field -> chunk column (the facets mirror stores these columns).
FACET_FIELDS = {"decision": "decision", "category": "category", "region": "regions", "after_surgery": "had_surgery",
                "fusion": "had_fusion", "licensed_outside_ca": "licensed_outside_ca", "license_state": "license_states",
                "specialty": "specialties", "letter_id": "letter_id", "kind": "kind"}
_INT_COLUMNS = {"had_surgery", "had_fusion", "licensed_outside_ca"}


def _facet_value(col: str, v: str):
    if col in _INT_COLUMNS:
        return int(v) if v != "" else None
    return v if v != "" else None


def write_facets(db: sqlite3.Connection, path: Path) -> None:
    """Each facet column, in chunk rowid order (the order of ``ids.json``), as codes + distinct values."""
    cols = list(dict.fromkeys(FACET_FIELDS.values()))
    rows = db.execute(f"SELECT {', '.join(cols)} FROM chunks ORDER BY rowid").fetchall()
    out = {}
    for k, col in enumerate(cols):
        vocab, codes = np.unique(np.array(["" if r[k] is None else str(r[k]) for r in rows], dtype=str), return_inverse=True)
        out[col] = codes.astype(np.int32)
        out[f"{col}__vocab"] = vocab
    with open(path, "wb") as f:
        np.savez(f, **out)


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
        lm = letter_meta(rec)
        self.db.execute("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?)",
                        (rec.letter_id, rec.cite_id, rec.source_path, rec.sha256, rec.model_dump_json()))
        self.db.execute("DELETE FROM items WHERE letter_id=?", (rec.letter_id,))
        for it in rec.items:
            self.db.execute("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", (
                rec.letter_id, it.index, rec.cite_id, it.request, it.decision, it.category or "other",
                "|" + "|".join(it.body_regions) + "|", int(lm["had_surgery"]), int(lm["had_fusion"]),
                lm["license_states"], int(lm["licensed_outside_ca"]), lm["specialties"],
                "|" + "|".join(sorted({g.name for g in it.guideline_sources})) + "|",
                "|" + "|".join(it.denial_reasons) + "|", rec.decision_date or ""))
        new_ids = {c.id for c in chunks}
        gone = sorted(old - new_ids)
        if gone:
            self.db.executemany("DELETE FROM chunks WHERE id=?", [(g,) for g in gone])
        for c in chunks:
            m = c.meta
            self.db.execute(
                """INSERT INTO chunks (id, letter_id, item, n, kind, text, context, start, "end", digest, decision, category,
                   regions, had_surgery, had_fusion, license_states, licensed_outside_ca, specialties, guidelines,
                   denial_reasons, decision_date, cite_id, source_path, request) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(id) DO UPDATE SET text=excluded.text, context=excluded.context, start=excluded.start,
                   "end"=excluded."end", digest=excluded.digest, decision=excluded.decision, category=excluded.category,
                   regions=excluded.regions, had_surgery=excluded.had_surgery, had_fusion=excluded.had_fusion,
                   license_states=excluded.license_states, licensed_outside_ca=excluded.licensed_outside_ca,
                   specialties=excluded.specialties, guidelines=excluded.guidelines, denial_reasons=excluded.denial_reasons,
                   decision_date=excluded.decision_date, cite_id=excluded.cite_id, source_path=excluded.source_path,
                   request=excluded.request, kind=excluded.kind""",
                (c.id, c.letter_id, c.item, c.n, m["kind"], c.text, c.context, c.start, c.end, c.digest, m["decision"],
                 m["category"], m["regions"], int(m["had_surgery"]), int(m["had_fusion"]), m["license_states"],
                 int(m["licensed_outside_ca"]), m["specialties"], m["guidelines"], m["denial_reasons"],
                 m["decision_date"], m["cite_id"], m["source_path"], m["request"]))
        return gone

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


def chroma_client(path: Path):
    import chromadb
    from chromadb.config import Settings as CSettings

    url = os.environ.get("IMR_CHROMA_URL")
    cs = CSettings(anonymized_telemetry=False, allow_reset=False)
    if url:
        from urllib.parse import urlparse

        u = urlparse(url)
        from .config import is_private_url
        if os.environ.get("IMR_LOCAL_ONLY", "").lower() in ("1", "true", "yes") and not is_private_url(url):
            raise IndexError_(f"IMR_LOCAL_ONLY is set: refusing Chroma server {url!r}")
        return chromadb.HttpClient(host=u.hostname, port=u.port or (443 if u.scheme == "https" else 8000),
                                   ssl=u.scheme == "https", settings=cs)
    return chromadb.PersistentClient(path=str(path), settings=cs)


class Index:
    """Open (or create) the index under ``data_dir``; ``embedder`` is an ``embed.make`` spec."""

    def __init__(self, data_dir: Path, embedder: str | None = None, create: bool = False, local_only: bool = False):
        self.dir = index_dir(data_dir)
        if not create and not (self.dir / "store.sqlite").is_file():
            raise IndexError_(f"no index in {self.dir}: run `imr index RECORDS.jsonl` or `imr ingest LETTERS` first")
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
            try:
                client = chroma_client(self.dir / "chroma")
                self._collection = client.get_or_create_collection(
                    COLLECTION, metadata={"hnsw:space": "cosine", "embedder": self.identity, "imr_format": INDEX_FORMAT},
                    embedding_function=emb.chroma_function(self.spec))
            except IndexError_:
                raise
            except Exception as e:
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
        pending: list[Chunk] = []
        stats = {"letters": 0, "chunks": 0, "embedded": 0, "deleted": 0}

        def flush() -> None:
            if not pending:
                return
            vecs = self.embedder([c.embed_text for c in pending])
            self.store.set_vectors([c.id for c in pending], vecs)
            # Filter fields and texts live in the SQLite store; Chroma gets a small metadata set
            # (measured: full metadata + documents upsert at ~530 chunks/s, this at ~1,800/s).
            self.collection.upsert(ids=[c.id for c in pending], embeddings=vecs,
                                   metadatas=[{k: c.meta[k] for k in ("letter_id", "item", "decision", "category")} for c in pending])
            stats["embedded"] += len(pending)
            self.store.commit()  # SQLite commits only after the vectors it describes exist
            pending.clear()

        for rec in records:
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
        write_facets(self.store.db, tmp / "facets.npz")
        old = self.dir / f"bm25.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def rebuild_reset(self) -> None:
        """Drop everything (for --rebuild): store, lexical index and the Chroma collection."""
        try:
            client = chroma_client(self.dir / "chroma")
            client.delete_collection(COLLECTION)
        except Exception:
            if not os.environ.get("IMR_CHROMA_URL"):
                _forget_chroma()
                shutil.rmtree(self.dir / "chroma", ignore_errors=True)
        self.store.db.close()
        for name in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):
            (self.dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.dir / "bm25", ignore_errors=True)


def _forget_chroma() -> None:
    """Drop chromadb's per-process client cache before its folder is deleted under it."""
    try:
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    except Exception:
        pass


def open_for_rebuild(data_dir: Path, embedder: str | None) -> Index:
    d = index_dir(data_dir)
    if (d / "store.sqlite").exists() or (d / "chroma").exists():
        try:
            Index(data_dir, embedder=embedder or emb.spec_from_env(), create=True).rebuild_reset()
        except IndexError_:
            # wrong embedder/schema or damaged: remove the local folders outright
            for name in ("store.sqlite", "store.sqlite-wal", "store.sqlite-shm"):
                (d / name).unlink(missing_ok=True)
            shutil.rmtree(d / "bm25", ignore_errors=True)
            if not os.environ.get("IMR_CHROMA_URL"):
                _forget_chroma()
                shutil.rmtree(d / "chroma", ignore_errors=True)
            else:
                import chromadb  # noqa: F401
                try:
                    chroma_client(d / "chroma").delete_collection(COLLECTION)
                except Exception:
                    pass
    return Index(data_dir, embedder=embedder, create=True)


def read_records(path: Path) -> Iterator[DecisionRecord]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield DecisionRecord.model_validate_json(line)
                except Exception as e:
                    raise IndexError_(f"{path}:{n}: not a decision record ({type(e).__name__}); was it written by `imr extract`?") from None
