"""Hybrid retrieval: Chroma dense + BM25, reciprocal rank fusion, filters, one-letter diversity.

Filters: with the local mirror, a mask from the facets columns (``facets.npz``) restricts both
the dense scores and BM25 in one pass. Otherwise (Chroma server, or an index built before the
facets existed) filters are applied to over-fetched candidates using the SQLite store (Chroma's own
``where`` is slow on broad filters at scale), and when the candidates run dry the allowed chunks
are scored directly: their vectors fetched by id, BM25 with a mask.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..config import env
from ..core.filters import Filters
from ..index import Index, IndexProblem

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
        self._bm = None
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._stemmer = None
        self._dense = None
        self._facets: dict | None = None

    def _lexical(self):
        if self._bm is None:
            import bm25s
            import Stemmer

            d = self.index.dir / "bm25"
            try:
                self._ids = json.loads((d / "ids.json").read_text()) if (d / "ids.json").exists() else []
                self._pos = {cid: i for i, cid in enumerate(self._ids)}
                self._stemmer = Stemmer.Stemmer("english")
                self._bm = bm25s.BM25.load(str(d), mmap=True, show_progress=False) if self._ids else False
                e = env()
                use_mirror = e.dense != "chroma" and not e.chroma_url and (d / "dense.npy").exists()
                self._dense = np.load(d / "dense.npy", mmap_mode="r") if use_mirror else None
                if self._bm and self._bm.scores["num_docs"] != len(self._ids) or (
                        self._dense is not None and self._dense.shape[0] != len(self._ids)):
                    raise ValueError("its files do not agree on the number of passages")
            except IndexProblem:
                raise
            except Exception as e:  # a deleted or truncated file of the lexical index or mirror
                raise IndexProblem(f"the lexical index in {d} is damaged ({type(e).__name__}: {str(e)[:100]}); "
                                  f"run `imr index --rebuild RECORDS`") from None
        return self._bm

    def facets(self) -> dict | None:
        """The facet columns (loaded on the first filtered query; only used with the local mirror)."""
        self._lexical()
        path = self.index.dir / "bm25" / "facets.npz"
        if self._facets is None and self._dense is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    self._facets = {k: z[k] for k in z.files}
            except Exception as e:
                raise IndexProblem(f"{path} is damaged ({type(e).__name__}); run `imr index --rebuild RECORDS`") from None
        return self._facets

    def lexical(self, query: str, n: int, mask: np.ndarray | None = None) -> list[str]:
        bm = self._lexical()
        if not bm:
            return []
        import bm25s

        toks = bm25s.tokenize([query], stopwords="en", stemmer=self._stemmer, show_progress=False)
        if not toks.vocab or all(len(x) == 0 for x in toks.ids):
            return []
        n = min(n, len(self._ids))
        docs, scores = bm.retrieve(toks, k=n, show_progress=False, weight_mask=mask, n_threads=1)
        return [self._ids[int(d)] for d, s in zip(docs[0], scores[0]) if s > 0]

    def dense(self, qv: np.ndarray, n: int, mask: np.ndarray | None = None) -> list[str]:
        self._lexical()
        if self._dense is not None:
            scores = np.asarray(self._dense @ qv[0])
            if mask is not None:
                scores = np.where(mask > 0, scores, -np.inf)
            n = min(n, len(scores))
            top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top])]
            return [self._ids[i] for i in top if np.isfinite(scores[i])]
        try:
            col = self.index.collection
            total = col.count()
            if not total and self._ids:  # the store has passages, Chroma has none: never answer from BM25 alone silently
                raise ValueError(f"Chroma holds no vectors for the {len(self._ids)} indexed passages")
            if not total:
                return []
            res = col.query(query_embeddings=qv.tolist(), n_results=min(n, total), include=[])
        except IndexProblem:
            raise
        except Exception as e:
            raise IndexProblem(f"the Chroma index of {self.index.dir} cannot be searched ({type(e).__name__}: {str(e)[:120]}); "
                              f"run `imr index --rebuild RECORDS` (or unset IMR_DENSE=chroma to use the mirror)") from None
        return res["ids"][0]

    def dense_among(self, qv: np.ndarray, ids: list[str], n: int) -> list[str]:
        got = self.index.collection.get(ids=ids, include=["embeddings"])
        if not got["ids"]:
            return []
        m = np.asarray(got["embeddings"], dtype=np.float32)
        order = np.argsort(-(m @ qv[0]))[:n]
        return [got["ids"][i] for i in order]

    def search(self, query: str, k: int = 8, filters: Filters | None = None, per_letter: int = 1,
               overfetch: int = 10) -> list[Hit]:
        filters = filters or Filters()
        qv = self.index.embedder([query])
        n = max(50, k * overfetch)
        facets = self.facets() if filters.active() else None
        if facets is not None:
            mask = filters.facet_mask(facets).astype(np.float32)
            dense, lex = (self.dense(qv, n, mask), self.lexical(query, n, mask)) if mask.any() else ([], [])
            rows = self.index.store.rows(set(dense) | set(lex))
            keep = {cid for cid, r in rows.items() if filters.match(r)}  # the store has the last word
            dense = [c for c in dense if c in keep]
            lex = [c for c in lex if c in keep]
        else:
            dense, lex = self.dense(qv, n), self.lexical(query, n)
            rows = self.index.store.rows(set(dense) | set(lex))
        if filters.active() and facets is None:
            keep = {cid for cid, r in rows.items() if filters.match(r)}
            if len({rows[c]["letter_id"] for c in keep}) < k:
                allowed = self.index.store.chunk_ids(filters)
                self._lexical()
                if self._dense is not None or len(allowed) <= SMALL_SET:
                    mask = np.zeros(len(self._ids), dtype=np.float32)
                    for cid in allowed:
                        if cid in self._pos:
                            mask[self._pos[cid]] = 1
                    if self._dense is not None:
                        dense = self.dense(qv, n, mask) if allowed else []
                    else:
                        dense = self.dense_among(qv, allowed, n) if allowed else []
                    lex = self.lexical(query, n, mask) if allowed else []
                    rows = self.index.store.rows(set(dense) | set(lex))
                    keep = set(rows)
            dense = [c for c in dense if c in keep]
            lex = [c for c in lex if c in keep]
        return fuse({"dense": dense, "lexical": lex}, rows, k, per_letter)


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
