"""The index: a SQLite record store and search segments (BM25, float16 vectors with an IVF for
large segments, facet columns) over the same chunks; with ``IMR_CHROMA_URL`` the vectors live in a
shared Chroma server instead.

``Index`` opens (or creates) it and writes letters into it; its parts: ``store`` (all SQL, schema
version, migrations), ``prepare`` (a record's rows and chunks, pure), ``segments`` (what search
reads), ``vectors`` (the Chroma server), ``lock`` (one writer), ``rebuild`` (a new index beside the
old one). The embedder's identity and the schema version are stored and checked on open.
"""
from __future__ import annotations

import os
import shutil
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..config import env
from ..core.models import SCHEMA_VERSION, DecisionRecord
from ..providers import embed as emb
from .lock import WriterLock
from .prepare import Prepared, embed_prepared, prepare
from .problems import IndexProblem
from ..procs import remove_stale
from .segments import (IVF_MIN, MERGE_AT, SEGMENT_MAX, Columns, Segment, SegmentWriter, add_term_max, load_npz, seg_dir,
                       seg_root)
from .store import INDEX_FORMAT, Store
from .vectors import LISTS, TRAIN_PER_LIST, ServerLists, server_keys
from ..core.filters import COLUMNS

_DECISION = list(COLUMNS).index("decision")  # a chunk's facets are COLUMNS' values, in order

COLLECTION = "imr_chunks"
ITEMS_FILE = "items.npz"  # the items table as columns (stats, the page)
PARALLEL_FROM = 20_000_000  # bytes of records: below this, worker processes cost more than they save



def index_dir(data_dir: Path) -> Path:
    return data_dir / "index"


def load_items(folder: Path) -> dict | None:
    """``items.npz`` of an index folder (the items table as columns), or None when there is none."""
    p = Path(folder) / ITEMS_FILE
    return load_npz(p) if p.exists() else None


class Index:
    """Open (or create) the index under ``data_dir``; ``embedder`` is an ``embed.make`` spec."""

    def __init__(self, data_dir: Path, embedder: str | None = None, create: bool = False, local_only: bool = False,
                 folder: Path | None = None):
        self.dir = folder or index_dir(data_dir)
        self.lock: WriterLock | None = None
        if create:  # one writer at a time; a second one gets a clear line instead of a corrupted index
            self.lock = WriterLock(data_dir)
        elif not (self.dir / "store.sqlite").is_file():
            self._refuse_while_built(data_dir)
            raise IndexProblem(f"no index in {self.dir}: run `imr index RECORDS.jsonl` or `imr ingest LETTERS` first")
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
        has_rows = self.store.db.execute("SELECT 1 FROM records LIMIT 1").fetchone()
        if fmt != INDEX_FORMAT and has_rows:
            raise IndexProblem(f"the index in {self.dir} was built by an earlier imr-llm (index format {fmt or '1'}, "
                              f"this version reads {INDEX_FORMAT}): `imr index --upgrade` upgrades it in place "
                              f"(or `imr index --rebuild RECORDS`)")
        self.local_only = local_only
        self.remote_vectors = bool(env().chroma_url)  # vectors in a shared Chroma server, not in the segments
        self._embedder = None
        self._server: ServerLists | None = None
        self._latest: tuple | None = None  # (items' version and file, newest decision date)
        self.identity = want
        if create and self.store.has_table("upgrade_vectors"):
            self.upgraded.append(self._segments_from_upgrade())
        if not create and not self.store.get_meta("built"):
            self._refuse_while_built(data_dir)
            raise IndexProblem(f"no complete index in {self.dir} (an earlier `imr index` did not finish): "
                              f"run `imr index RECORDS` again, or `imr index --rebuild RECORDS`")

    def _refuse_while_built(self, data_dir: Path) -> None:
        holder = WriterLock.holder(data_dir)
        if holder:
            raise IndexProblem(f"the index in {self.dir} is being built (imr pid {holder}); ask again when it finishes")

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = emb.make(self.spec, self.local_only)
        return self._embedder

    @property
    def server(self) -> ServerLists:
        """The vectors in the Chroma server (only with ``IMR_CHROMA_URL``)."""
        if self._server is None:
            if self.store.get_meta("built") and not self.store.get_meta("server_lists") and \
                    self.store.db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone():
                raise IndexProblem(f"the index in {self.dir} keeps no vectors in a Chroma server's lists (built without "
                                  f"IMR_CHROMA_URL, or by imr-llm 0.4 in one collection): run `imr index --rebuild RECORDS` "
                                  f"with IMR_CHROMA_URL set")
            try:
                srv = ServerLists(self.store, self.store.get_meta("collection") or COLLECTION, self.identity,
                                  emb.chroma_function(self.spec))
                srv.client.heartbeat()
                srv.centroids()
            except IndexProblem:
                raise
            except Exception as e:
                raise IndexProblem(f"the Chroma server at {env().chroma_url} did not answer ({type(e).__name__}: "
                                  f"{str(e)[:120]}); start it (or unset IMR_CHROMA_URL); nothing was changed") from None
            self._server = srv
        return self._server

    def latest_decision(self) -> str | None:
        """The newest decision date (what "this year" means): the first row of ``items.npz``, which
        is newest first, when it shows the store's items (a scan of the items table took 0.56 s at
        2.5M items, a third of `imr ask`'s start); else from the table. Kept while neither changes
        (a served index answers many questions: reading the column took 2-10 ms each)."""
        try:
            st = (self.dir / ITEMS_FILE).stat()
            key = (self.store.items_version(), st.st_mtime_ns, st.st_size)
        except OSError:
            return self.store.latest_decision()
        if self._latest and self._latest[0] == key:
            return self._latest[1]
        got, known = None, False
        try:
            z = Columns(self.dir / ITEMS_FILE)
            try:
                if str(z["__version__"]) == key[0]:
                    codes = z["decision_date"]
                    got, known = (str(z["decision_date__vocab"][codes[0]]) or None) if len(codes) else None, True
            finally:
                z.close()
        except (IndexProblem, KeyError):  # absent, damaged or older: the table answers (stats say what is damaged)
            pass
        if not known:
            return self.store.latest_decision()
        self._latest = (key, got)
        return got

    def segments(self) -> list[Segment]:
        """The live segments, opened for search."""
        return [Segment(self.dir, num, vectors=not self.remote_vectors) for num, _ in self.store.segments()]

    # -- writing
    def add(self, records: Iterable[DecisionRecord], batch: int = 512, on_letter=None) -> dict:
        """Index ``records`` (replacing changed letters, skipping unchanged ones) in this process."""
        return self._write(self._prepared(records), batch, on_letter)

    def add_file(self, path: Path, batch: int = 512, on_letter=None, workers: int | None = None) -> dict:
        """Index a records file; large files are read, chunked and embedded by worker processes."""
        if workers is None:
            workers = env().index_workers or (2 if (os.cpu_count() or 1) >= 2 and path.stat().st_size >= PARALLEL_FROM else 0)
        if workers < 2 or self.spec != "wordllama":  # (with a Chroma server too: the writer sends what the workers embedded)
            return self.add(read_records(path), batch, on_letter)
        return self._write(self._prepared_by_workers(path, workers), batch, on_letter)

    def _prepared(self, records: Iterable[DecisionRecord]) -> Iterator[Prepared]:
        zd = self.store.zdict()
        for rec in records:
            yield prepare(rec, zd)

    def _prepared_by_workers(self, path: Path, workers: int) -> Iterator[Prepared]:
        import multiprocessing as mp

        from .prepare import prepare_lines, worker_init

        ctx = mp.get_context("spawn")  # no inherited SQLite handles or model threads
        with ctx.Pool(workers, worker_init, (self.store.zdict(), self.spec, str(self.dir / "store.sqlite"))) as pool:
            window: deque = deque()
            for part in _line_batches(path, 64):
                window.append(pool.apply_async(prepare_lines, (part,)))
                if len(window) >= 4 * workers:  # bounded: never the whole file in flight
                    yield from _checked(window.popleft().get())
            while window:
                yield from _checked(window.popleft().get())

    def _write(self, prepared: Iterable[Prepared], batch: int, on_letter) -> dict:
        try:
            return _Writer(self, batch, on_letter).run(prepared)
        except BaseException:
            self.store.rollback()  # never leave a half-written transaction holding the lock
            if self._server is not None:
                self._server.forget_unsent()
            raise

    def write_items(self, since: str | None = None) -> None:
        """The items table as columns (``items.npz``), written beside and swapped in. ``since``: the
        store's items version when this writer started; when the file shows it (or the store had
        no items), it is brought up to date with the items this writer wrote and removed (seconds
        at a million items, where reading the table takes minutes), else written from the table."""
        tmp = self.dir / f"{ITEMS_FILE}.tmp-{os.getpid()}"
        old = load_items(self.dir) if since is not None else None
        if since == "empty":
            self.store.update_item_facets(None, tmp)
        elif old is not None and str(old.get("__version__", "")) == since:
            self.store.update_item_facets(old, tmp)
        else:
            self.store.write_item_facets(tmp)
        os.replace(tmp, self.dir / ITEMS_FILE)

    def _write_segment(self, parts) -> int:
        """One new segment from ``parts`` ((rowids, float16 vectors or None) of chunks in the store),
        its rows pointed at it; committed by the caller."""
        w = SegmentWriter(self.dir, self.store.new_segment_number())
        moved: list[int] = []
        try:
            for rids, vecs in parts:
                texts, facets = self.store.segment_inputs(rids)
                w.add(rids, texts, facets, vecs)
                moved += rids
            w.finish(server_keys(self.store, w.rowids) if self.remote_vectors and self.store.get_meta("server_lists") else None)
        except BaseException:
            w.abort()
            raise
        self.store.add_segment(w.num, len(w))
        self.store.move_rows(moved, w.num)
        return w.num

    def merge_small(self) -> int | None:
        """Merge small segments once ``MERGE_AT`` of them pile up (each add writes one); the big
        ones are never rewritten. Returns the new segment's number."""
        small = [num for num, n in self.store.segments() if n < IVF_MIN]
        if len(small) < MERGE_AT:
            return None

        def live_parts():
            for num in small:
                seg = Segment(self.dir, num, vectors=not self.remote_vectors)
                live = self.store.live_rowids(num)
                pos = np.array([i for i, r in enumerate(seg.rowids.tolist()) if r in live], dtype=np.int64)
                if len(pos):
                    yield [int(r) for r in seg.rowids[pos]], np.asarray(seg.vecs[pos]) if seg.vecs is not None else None

        num = self._write_segment(live_parts())
        self.store.drop_segments(small)
        self.store.commit()
        for old in small:
            shutil.rmtree(seg_dir(self.dir, old), ignore_errors=True)
        return num

    def _segments_from_upgrade(self) -> str:
        """After the format-5 migration: the chunks' vectors (kept in ``upgrade_vectors``) into
        segments, the old lexical folder and local Chroma copy removed."""
        rowids = [r for (r,) in self.store.db.execute("SELECT rowid FROM chunks ORDER BY rowid")]
        n_segs = 0
        for s in range(0, len(rowids), SEGMENT_MAX):
            part = rowids[s:s + SEGMENT_MAX]
            vecs = None
            if not self.remote_vectors:
                got = dict(self.store.db.execute("SELECT rowid, vec FROM upgrade_vectors WHERE rowid BETWEEN ? AND ?", (part[0], part[-1])))
                if any(got.get(r) is None for r in part):
                    raise IndexProblem(f"the index in {self.dir} lacks vectors for some passages; run `imr index --rebuild RECORDS`")
                vecs = np.vstack([np.frombuffer(got[r], dtype=np.float16) for r in part])
            self._write_segment([(part, vecs)])
            n_segs += 1
        self.store.db.execute("DROP TABLE upgrade_vectors")
        self.store.set_meta("built", "1")
        self.store.commit()
        self.write_items()
        for old in ("bm25", "chroma"):
            if not (old == "chroma" and self.remote_vectors):
                shutil.rmtree(self.dir / old, ignore_errors=True)
        return f"{len(rowids)} passages into {n_segs} search segment(s); the old lexical folder and local Chroma copy removed"

    def close(self) -> None:
        self.store.db.close()
        if self.lock:
            self.lock.release()


class _Writer:
    """One ``add``: letters placed in the store as they come, their chunks gathered into a segment
    (embedded in batches when the workers did not), committed with it every ``SEGMENT_MAX`` chunks."""

    def __init__(self, index: Index, batch: int, on_letter):
        self.ix, self.st, self.batch, self.on_letter = index, index.store, batch, on_letter
        self.seg: SegmentWriter | None = None
        self.waiting: list[tuple[Prepared, list[int]]] = []  # written rows whose chunks need vectors
        self.stats = {"letters": 0, "chunks": 0, "embedded": 0, "deleted": 0, "duplicates": 0, "segments": 0, "written": 0}
        self.uncommitted = 0  # letters written since the last commit
        self.upserts: list[tuple[Prepared, list[int]]] = []  # passages whose vectors go to the Chroma server next

    def run(self, prepared: Iterable[Prepared]) -> dict:
        ix, st = self.ix, self.st
        ix.embedder  # refuse a forbidden or broken embedder before writing anything
        for k, v in (("embedder", ix.identity), ("embedder_spec", ix.spec), ("schema_version", SCHEMA_VERSION),
                     ("index_format", INDEX_FORMAT)):
            st.set_meta(k, v)
        if ix.remote_vectors:
            ix.server  # the server must answer before anything is written
        items_before = "empty" if not st.db.execute("SELECT 1 FROM items LIMIT 1").fetchone() else st.items_version()
        remove_stale(seg_root(ix.dir), "*.tmp-*")  # left by a killed build (never committed)
        remove_stale(ix.dir, f"{ITEMS_FILE}.tmp-*")
        try:
            for p in prepared:
                self.one(p)
            self.commit_segment()
        except BaseException:
            if self.seg:
                self.seg.abort()
            raise
        changed = self.stats["written"] > 0
        if changed:
            ix.merge_small()
        add_term_max(ix.dir, [num for num, _ in st.segments()])
        if changed or not st.get_meta("built") or not (ix.dir / ITEMS_FILE).exists():
            ix.write_items(since=items_before if changed else None)
        st.set_meta("built", "1")
        st.commit()
        return self.stats

    def one(self, p: Prepared) -> None:
        st = self.st
        pid = st.place_id(p.letter_id, p.sha256, p.source_path)
        if pid is None:  # the same letter (by content) is already indexed: its path was added to it
            self.stats["duplicates"] += 1
            return
        if pid != p.letter_id:  # another letter holds the id: the same record under the id it gets
            vecs = p.vectors
            p = prepare(DecisionRecord.model_validate_json(st.unpack(p.data)).model_copy(update={"letter_id": pid}), st.zdict())
            p.vectors = vecs
        self.stats["letters"] += 1
        self.stats["chunks"] += len(p.chunks)
        if self.on_letter:
            self.on_letter()
        if st.unchanged(p):
            return
        if self.seg is None:
            self.seg = SegmentWriter(self.ix.dir, st.new_segment_number())
        before = st.chunk_ids_of(p.letter_id, "rowid") if self.ix.remote_vectors else []
        rowids, gone = st.put_letter(p, self.seg.num)
        self.stats["written"] += 1
        self.uncommitted += 1
        if before:
            self.ix.server.remove(before)
        self.stats["deleted"] += len(gone)
        if p.vectors is None or len(p.vectors) != len(p.chunks):
            self.waiting.append((p, rowids))
            if sum(len(q.chunks) for q, _ in self.waiting) >= self.batch:
                self.embed_waiting()
        else:
            self.place_chunks(p, rowids)
        if len(self.seg) + sum(len(q.chunks) for q, _ in self.waiting) >= SEGMENT_MAX:
            self.commit_segment()

    def embed_waiting(self) -> None:
        if not self.waiting:
            return
        letters = [p for p, _ in self.waiting]
        try:
            embed_prepared(letters, self.ix.embedder)
        except Exception as e:  # a remote embedder without network, a refused key...: one line, nothing half-written
            raise IndexProblem(f"the embedder {self.ix.spec} failed ({type(e).__name__}: {str(e)[:120]}); nothing of this "
                              f"segment was written; fix it (or use the offline default, IMR_EMBEDDER=wordllama) and re-run") from None
        for p, rowids in self.waiting:
            self.place_chunks(p, rowids)
        self.waiting = []

    def place_chunks(self, p: Prepared, rowids: list[int]) -> None:
        if not p.chunks:
            return
        self.stats["embedded"] += len(p.chunks)
        if self.ix.remote_vectors:
            self.upserts.append((p, rowids))
            if sum(len(q.chunks) for q, _ in self.upserts) >= self.batch:
                self.flush_upserts()
        self.seg.add(rowids, [c.text for c in p.chunks], [c.facets for c in p.chunks],
                     None if self.ix.remote_vectors else p.vectors)

    def flush_upserts(self, last: bool = False) -> None:
        """Vectors to the Chroma server's lists, in batches; the rows that describe them commit after.
        The lists' centroids are trained from the first ``LISTS * TRAIN_PER_LIST`` vectors (or all
        of a smaller first build)."""
        if not self.ix.remote_vectors:
            return
        srv = self.ix.server
        if self.upserts:
            n = sum(len(p.chunks) for p, _ in self.upserts)
            vecs = np.vstack([p.vectors for p, _ in self.upserts])
            if srv.centroids() is None and not last and (
                    n < LISTS * TRAIN_PER_LIST  # cheap before the distinct count below
                    or len(np.unique(vecs.astype(np.float16), axis=0)) < LISTS * TRAIN_PER_LIST):
                return  # more to train from (passages embedded the same train one centroid once)
            if srv.centroids() is None:
                srv.train(vecs)
            srv.add([r for _, rs in self.upserts for r in rs], vecs, [c.facets[_DECISION] for p, _ in self.upserts for c in p.chunks])
            self.upserts = []
        if last:
            srv.send()  # every vector waiting, before the store commits the rows that name them

    def commit_segment(self) -> None:
        """The segment's files first, then the rows that point at them, in one commit."""
        self.embed_waiting()
        self.flush_upserts(last=True)
        if self.seg is None:
            return
        if len(self.seg):
            self.seg.finish(server_keys(self.st, self.seg.rowids) if self.ix.remote_vectors else None)
            self.st.add_segment(self.seg.num, len(self.seg))
            self.stats["segments"] += 1
        else:
            self.seg.abort()
        if self.uncommitted:
            self.st.bump_items_version()
        self.st.commit()
        if self.ix.remote_vectors:
            self.ix.server.delete_unused()
        self.seg, self.uncommitted = None, 0


def _line_batches(path: Path, size: int) -> Iterator[list[tuple[str, int, str]]]:
    part = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                part.append((str(path), n, line))
                if len(part) >= size:
                    yield part
                    part = []
    if part:
        yield part


def _checked(results: list) -> Iterator[Prepared]:
    for r in results:
        if isinstance(r, tuple):
            path, n, why = r
            raise IndexProblem(f"{path}:{n}: not a decision record ({why}); was it written by `imr extract`?")
        yield r


def read_records(path: Path) -> Iterator[DecisionRecord]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield DecisionRecord.model_validate_json(line)
                except Exception as e:
                    raise IndexProblem(f"{path}:{n}: not a decision record ({type(e).__name__}); was it written by `imr extract`?") from None

