"""The shared Chroma server (``IMR_CHROMA_URL``), where a team keeps the vectors instead of each index's segments."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..config import env
from ..procs import threads
from .problems import IndexProblem


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
            raise IndexProblem(f"IMR_LOCAL_ONLY is set: refusing Chroma server {url!r}")
        return chromadb.HttpClient(host=u.hostname, port=u.port or (443 if u.scheme == "https" else 8000),
                                   ssl=u.scheme == "https", settings=cs)
    raise IndexProblem("no Chroma server configured (IMR_CHROMA_URL): local indexes keep their vectors in search segments")


def forget_clients() -> None:
    """Drop chromadb's per-process client cache before its folder is deleted under it."""
    import sys

    if "chromadb" not in sys.modules:  # never imported here: nothing cached (and no 1 s import)
        return
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
    except IndexProblem:
        raise
    except Exception as e:
        raise IndexProblem(f"the Chroma server at {url} did not answer ({type(e).__name__}: {str(e)[:100]}); "
                          f"start it (or unset IMR_CHROMA_URL); nothing was changed") from None


# The vectors on the server as inverted lists: one Chroma collection per list ("NAME-l07"), each
# vector once (id: a hash of its float16 bytes, shared by every passage embedded the same), and the
# lists' centroids in "NAME-centroids". One HNSW graph over all passages found 0.56 of the exact top
# 10 at 700k passages (0.66 with each vector once); 64 small graphs of distinct vectors find what an
# exact scan of the lists searched finds, and 12 of 64 lists hold the whole exact top 10 of every
# bench question there (8: 0.96, one question with none): BENCHMARKS.md, stop 15.
LISTS = 64
PROBE = 12
TRAIN_PER_LIST = 39  # vectors per centroid to train from (faiss's own minimum)
EF_SEARCH = 1000
SEND_AT = 1000  # vectors a list gathers before one upsert (64 small upserts a batch ran at ~160 vectors/s)
IN_FLIGHT = 4  # upserts sent and not yet answered: the writer goes on while the server inserts
_KEY_BATCH = 900  # SQLite's variables per statement, with room
# A decision's own copy of each list (NAME-l07u, NAME-l07o): the vectors that Upheld (Overturned)
# passages have. A filter keeping only Upheld passages asks those, and names no ids: naming a broad
# filter's tens of thousands of ids a list took 25-65 ms a list on the server at 3.5M passages.
SIDES = {"Upheld": 1, "Overturned": 2}
_SUFFIX = {0: "", 1: "u", 2: "o"}
# A decision's copies are routed by that decision's own centroids (the mean of its passages' vectors
# in each list), not the lists': a question worded toward overturning sits near lists full of
# Overturned passages, whose few Upheld ones are not the best Upheld ones. Exact scan of the 12
# lists asked, 40k letters, 24 questions: Upheld recall@10 0.79 (worst 0.0) routed by the lists'
# centroids, 1.0 (worst 1.0) by Upheld's; Overturned 0.83 (0.0) and 1.0 (1.0). BENCHMARKS.md, stop 30.


def server_keys(store, rowids) -> tuple[np.ndarray, np.ndarray]:
    """Each of these passages' vector key and list (as the store's ``server_vectors`` says), for
    its segment's files: keys as ASCII bytes, lists as int16 (a passage without a vector: b"", -1)."""
    rowids = np.asarray(rowids, dtype=np.int64)
    got: dict[int, tuple[str, int]] = {}
    if len(rowids):
        for r, key, k in store.db.execute("SELECT rowid, vkey, vlist FROM server_vectors WHERE rowid BETWEEN ? AND ?",
                                          (int(rowids.min()), int(rowids.max()))):
            got[r] = (key, k)
    miss = ("", -1)
    pairs = [got.get(int(r), miss) for r in rowids]
    return (np.array([p[0].encode() for p in pairs], dtype="S24"), np.array([p[1] for p in pairs], dtype=np.int16))


def vector_key(v16: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(v16, dtype=np.float16).tobytes(), digest_size=12).hexdigest()


class ServerLists:
    """An index's vectors in a Chroma server (``IMR_CHROMA_URL``). The store keeps, per passage
    (``server_vectors``: chunk rowid, vector key, list), where its vector is; the server keeps the
    vectors and the centroids. Written only by the index's one writer."""

    def __init__(self, store, base: str, identity: str, chroma_function):
        self.store, self.base, self.identity, self.fn = store, base, identity, chroma_function
        self.client = chroma_client(Path("."))
        self._cols: dict[int, object] = {}
        self._centroids: np.ndarray | None = None
        self._unused: dict[tuple[str, int], int] = {}  # (vector key, side) -> list, of removed passages
        self._pending: dict[tuple[int, int], dict[str, np.ndarray]] = {}  # (list, side) -> vectors not yet sent
        self._sent: list = []  # upserts under way (futures), answered before the store commits
        self._sums: dict[int, np.ndarray] | None = None  # side -> (lists, dim) float64 sums of its passages' vectors
        self._sums_changed = False
        self._side_centroids: dict[int, np.ndarray | None] = {}
        self._key_side_index = False  # server_vectors(vkey, vside) is there (looked at by a writer's first add)

    # -- collections
    def _collection(self, name: str):
        col = self.client.get_or_create_collection(
            name, metadata={"embedder": self.identity, "imr_layout": "lists-1"},
            configuration={"hnsw": {"space": "cosine", "ef_search": EF_SEARCH}}, embedding_function=self.fn)
        have = (col.metadata or {}).get("embedder")
        if have not in (None, self.identity):
            raise IndexProblem(f"Chroma collection {name!r} holds vectors of {have!r}, not {self.identity!r}: "
                               f"rebuild with `imr index --rebuild RECORDS`")
        return col

    def list_collection(self, k: int, side: int = 0):
        """List ``k``'s collection: every vector once (side 0), or a decision's copy (``SIDES``)."""
        if (k, side) not in self._cols:
            self._cols[k, side] = self._collection(f"{self.base}-l{k:02d}{_SUFFIX[side]}")
        return self._cols[k, side]

    @property
    def sided(self) -> bool:
        """The lists have their decisions' copies (an index built before them has not)."""
        return self.store.get_meta("server_sides") == "1"

    def centroids(self) -> np.ndarray | None:
        """The lists' centroids (None until the first vectors are added)."""
        if self._centroids is None and self.store.get_meta("server_lists"):
            got = self._collection(f"{self.base}-centroids").get(include=["embeddings"])
            if not got["ids"]:
                raise IndexProblem(f"the Chroma server at {env().chroma_url} has no lists for this index (was it reset or "
                                   f"another server?): run `imr index --rebuild RECORDS`")
            order = np.argsort(got["ids"])
            self._centroids = np.asarray(got["embeddings"], dtype=np.float32)[order]
        return self._centroids

    def train(self, vecs: np.ndarray) -> None:
        """Centroids from the first vectors (as many lists as they can train, at most ``LISTS``)."""
        import faiss

        x = np.unique(np.asarray(vecs, dtype=np.float16), axis=0).astype(np.float32)
        k = max(1, min(LISTS, len(x) // TRAIN_PER_LIST))
        if k == 1:
            c = x.mean(axis=0, keepdims=True)
            c /= max(float(np.linalg.norm(c)), 1e-12)
        else:
            km = faiss.Kmeans(x.shape[1], k, niter=20, spherical=True, seed=1)
            km.train(x)
            c = km.centroids
        self._collection(f"{self.base}-centroids").upsert(ids=[f"c{i:02d}" for i in range(len(c))], embeddings=c.tolist())
        if "vside" not in {r[1] for r in self.store.db.execute("PRAGMA table_info(server_vectors)")}:
            self.store.db.execute("ALTER TABLE server_vectors ADD COLUMN vside INTEGER DEFAULT 0")
        self.store.set_meta("server_lists", str(len(c)))
        self.store.set_meta("server_sides", "1")
        self.store.set_meta("server_side_sums", "1")  # summed from the first vector (an index sided before: not)
        self._centroids = np.asarray(c, dtype=np.float32)

    # -- writing
    def add(self, rowids: list[int], vecs: np.ndarray, decisions: list[str] | None = None) -> None:
        """Each passage's vector to its list, once per distinct vector, and to its decision's copy of
        the list; the rows that say where commit with the segment (a vector upserted by a run that is
        then killed is upserted again: same id)."""
        v16 = np.asarray(vecs, dtype=np.float16)
        keys = [vector_key(v) for v in v16]
        lists = np.argmax(v16.astype(np.float32) @ self.centroids().T, axis=1)
        sided = self.sided
        sides = [SIDES.get(d, 0) for d in decisions] if sided and decisions is not None else [0] * len(keys)
        have: set[tuple[str, int]] = set()  # (key, 0) on the server; (key, side) in that side's copy
        uniq = list(dict.fromkeys(keys))
        on = [0, *SIDES.values()] if sided else [0]
        if sided and not self._key_side_index:  # (made with this writer's rows: a rollback takes it too, see forget_unsent)
            self.store.db.execute("CREATE INDEX IF NOT EXISTS server_vectors_key_side ON server_vectors(vkey, vside)")
            self._key_side_index = True
        # one index seek per key and copy: a boilerplate vector's passages are tens of thousands at 1M
        # letters, and reading them all (SELECT DISTINCT vkey, vside) took 37% of the writer's time
        there = ", ".join(f"EXISTS (SELECT 1 FROM server_vectors WHERE vkey = k.column1{f' AND vside = {sd}' if sd else ''})"
                          for sd in on)
        for i in range(0, len(uniq), _KEY_BATCH):
            part = uniq[i:i + _KEY_BATCH]
            for key, *found in self.store.db.execute(
                    f"SELECT k.column1, {there} FROM (VALUES {','.join(['(?)'] * len(part))}) k", part):
                have.update((key, sd) for sd, f in zip(on, found) if f)
        new: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        for key, k, v, side in zip(keys, lists, v16, sides):
            for sd in {0, side}:
                if (key, sd) not in have:
                    new.setdefault((int(k), sd), {})[key] = v
        for ks, kv in new.items():
            self._pending.setdefault(ks, {}).update(kv)
            if len(self._pending[ks]) >= SEND_AT:
                self._send(ks)
        if sided:
            if self.summed:
                self._add_sums(lists, v16, np.asarray(sides))
            self.store.db.executemany("INSERT OR REPLACE INTO server_vectors (rowid, vkey, vlist, vside) VALUES (?,?,?,?)",
                                      [(r, key, int(k), sd) for r, key, k, sd in zip(rowids, keys, lists, sides)])
        else:
            self.store.db.executemany("INSERT OR REPLACE INTO server_vectors (rowid, vkey, vlist) VALUES (?,?,?)",
                                      [(r, key, int(k)) for r, key, k in zip(rowids, keys, lists)])

    def _stored_sums(self) -> dict[int, np.ndarray]:
        """Each decision's committed sums, (lists, dim) float64 (a list without any: zeros)."""
        sums = {side: np.zeros(self.centroids().shape) for side in SIDES.values()}
        for k, side, blob in self.store.db.execute("SELECT vlist, vside, vsum FROM server_side_sums"):
            sums[side][k] = np.frombuffer(blob, dtype=np.float64)
        return sums

    def _add_sums(self, lists: np.ndarray, v16: np.ndarray, sides: np.ndarray) -> None:
        """Each decision's passages' vectors added to its sums per list (written by ``send``, with
        the rows, before the store commits; a removed passage's vector stays in them until a
        rebuild: they only route)."""
        if self._sums is None:
            self._sums = self._stored_sums()
        sums = self._sums
        for side in SIDES.values():
            sel = sides == side
            if sel.any():
                np.add.at(sums[side], lists[sel], v16[sel].astype(np.float64))
                self._sums_changed = True

    @property
    def summed(self) -> bool:
        """Each decision's vectors are summed per list (an index whose copies were made before is
        routed by the lists' centroids until rebuilt: sums of only its later letters would misroute)."""
        return self.store.get_meta("server_side_sums") == "1"

    def forget_unsent(self) -> None:
        """After the store rolled back: what this writer held for its uncommitted rows (the upserts
        under way are waited for, their failures already the writer's)."""
        for f in self._sent:
            try:
                f.result()
            except Exception:
                pass
        self._sent, self._pending, self._unused = [], {}, {}
        self._sums, self._sums_changed, self._side_centroids, self._key_side_index = None, False, {}, False

    def _send(self, ks: tuple[int, int]) -> None:
        kv = self._pending.pop(ks, {})
        if kv:
            col, ids = self.list_collection(*ks), list(kv)
            emb = np.vstack(list(kv.values())).astype(np.float32).tolist()
            self._sent.append(threads("imr-chroma-send", 1).submit(lambda: col.upsert(ids=ids, embeddings=emb)))
            while len(self._sent) > IN_FLIGHT:
                self._sent.pop(0).result()

    def send(self) -> None:
        """Every vector still waiting, and every upsert answered, before the store commits the rows
        that name them (an upsert that failed raises here: nothing is committed)."""
        for k in list(self._pending):
            self._send(k)
        if self._sums_changed:
            self.store.db.executemany("INSERT OR REPLACE INTO server_side_sums (vlist, vside, vsum) VALUES (?,?,?)",
                                      [(k, side, m[k].tobytes()) for side, m in self._sums.items() for k in range(len(m))])
            self._sums_changed, self._side_centroids = False, {}
        sent, self._sent = self._sent, []
        for f in sent:
            f.result()

    def remove(self, rowids: list[int]) -> None:
        """Passages gone from the store: their rows now; the vectors no passage shares any more
        leave the server after the store commits (``delete_unused``), so a killed run loses none."""
        db, side = self.store.db, "vside" if self.sided else "0"
        for i in range(0, len(rowids), _KEY_BATCH):
            part = rowids[i:i + _KEY_BATCH]
            q = ",".join("?" * len(part))
            for key, k, sd in db.execute(f"SELECT vkey, vlist, {side} FROM server_vectors WHERE rowid IN ({q})", part):
                self._unused[key, 0] = k
                if sd:
                    self._unused[key, sd] = k
            db.execute(f"DELETE FROM server_vectors WHERE rowid IN ({q})", part)

    def delete_unused(self) -> None:
        """After a commit: delete the removed passages' vectors that no committed row names (a
        changed letter's unchanged passages named theirs again)."""
        orphans: dict[tuple[int, int], list[str]] = {}
        for (key, sd), k in self._unused.items():
            named = self.store.db.execute("SELECT 1 FROM server_vectors WHERE vkey=? LIMIT 1" if not sd else
                                          "SELECT 1 FROM server_vectors WHERE vkey=? AND vside=? LIMIT 1",
                                          (key,) if not sd else (key, sd)).fetchone()
            if not named:
                orphans.setdefault((k, sd), []).append(key)
        for ks, keys in orphans.items():
            self.list_collection(*ks).delete(ids=keys)
        self._unused = {}

    # -- reading
    def warm(self) -> None:
        """Ask every list once: the server loads a list's graph on its first query (all 64 took 3.8 s
        at 700k passages, then ~3 ms a query)."""
        c = self.centroids()
        if c is not None:
            cols = [(k, sd) for k in range(len(c)) for sd in ((0, *SIDES.values()) if self.sided else (0,))]
            list(threads("imr-chroma", 8).map(lambda ks: self.list_collection(*ks).query(
                query_embeddings=[c[ks[0]].tolist()], n_results=1, include=["distances"]), cols))

    def _ask(self, q: np.ndarray, n: int, lists, ids: dict | None = None, side: int = 0) -> list[tuple[float, str, int]]:
        """The ``n`` best vectors of these lists (of ``ids[list]`` only, if given; of a decision's
        copies, ``side``): (similarity, key, list), best first."""
        def one(k):
            col, kw = self.list_collection(k, side), {"ids": ids[k]} if ids is not None else {}
            ask = dict(query_embeddings=[q.tolist()], n_results=min(n, len(ids[k])) if ids else n, include=["distances"])
            try:
                return k, col.query(**ask, **kw)
            except Exception as e:
                if ids is None or "finding id" not in str(e):
                    raise
            # an index written before dead_rows named a replaced passage's vector, gone from the server
            there = col.get(ids=ids[k], include=[])["ids"]
            return k, (col.query(**{**ask, "n_results": min(n, len(there))}, ids=there) if there else {"ids": [[]], "distances": [[]]})

        scored: dict[str, tuple[float, int]] = {}
        # eight threads: they wait on the server (8 lists took 55 ms one after another, 32 ms at once)
        for k, res in threads("imr-chroma", 8).map(one, [int(k) for k in lists]):
            for key, d in zip(res["ids"][0], res["distances"][0]):
                scored[key] = (1.0 - float(d), k)
        best = sorted(scored, key=lambda key: (-scored[key][0], key))[:n]
        return [(scored[key][0], key, scored[key][1]) for key in best]

    def side_centroids(self, side: int) -> np.ndarray | None:
        """A decision's centroid in each list (the mean of its passages' vectors there; a list with
        none of them: zeros), or None for an index written before they were kept."""
        if side not in self._side_centroids:
            m = self._stored_sums()[side] if self.centroids() is not None and self.summed else None
            if m is not None and m.any():
                self._side_centroids[side] = (m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)).astype(np.float32)
            else:
                self._side_centroids[side] = None
        return self._side_centroids[side]

    def nearest_lists(self, q: np.ndarray, side: int = 0) -> list[int]:
        """Every list, nearest the question first (by a decision's own centroids, ``side``)."""
        c = self.centroids()
        if c is None:
            return []
        sc = self.side_centroids(side) if side else None
        score = (c if sc is None else sc) @ q
        if sc is not None:
            score[~sc.any(axis=1)] = -np.inf  # a list holding none of the decision's passages: last
        return [int(k) for k in np.argsort(-score, kind="stable")]

    def nearest(self, q: np.ndarray, n: int, side: int = 0) -> list[tuple[float, str, int]]:
        """The ``n`` best vectors of the ``PROBE`` lists nearest the question (of their copies for a
        decision, ``side``, routed by its centroids): (similarity, key, list)."""
        return self._ask(q, n, self.nearest_lists(q, side)[:PROBE], side=side)

    def search(self, q: np.ndarray, n: int) -> list[str]:
        """Chunk ids of the ``n`` best passages (of the ``n`` best vectors, in rank order)."""
        best = [key for _, key, _ in self.nearest(q, n)]
        rank = {key: i for i, key in enumerate(best)}
        rows = []
        for i in range(0, len(best), _KEY_BATCH):
            part = best[i:i + _KEY_BATCH]
            rows += self.store.db.execute(f"SELECT s.vkey, c.id FROM server_vectors s JOIN chunks c ON c.rowid = s.rowid "
                                          f"WHERE s.vkey IN ({','.join('?' * len(part))})", part).fetchall()
        return [cid for _, cid in sorted(rows, key=lambda r: (rank[r[0]], r[1]))][:n]

    def search_among(self, q: np.ndarray, n: int, held: dict[int, np.ndarray], side: int = 0) -> list[tuple[float, str, int]]:
        """The ``n`` best of a filter's vectors, ``held[list]`` the distinct keys (bytes) it has in each
        list asked (``ids=``: the server scores them, nothing is fetched; in a decision's copies of
        the lists when all its passages have that decision, ``side``): (similarity, key, list)."""
        held = {k: v.astype("U24").tolist() for k, v in held.items() if len(v)}
        return self._ask(q, n, list(held), held, side) if held else []

    def vectors_of(self, chunk_ids: list[str]) -> tuple[list[str], np.ndarray]:
        """The vectors of these passages, read from the server: (ids found, matrix)."""
        rows = []
        for i in range(0, len(chunk_ids), _KEY_BATCH):
            part = chunk_ids[i:i + _KEY_BATCH]
            rows += self.store.db.execute(f"SELECT c.id, s.vkey, s.vlist FROM chunks c JOIN server_vectors s ON s.rowid = c.rowid "
                                          f"WHERE c.id IN ({','.join('?' * len(part))})", part).fetchall()
        by_list: dict[int, set[str]] = {}
        for _, key, k in rows:
            by_list.setdefault(k, set()).add(key)
        vec: dict[str, list[float]] = {}
        for k, keys in by_list.items():
            got = self.list_collection(k).get(ids=sorted(keys), include=["embeddings"])
            vec.update(zip(got["ids"], got["embeddings"]))
        found = [(cid, vec[key]) for cid, key, _ in rows if key in vec]
        if not found:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [c for c, _ in found], np.asarray([v for _, v in found], dtype=np.float32)

    def any_passage(self) -> bool:
        return self.store.db.execute("SELECT 1 FROM server_vectors LIMIT 1").fetchone() is not None

    def passages(self) -> int:
        return self.store.db.execute("SELECT count(*) FROM server_vectors").fetchone()[0]


def drop_server_lists(base: str) -> None:
    """Every collection of the index named ``base`` (a rebuild's old or abandoned vectors)."""
    client = chroma_client(Path("."))
    for c in client.list_collections():
        name = c if isinstance(c, str) else c.name
        if name == base or name.startswith(base + "-"):
            client.delete_collection(name)
