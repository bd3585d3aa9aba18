"""Hybrid retrieval: dense + BM25 over every search segment, reciprocal rank fusion, filters,
one-letter diversity.

Each segment answers its best passages (exact float16 scores; an IVF picks the candidates in large
segments); the best over all segments are kept, and a passage whose letter was re-indexed into a
newer segment since is dropped (its row says which segment holds it). Filters: a mask from each
segment's facet columns restricts both searches in one pass, and the store has the last word on
every row. With a Chroma server (``IMR_CHROMA_URL``) the dense side asks its lists instead
(``index/vectors.py``): a broad filter keeps its passages of over-fetched vectors, a narrower one (or a
broad one whose over-fetch runs short) has the lists score only its passages; a filter of one
decision asks that decision's copies of the lists.
"""
from __future__ import annotations

from concurrent.futures import wait
from dataclasses import dataclass, field

import numpy as np

from ..core.filters import Filters
from ..index import Index, IndexProblem
from ..index.segments import Segment, merged
from ..index.vectors import PROBE, SIDES, server_keys
from ..procs import threads  # (the page takes its pools from here too)

RRF_K = 60
# Chroma server: a filter keeping at least this share of the passages keeps its passages of the
# best n * total / kept vectors (at most OVERFETCH_MAX); a narrower one, or one those leave short of
# n, asks the lists for their best among its passages (every one of them named: ids per list).
OVERFETCH_AT = 0.2
OVERFETCH_MAX = 1000
HELD_FILTERS = 4  # filters whose keys per list are kept (a broad one's: 24 bytes a distinct vector)


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
        self._keys: dict[int, tuple] = {}  # a segment's vector keys and lists on the Chroma server
        self._sorted: dict[int, tuple] = {}  # and those keys sorted
        self._held_by: dict[str, dict[int, np.ndarray]] = {}  # a filter's keys in each list
        self._dead: dict[int, np.ndarray | None] = {}  # the positions still live (the segments are fixed for a Retriever's life)
        self._decided: dict[tuple[int, str], tuple[np.ndarray, int]] = {}  # a segment's passages of a decision, and their count
        self._side_by: dict[str, tuple[int, int]] = {}  # a filter's decision copy of the lists (``_side``)
        self._server_ok = False  # the store names vectors on the server (asked once: a count took 49 ms at 3.5M passages)

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
            self.index.server.warm()
            for s in self.segments():
                self._by_list(s)
                self._live(s)
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

    def _chroma(self, ask):
        """``ask(server)``, with the server's failures said in one line."""
        try:
            srv = self.index.server
            if not self._server_ok:
                if not srv.any_passage() and self.index.store.count():  # the store has passages, the server none: never BM25 alone silently
                    raise ValueError(f"the Chroma server holds no vectors for the {self.index.store.count()} indexed passages")
                self._server_ok = True
            return ask(srv)
        except IndexProblem:
            raise
        except Exception as e:
            raise IndexProblem(f"the Chroma server's index for {self.index.dir} cannot be searched ({type(e).__name__}: "
                              f"{str(e)[:120]}); run `imr index --rebuild RECORDS`") from None

    def _server_keys(self, s: Segment) -> tuple[np.ndarray, np.ndarray]:
        """A segment's vector keys and lists: kept with it by its writer, or (a segment written
        before) read from the store once."""
        if s.num not in self._keys:
            self._keys[s.num] = s.server_keys() or server_keys(self.index.store, s.rowids)
        return self._keys[s.num]

    def _by_list(self, s: Segment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A segment's passages ordered by (Chroma list, vector key): keys, lists, positions. A key's
        passages, or a list's, are then a binary search away."""
        if s.num not in self._sorted:
            k, li = self._server_keys(s)
            k, li = np.ascontiguousarray(k, dtype="S24"), np.asarray(li, dtype=np.int16)
            w = k.view(">u8").reshape(-1, 3)  # big-endian words sort as the bytes do (sorting strings: 36 ms at 75k)
            order = np.lexsort((w[:, 2], w[:, 1], w[:, 0], li))
            self._sorted[s.num] = (k[order], li[order], order)
        return self._sorted[s.num]

    def _passages_of(self, best: list[tuple[float, str, int]], segs: list) -> list[tuple[int, int]]:
        """The passages these vectors ((similarity, key, list), best first) are shared by, that the
        masks keep, as (rowid, segment): in the vectors' order, then by rowid."""
        keys = np.array([b[1] for b in best], dtype="S24")
        lists = np.array([b[2] for b in best], dtype=np.int16)
        rids, ranks, nums = [], [], []
        for s, m in segs:
            if (m is not None and not m.any()) or not len(keys):
                continue
            sk, sl, order = self._by_list(s)
            lo, hi = np.zeros(len(keys), np.int64), np.zeros(len(keys), np.int64)
            for k in np.unique(lists).tolist():
                sel = lists == k
                a, b = np.searchsorted(sl, [k, k + 1])
                lo[sel] = a + np.searchsorted(sk[a:b], keys[sel], "left")
                hi[sel] = a + np.searchsorted(sk[a:b], keys[sel], "right")
            cnt = hi - lo
            tot = int(cnt.sum())
            if not tot:
                continue
            rank = np.repeat(np.arange(len(keys)), cnt)
            pos = order[np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(tot)]
            if m is not None:
                ok = np.asarray(m)[pos]
                pos, rank = pos[ok], rank[ok]
            rids.append(np.asarray(s.rowids)[pos])
            ranks.append(rank)
            nums.append(np.full(len(pos), s.num))
        if not rids:
            return []
        rids, ranks, nums = np.concatenate(rids), np.concatenate(ranks), np.concatenate(nums)
        o = np.lexsort((rids, ranks))
        return list(dict.fromkeys(zip(rids[o].tolist(), nums[o].tolist())))

    def _live(self, s: Segment) -> np.ndarray | None:
        """A segment's positions whose passages are still its own (None: all): a replaced passage's
        vector may have left the server, and naming it fails the whole query."""
        if s.num not in self._dead:
            dead = self.index.store.dead_rowids(s.num)
            self._dead[s.num] = ~np.isin(np.asarray(s.rowids), dead) if len(dead) else None
        return self._dead[s.num]

    def _held(self, srv, q: np.ndarray, segs: list, sig: str, side: int = 0) -> dict[int, np.ndarray]:
        """The filter's distinct vector keys in each of the ``PROBE`` lists nearest the question that
        hold any (a category's passages sit in few lists: all of them). A list's keys under a filter
        do not depend on the question: kept for the last few filters (``sig``)."""
        known = self._held_by.pop(sig, {})
        self._held_by[sig] = known  # the most recent last
        while len(self._held_by) > HELD_FILTERS:
            self._held_by.pop(next(iter(self._held_by)))
        held: dict[int, np.ndarray] = {}
        segs = [(s, m if self._live(s) is None else (self._live(s) if m is None else m & self._live(s))) for s, m in segs]
        for k in srv.nearest_lists(q, side):
            if k not in known:
                parts = []
                for s, m in segs:
                    sk, sl, order = self._by_list(s)
                    a, b = np.searchsorted(sl, [k, k + 1])
                    if a < b:
                        parts.append(sk[a:b] if m is None else sk[a:b][np.asarray(m)[order[a:b]]])
                got = np.concatenate(parts) if parts else np.zeros(0, "S24")
                if len(parts) > 1:  # sorted runs: a stable sort merges them (np.unique's sort took 2.7 ms at 12k keys)
                    got = np.sort(got, kind="stable")
                known[k] = got[np.r_[True, got[1:] != got[:-1]]] if len(got) else got
            if len(known[k]):
                held[k] = known[k]
                if len(held) == PROBE:
                    break
        return held

    def _side(self, segs: list, sig: str) -> tuple[int, int]:
        """(the decision copy of the lists, its passages) when every passage the filter keeps has that
        decision ("why were these upheld?"), else (0, 0): the copy holds the filter's vectors and few
        others, so it is asked without naming ids. An index built before the copies has none."""
        if sig not in self._side_by:
            got = (0, 0)
            if self.index.server.sided:
                for name, side in SIDES.items():
                    total = 0
                    for s, m in segs:
                        if (s.num, name) not in self._decided:
                            d = Filters.of(decision=name).facet_mask(s.facets())
                            self._decided[s.num, name] = (d, int(d.sum()))
                        d, cnt = self._decided[s.num, name]
                        if m is None or (m & ~d).any():
                            break
                        total += cnt
                    else:
                        got = (side, total)
                        break
            while len(self._side_by) >= HELD_FILTERS * 4:
                self._side_by.pop(next(iter(self._side_by)))
            self._side_by[sig] = got
        return self._side_by[sig]

    def _server_dense(self, qv: np.ndarray, n: int, filters: Filters, masks: dict) -> tuple[list[str], dict[str, dict]]:
        """The server's best ``n`` passages (chunk ids, and the rows read for them). Under a filter
        keeping most passages, the best vectors are over-fetched and the filter's passages of them
        kept; when those run short of ``n`` (the question leans to what the filter leaves out:
        "overturned" wording under an Upheld filter), or under a narrower filter, the lists nearest
        the question that hold the filter's passages score those passages only (a category's sit in
        few lists: all are asked, which is exact)."""
        segs = [(s, masks.get(s.num)) for s in self.segments()]
        if not filters.active():  # the passages of the best vectors, found in memory (the store's join took 14 ms)
            got = self._rows(self._passages_of(self._chroma(lambda srv: srv.nearest(qv[0], n)), segs), n)
            return list(got)[:n], got
        total = sum(len(s) for s, _ in segs)
        kept = sum(len(s) if m is None else int(m.sum()) for s, m in segs)
        if not kept:
            return [], {}
        got: dict[str, dict] = {}
        sig = repr(filters.sql())
        side, pool = self._chroma(lambda srv: self._side(segs, sig))
        pool = pool or total
        if kept >= OVERFETCH_AT * pool:
            fetch = min(OVERFETCH_MAX, -(-n * pool // kept))
            got = self._rows(self._passages_of(self._chroma(lambda srv: srv.nearest(qv[0], fetch, side)), segs), n)
        if len(got) < n:
            best = self._chroma(lambda srv: srv.search_among(qv[0], n, self._held(srv, qv[0], segs, sig, side), side))
            got = self._rows(self._passages_of(best, segs), n)
        return list(got)[:n], got

    def _rows(self, cand: list[tuple[int, int]], n: int) -> dict[str, dict]:
        """Rows of the first ``n`` of these passages still in the segment that names them (a letter
        re-indexed since lives in a newer one), read ``n`` at a time: a shared vector's passages can be
        thousands."""
        got: dict[str, dict] = {}
        for i in range(0, len(cand), n):
            rows = self.index.store.rows([r for r, _ in cand[i:i + n]])
            got.update((rows[r]["id"], rows[r]) for r, num in cand[i:i + n] if r in rows and rows[r]["seg"] == num)
            if len(got) >= n:
                break
        return got

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
        if self.index.remote_vectors:
            # BM25 on a thread of its own while the server's lists answer: they wait on HTTP, it
            # computes (the store, whose connection is this thread's, is read here only)
            lex = threads("imr-lexical").submit(self.lexical, query, n, masks)
            try:
                dense_got = self._server_dense(qv, n, filters, masks)
            except BaseException:
                if not lex.cancel():  # never left running under this Retriever's next search
                    wait([lex])
                raise
            return self._search_server(dense_got, k, filters, per_letter, lex.result())
        lex_found = self.lexical(query, n, masks)
        dense_found = self.dense(qv, n, masks)
        rows = self.index.store.rows({r for _, r, _ in lex_found + dense_found})
        by_id = {d["id"]: d for d in rows.values()}
        dense, lex = self._ids(dense_found, rows), self._ids(lex_found, rows)
        if filters.active():  # the store has the last word
            dense, lex = [c for c in dense if filters.match(by_id[c])], [c for c in lex if filters.match(by_id[c])]
        return fuse({"dense": dense, "lexical": lex}, by_id, k, per_letter)

    def _search_server(self, dense_got, k, filters, per_letter, lex_found) -> list[Hit]:
        rows = self.index.store.rows({r for _, r, _ in lex_found})
        lex = self._ids(lex_found, rows)
        by_id = {d["id"]: d for d in rows.values()}
        dense, got = dense_got
        by_id.update(got)
        dense = [c for c in dense if c in by_id]
        if filters.active():  # the store has the last word
            dense, lex = [c for c in dense if filters.match(by_id[c])], [c for c in lex if filters.match(by_id[c])]
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
