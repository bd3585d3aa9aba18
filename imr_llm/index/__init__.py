"""The index: Chroma (dense) and bm25s (lexical) over the same chunk ids, beside a SQLite record store.

``Index`` opens (or creates) it and writes letters into it; its parts: ``store`` (all SQL, schema
version, migrations), ``vectors`` (Chroma), ``lexical`` (BM25, the dense mirror, facet columns),
``lock`` (one writer), ``rebuild`` (a new index beside the old one). The embedder's identity and the
schema version are stored and checked on open.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ..config import env
from ..core.models import SCHEMA_VERSION, DecisionRecord
from ..providers import embed as emb
from . import lexical
from .chunk import Chunk, chunks_for
from .lock import WriterLock
from .problems import IndexProblem
from .store import INDEX_FORMAT, Store
from .vectors import chroma_client

COLLECTION = "imr_chunks"


def index_dir(data_dir: Path) -> Path:
    return data_dir / "index"


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
                raise IndexProblem(f"the index in {self.dir} is being built (imr pid {holder}); ask again when it finishes")
            if not (self.dir / "store.sqlite").is_file():
                raise IndexProblem(f"no index in {self.dir}: run `imr index RECORDS.jsonl` or `imr ingest LETTERS` first")
            raise IndexProblem(f"no complete index in {self.dir} (an earlier `imr index` did not finish, or its lexical "
                              f"index was deleted): run `imr index --rebuild RECORDS`")
        self.store = Store(self.dir / "store.sqlite")
        self.spec = embedder or self.store.get_meta("embedder_spec") or emb.spec_from_env()
        want = emb.identity(self.spec)
        have = self.store.get_meta("embedder")
        if have and have != want:
            raise IndexProblem(f"the index in {self.dir} was built with embedder {have!r}, not {want!r}: "
                              f"set IMR_EMBEDDER to match, or rebuild with `imr index --rebuild RECORDS`")
        sv = self.store.get_meta("schema_version")
        if sv and sv.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise IndexProblem(f"the index in {self.dir} holds schema {sv}, this imr-llm writes {SCHEMA_VERSION}: "
                              f"run `imr index --rebuild RECORDS`")
        self.upgraded = self.store.migrate() if create else []  # a writer upgrades the store in place
        fmt = self.store.get_meta("index_format")
        if fmt != INDEX_FORMAT and self.store.db.execute("SELECT 1 FROM records LIMIT 1").fetchone():
            raise IndexProblem(f"the index in {self.dir} was built by an earlier imr-llm (index format {fmt or '1'}, "
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
            except IndexProblem:
                raise
            except Exception as e:
                if env().chroma_url:
                    raise IndexProblem(f"the Chroma server at {env().chroma_url} did not answer ({type(e).__name__}: "
                                      f"{str(e)[:120]}); start it (or unset IMR_CHROMA_URL); nothing was changed") from None
                raise IndexProblem(f"cannot open the Chroma index in {self.dir / 'chroma'} ({type(e).__name__}: {str(e)[:120]}); "
                                  f"run `imr index --rebuild RECORDS`") from None
            meta = self._collection.metadata or {}
            if meta.get("embedder") not in (None, self.identity):
                raise IndexProblem(f"Chroma collection {COLLECTION!r} holds vectors of {meta.get('embedder')!r}, not {self.identity!r}: "
                                  f"rebuild with `imr index --rebuild RECORDS`")
        return self._collection

    # -- writing
    def add(self, records: Iterable[DecisionRecord], batch: int = 512, on_letter=None) -> dict:
        try:
            return self._add(records, batch, on_letter)
        except BaseException:
            self.store.rollback()  # never leave a half-written transaction holding the lock
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
                raise IndexProblem(f"the embedder {self.spec} failed ({type(e).__name__}: {str(e)[:120]}); nothing of this "
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
        """Rebuild BM25, the dense mirror and the facet columns from the store (``lexical.build``)."""
        lexical.build(self.store, self.dir)

    def close(self) -> None:
        self.store.db.close()
        if self.lock:
            self.lock.release()


def read_records(path: Path) -> Iterator[DecisionRecord]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield DecisionRecord.model_validate_json(line)
                except Exception as e:
                    raise IndexProblem(f"{path}:{n}: not a decision record ({type(e).__name__}); was it written by `imr extract`?") from None

