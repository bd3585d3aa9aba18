"""Hybrid retrieval: dense + BM25 over every search segment, reciprocal rank fusion, filters,
one-letter diversity.

Each segment answers its best passages (exact float16 scores; an IVF picks the candidates in large
segments); the best over all segments are kept, and a passage whose letter was re-indexed into a
newer segment since is dropped (its row says which segment holds it). Filters: a mask from each
segment's facet columns restricts both searches in one pass, and the store has the last word on
every row. With a Chroma server (``IMR_CHROMA_URL``) the dense side asks its lists instead
(``index/vectors.py``): filters then apply to over-fetched candidates, and when those run dry the
allowed chunks are scored directly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core.filters import Filters
from ..index import Index, IndexProblem
from ..index.segments import Segment, merged
from ..procs import threads  # noqa: F401  (the page takes its pools from here too)

RRF_K = 60
SMALL_SET = 4000


@dataclass
class Hit:
    id: str
    score: float
    row: dict
    ranks: dict = field(default_factory=dict)


class Retriever:
    def __init__(self, index: Index):
        self.index = index
        self._segs: list[Segment] | None = None
        self._stemmer = None

    def segments(self) -> list[Segment]:
        if self._segs is None:
            import Stemmer

            self._stemmer = Stemmer.Stemmer("english")
            self._segs = self.index.segments()
        return self._segs

    def warm(self) -> None:
        """Open what the first question would (segments, their lists, the embedder): a server does
        it before anyone asks."""
        for s in self.segments():
            if s.dense_ok and len(s) and not self.index.remote_vectors:
                s._index()
        if self.index.remote_vectors:
            self.index.server.centroids()
        self.index.embedder(["warm"])

    def _masks(self, filters: Filters | None) -> dict[int, np.ndarray | None]:
        return {s.num: (filters.facet_mask(s.facets()) if filters is not None and filters.active() else None) for s in self.segments()}

    def _tokens(self, query: str) -> list[str]:
        """The query's BM25 terms, tokenised as the passages were."""
        import bm25s

        self.segments()
        toks = bm25s.tokenize([query], stopwords="en", stemmer=self._stemmer, show_progress=False)
        word = {i: w for w, i in toks.vocab.items()}
        return [word[i] for i in toks.ids[0]] if toks.ids else []

    def _each(self, fn, masks: dict | None) -> list:
        """``fn(segment, mask)`` for every segment a mask leaves something in, on two threads (faiss
        and NumPy release the GIL: at 16 segments of 3.5M passages p95 141 -> 100 ms)."""
        masks = masks or {}
        segs = [(s, masks.get(s.num)) for s in self.segments()]
        segs = [(s, m) for s, m in segs if m is None or m.any()]
        if len(segs) < 2:
            return [(s, fn(s, m)) for s, m in segs]
        return list(zip([s for s, _ in segs], _pool().map(lambda sm: fn(*sm), segs)))

    def lexical(self, query: str, n: int, masks: dict | None = None) -> list[tuple[float, int, int]]:
        toks = self._tokens(query)
        if not toks:
            return []
        return merged(self._each(lambda s, m: s.lexical(toks, n, m), masks), n)

    def dense(self, qv: np.ndarray, n: int, masks: dict | None = None) -> list[tuple[float, int, int]]:
        return merged(self._each(lambda s, m: s.dense(qv[0], n, m), masks), n)

    def _chroma(self, qv: np.ndarray, n: int) -> list[str]:
        try:
            srv = self.index.server
            if not srv.passages() and self.index.store.count():  # the store has passages, the server none: never BM25 alone silently
                raise ValueError(f"the Chroma server holds no vectors for the {self.index.store.count()} indexed passages")
            return srv.search(qv[0], n)
        except IndexProblem:
            raise
        except Exception as e:
            raise IndexProblem(f"the Chroma server's index for {self.index.dir} cannot be searched ({type(e).__name__}: "
                              f"{str(e)[:120]}); run `imr index --rebuild RECORDS`") from None

    def dense_among(self, qv: np.ndarray, ids: list[str], n: int) -> list[str]:
        got, m = self.index.server.vectors_of(ids)
        if not got:
            return []
        order = np.argsort(-(m @ qv[0]), kind="stable")[:n]
        return [got[i] for i in order]

    def _ids(self, found: list[tuple[float, int, int]], rows: dict[int, dict]) -> list[str]:
        """Chunk ids in rank order, of rows that still point at the segment that found them (a
        letter re-indexed since lives in a newer segment), each once."""
        out, seen = [], set()
        for _, r, num in found:
            row = rows.get(r)
            if row is not None and row["seg"] == num and row["id"] not in seen:
                seen.add(row["id"])
                out.append(row["id"])
        return out

    def search(self, query: str, k: int = 8, filters: Filters | None = None, per_letter: int = 1,
               overfetch: int = 10) -> list[Hit]:
        filters = filters or Filters()
        qv = np.asarray(self.index.embedder([query]), dtype=np.float32)
        n = max(50, k * overfetch)
        self.segments()
        masks = self._masks(filters) if filters.active() else {}
        lex_found = self.lexical(query, n, masks)
        if self.index.remote_vectors:
            return self._search_server(qv, n, k, filters, per_letter, lex_found)
        dense_found = self.dense(qv, n, masks)
        rows = self.index.store.rows({r for _, r, _ in lex_found + dense_found})
        by_id = {d["id"]: d for d in rows.values()}
        dense, lex = self._ids(dense_found, rows), self._ids(lex_found, rows)
        if filters.active():  # the store has the last word
            dense, lex = [c for c in dense if filters.match(by_id[c])], [c for c in lex if filters.match(by_id[c])]
        return fuse({"dense": dense, "lexical": lex}, by_id, k, per_letter)

    def _search_server(self, qv, n, k, filters, per_letter, lex_found) -> list[Hit]:
        rows = self.index.store.rows({r for _, r, _ in lex_found})
        lex = self._ids(lex_found, rows)
        by_id = {d["id"]: d for d in rows.values()}
        dense = self._chroma(qv, n)
        by_id.update(self.index.store.rows_by_id([c for c in dense if c not in by_id]))
        dense = [c for c in dense if c in by_id]
        if filters.active():
            dense, lex = [c for c in dense if filters.match(by_id[c])], [c for c in lex if filters.match(by_id[c])]
            if len({by_id[c]["letter_id"] for c in set(dense) | set(lex)}) < k:
                allowed = self.index.store.chunk_ids(filters)
                if len(allowed) <= SMALL_SET:
                    dense = self.dense_among(qv, allowed, n) if allowed else []
                    by_id.update(self.index.store.rows_by_id([c for c in dense if c not in by_id]))
                    dense = [c for c in dense if c in by_id]
        return fuse({"dense": dense, "lexical": lex}, by_id, k, per_letter)


def fuse(rankings: dict[str, list[str]], rows: dict[str, dict], k: int, per_letter: int = 1) -> list[Hit]:
    """Reciprocal rank fusion of ranked chunk ids, then at most ``per_letter`` chunks of one letter."""
    fused: dict[str, Hit] = {}
    for name, ranked in rankings.items():
        for r, cid in enumerate(ranked):
            h = fused.setdefault(cid, Hit(cid, 0.0, rows[cid]))
            h.score += 1.0 / (RRF_K + r + 1)
            h.ranks[name] = r + 1
    out, per = [], {}
    for h in sorted(fused.values(), key=lambda h: (-h.score, h.id)):
        lid = h.row["letter_id"]
        if per.get(lid, 0) >= per_letter:
            continue
        per[lid] = per.get(lid, 0) + 1
        out.append(h)
        if len(out) >= k:
            break
    return out


def _pool():
    """The segments' searches (faiss and NumPy release the GIL)."""
    return threads("imr-search")
