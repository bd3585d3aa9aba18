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
_KEY_BATCH = 900  # SQLite's variables per statement, with room


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
        self._unused: dict[str, int] = {}  # vector key -> list, of removed passages
        self._pending: dict[int, dict[str, np.ndarray]] = {}  # list -> vectors not yet sent

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

    def list_collection(self, k: int):
        if k not in self._cols:
            self._cols[k] = self._collection(f"{self.base}-l{k:02d}")
        return self._cols[k]

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
        self.store.set_meta("server_lists", str(len(c)))
        self._centroids = np.asarray(c, dtype=np.float32)

    # -- writing
    def add(self, rowids: list[int], vecs: np.ndarray) -> None:
        """Each passage's vector to its list, once per distinct vector; the rows that say where commit
        with the segment (a vector upserted by a run that is then killed is upserted again: same id)."""
        v16 = np.asarray(vecs, dtype=np.float16)
        keys = [vector_key(v) for v in v16]
        lists = np.argmax(v16.astype(np.float32) @ self.centroids().T, axis=1)
        have: set[str] = set()
        uniq = list(dict.fromkeys(keys))
        for i in range(0, len(uniq), _KEY_BATCH):
            part = uniq[i:i + _KEY_BATCH]
            have.update(r[0] for r in self.store.db.execute(
                f"SELECT DISTINCT vkey FROM server_vectors WHERE vkey IN ({','.join('?' * len(part))})", part))
        new: dict[int, dict[str, np.ndarray]] = {}
        for key, k, v in zip(keys, lists, v16):
            if key not in have:
                new.setdefault(int(k), {})[key] = v
        for k, kv in new.items():
            self._pending.setdefault(k, {}).update(kv)
            if len(self._pending[k]) >= SEND_AT:
                self._send(k)
        self.store.db.executemany("INSERT OR REPLACE INTO server_vectors (rowid, vkey, vlist) VALUES (?,?,?)",
                                  [(r, key, int(k)) for r, key, k in zip(rowids, keys, lists)])

    def _send(self, k: int) -> None:
        kv = self._pending.pop(k, {})
        if kv:
            self.list_collection(k).upsert(ids=list(kv), embeddings=np.vstack(list(kv.values())).astype(np.float32).tolist())

    def send(self) -> None:
        """Every vector still waiting, before the store commits the rows that name them."""
        for k in list(self._pending):
            self._send(k)

    def remove(self, rowids: list[int]) -> None:
        """Passages gone from the store: their rows now; the vectors no passage shares any more
        leave the server after the store commits (``delete_unused``), so a killed run loses none."""
        db = self.store.db
        for i in range(0, len(rowids), _KEY_BATCH):
            part = rowids[i:i + _KEY_BATCH]
            q = ",".join("?" * len(part))
            self._unused.update(db.execute(f"SELECT vkey, vlist FROM server_vectors WHERE rowid IN ({q})", part).fetchall())
            db.execute(f"DELETE FROM server_vectors WHERE rowid IN ({q})", part)

    def delete_unused(self) -> None:
        """After a commit: delete the removed passages' vectors that no committed row names (a
        changed letter's unchanged passages named theirs again)."""
        orphans: dict[int, list[str]] = {}
        for key, k in self._unused.items():
            if not self.store.db.execute("SELECT 1 FROM server_vectors WHERE vkey=? LIMIT 1", (key,)).fetchone():
                orphans.setdefault(k, []).append(key)
        for k, ks in orphans.items():
            self.list_collection(k).delete(ids=ks)
        self._unused = {}

    # -- reading
    def warm(self) -> None:
        """Ask every list once: the server loads a list's graph on its first query (all 64 took 3.8 s
        at 700k passages, then ~3 ms a query)."""
        c = self.centroids()
        if c is not None:
            list(threads("imr-chroma", 8).map(lambda k: self.list_collection(k).query(
                query_embeddings=[c[k].tolist()], n_results=1, include=["distances"]), range(len(c))))

    def _ask(self, q: np.ndarray, n: int, lists, ids: dict | None = None) -> list[tuple[float, str, int]]:
        """The ``n`` best vectors of these lists (of ``ids[list]`` only, if given): (similarity, key,
        list), best first."""
        def one(k):
            col, kw = self.list_collection(k), {"ids": ids[k]} if ids is not None else {}
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

    def nearest_lists(self, q: np.ndarray) -> list[int]:
        """Every list, nearest the question first."""
        c = self.centroids()
        return [] if c is None else [int(k) for k in np.argsort(-(c @ q))]

    def nearest(self, q: np.ndarray, n: int) -> list[tuple[float, str, int]]:
        """The ``n`` best vectors of the ``PROBE`` lists nearest the question: (similarity, key, list)."""
        return self._ask(q, n, self.nearest_lists(q)[:PROBE])

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

    def search_among(self, q: np.ndarray, n: int, held: dict[int, np.ndarray]) -> list[tuple[float, str, int]]:
        """The ``n`` best of a filter's vectors, ``held[list]`` the distinct keys (bytes) it has in each
        list asked (``ids=``: the server scores them, nothing is fetched): (similarity, key, list)."""
        held = {k: [x.decode() for x in v] for k, v in held.items() if len(v)}
        return self._ask(q, n, list(held), held) if held else []

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
