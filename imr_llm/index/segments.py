"""Segments: what search reads, written once and never rewritten. An ``imr index`` run adds one
segment per ``SEGMENT_MAX`` chunks (BM25, float16 vectors, facet columns, and from ``IVF_MIN``
chunks an inverted-list index); the store's ``segments`` table, committed with the chunk rows,
says which are live, and each chunk row says which segment holds it (a re-indexed letter's old
entries are skipped). Small segments are merged when they pile up; large ones stay as written.

Vector search, chosen by measurement (BENCHMARKS.md, `python -m imr_llm.bench.ann`): HNSW graphs
(Chroma's, faiss's, usearch's) lost half of the question queries at 1M passages; faiss IVF with
8-bit codes, ~6% of the lists probed and the top 100 rescored from float16 kept recall@10 at
0.98-1.00 (tie-aware) at 3 ms. Small segments are scanned exactly.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.filters import write_facets
from .problems import IndexProblem

SEGMENT_MAX = 250_000  # chunks; bounds the build's memory (BM25 tokenises a segment at once)
IVF_MIN = 50_000  # below this a segment is scanned exactly
RESCORE = 100  # IVF candidates rescored from float16
EXACT_MAX = 20_000  # a filter leaving fewer chunks than this in a segment: exact scan of those
MERGE_AT = 8  # this many small segments (< SEGMENT_MAX / 4) are merged into one


def seg_root(index_dir: Path) -> Path:
    return index_dir / "segments"


def seg_dir(index_dir: Path, num: int) -> Path:
    return seg_root(index_dir) / f"{num:06d}"


def ivf_shape(n: int) -> tuple[int, int]:
    """(lists, lists probed): ~250 vectors a list, 1/16 of the lists probed (measured at 1M: 0.98)."""
    nlist = int(min(4096, max(64, n // 250)))
    return nlist, max(8, nlist // 16)


class SegmentWriter:
    """Collects one segment's chunks (rowids, BM25 texts, facet values, float16 vectors) and writes
    its folder; the vectors go to disk as they come, so memory is bounded by the texts."""

    def __init__(self, index_dir: Path, num: int):
        self.index_dir, self.num = index_dir, num
        self.tmp = seg_root(index_dir) / f"{num:06d}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.rowids: list[int] = []
        self.texts: list[str] = []
        self.facets: list[tuple] = []
        self.dim = 0
        self._vf = open(self.tmp / "vectors.f16", "wb")

    def __len__(self) -> int:
        return len(self.rowids)

    def add(self, rowids: list[int], texts: list[str], facets: list[tuple], vecs: np.ndarray | None) -> None:
        self.rowids += rowids
        self.texts += texts
        self.facets += facets
        if vecs is not None and len(vecs):
            self.dim = vecs.shape[1]
            self._vf.write(np.ascontiguousarray(vecs, dtype=np.float16).tobytes())

    def finish(self) -> Path:
        """Write BM25, facets, rowids and (large segments) the IVF; then rename into place."""
        import logging

        import bm25s
        import Stemmer

        self._vf.close()
        n = len(self.rowids)
        if not self.dim:
            (self.tmp / "vectors.f16").unlink()
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        toks = bm25s.tokenize(self.texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False)
        self.texts = []
        bm = bm25s.BM25()
        bm.index(toks, show_progress=False)
        bm.save(str(self.tmp), show_progress=False)
        del toks, bm
        write_facets(self.facets, self.tmp / "facets.npz")
        self.facets = []
        np.save(self.tmp / "rowids.npy", np.asarray(self.rowids, dtype=np.int64))
        meta = {"chunks": n, "dim": self.dim, "ivf": None}
        if self.dim and n >= IVF_MIN:
            meta["ivf"] = build_ivf(np.memmap(self.tmp / "vectors.f16", dtype=np.float16, mode="r", shape=(n, self.dim)),
                                    self.tmp / "ivf.faiss")
        (self.tmp / "segment.json").write_text(json.dumps(meta))
        final = seg_dir(self.index_dir, self.num)
        shutil.rmtree(final, ignore_errors=True)
        self.tmp.rename(final)
        return final

    def abort(self) -> None:
        self._vf.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def build_ivf(vecs: np.ndarray, path: Path) -> dict:
    """faiss IVF with 8-bit scalar codes over ``vecs`` (float16, rows are positions)."""
    import faiss

    n, d = vecs.shape
    nlist, nprobe = ivf_shape(n)
    quant = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFScalarQuantizer(quant, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))
    ivf.train(np.asarray(vecs[sample], dtype=np.float32))
    for s in range(0, n, 50_000):
        ivf.add(np.asarray(vecs[s:s + 50_000], dtype=np.float32))
    faiss.write_index(ivf, str(path))
    return {"nlist": nlist, "nprobe": nprobe}


@dataclass
class Scored:
    scores: np.ndarray
    pos: np.ndarray  # positions in the segment


class Segment:
    """One segment, opened for search (everything memory-mapped)."""

    def __init__(self, index_dir: Path, num: int, vectors: bool = True):
        import bm25s

        self.num = num
        self.dir = d = seg_dir(index_dir, num)
        try:
            self.meta = json.loads((d / "segment.json").read_text())
            self.rowids = np.load(d / "rowids.npy", mmap_mode="r")
            self.bm = bm25s.BM25.load(str(d), mmap=True, show_progress=False)
            n, dim = self.meta["chunks"], self.meta["dim"]
            self.vecs = np.memmap(d / "vectors.f16", dtype=np.float16, mode="r", shape=(n, dim)) if vectors and dim else None
            if len(self.rowids) != n or self.bm.scores["num_docs"] != n or (self.vecs is not None and self.vecs.shape[0] != n):
                raise ValueError("its files do not agree on the number of passages")
            for need in ["facets.npz"] + (["ivf.faiss"] if vectors and dim and self.meta["ivf"] else []):
                if not (d / need).is_file():
                    raise FileNotFoundError(need)
        except Exception as e:  # a deleted or truncated file
            raise IndexProblem(f"the index segment {d} is damaged ({type(e).__name__}: {str(e)[:100]}); "
                               f"run `imr index --rebuild RECORDS`") from None
        self._facets: dict | None = None
        self._search = None

    def __len__(self) -> int:
        return len(self.rowids)

    def facets(self) -> dict:
        if self._facets is None:
            try:
                with np.load(self.dir / "facets.npz", allow_pickle=False) as z:
                    self._facets = {k: z[k] for k in z.files}
            except Exception as e:
                raise IndexProblem(f"{self.dir / 'facets.npz'} is damaged ({type(e).__name__}); run `imr index --rebuild RECORDS`") from None
        return self._facets

    def lexical(self, toks, n: int, mask: np.ndarray | None) -> Scored:
        n = min(n, len(self))
        if not n:
            return Scored(np.zeros(0), np.zeros(0, dtype=np.int64))
        docs, scores = self.bm.retrieve(toks, k=n, show_progress=False, weight_mask=mask, n_threads=1)
        keep = scores[0] > 0
        return Scored(scores[0][keep], docs[0][keep].astype(np.int64))

    def _index(self):
        """The faiss index: the IVF file (memory-mapped), or for a small segment its float16 vectors."""
        if self._search is None:
            import faiss

            if self.meta["ivf"]:
                ix = faiss.read_index(str(self.dir / "ivf.faiss"), faiss.IO_FLAG_MMAP)
                ix.nprobe = self.meta["ivf"]["nprobe"]
            else:
                ix = faiss.IndexScalarQuantizer(self.meta["dim"], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
                for s in range(0, len(self), 50_000):
                    ix.add(np.asarray(self.vecs[s:s + 50_000], dtype=np.float32))
            self._search = ix
        return self._search

    def exact(self, qv: np.ndarray, pos: np.ndarray, n: int) -> Scored:
        """Exact float16 scores of ``pos``, best ``n``."""
        if not len(pos):
            return Scored(np.zeros(0, dtype=np.float32), pos)
        s = np.asarray(self.vecs[np.sort(pos)], dtype=np.float32) @ qv
        pos = np.sort(pos)
        top = np.argsort(-s, kind="stable")[:n]
        return Scored(s[top], pos[top])

    def dense(self, qv: np.ndarray, n: int, mask: np.ndarray | None) -> Scored:
        """Best ``n`` by cosine; with ``mask``, among the chunks it keeps."""
        import faiss

        if self.vecs is None or not len(self):
            return Scored(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))
        params = None
        if mask is not None:
            allowed = np.flatnonzero(mask)
            if len(allowed) <= EXACT_MAX or len(allowed) <= n:
                return self.exact(qv, allowed, n)
            bits = np.packbits(mask.astype(bool), bitorder="little")
            sel = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(bits))
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.meta["ivf"]["nprobe"]) if self.meta["ivf"] \
                else faiss.SearchParameters(sel=sel)
        ix = self._index()
        want = max(n, RESCORE) if self.meta["ivf"] else n
        _, got = ix.search(qv[None, :].astype(np.float32), min(want, len(self)), params=params)
        return self.exact(qv, got[0][got[0] >= 0], n)  # scored from float16: IVF codes only choose the candidates


def merged(parts: list[tuple[int, Scored]], n: int, rowids_of) -> list[tuple[float, int, int]]:
    """(score, rowid, segment) of the best ``n`` over every segment's results."""
    out = []
    for num, sc in parts:
        if len(sc.pos):
            rids = rowids_of(num)[sc.pos]
            out += zip(sc.scores.tolist(), rids.tolist(), [num] * len(rids))
    out.sort(key=lambda t: (-t[0], t[1]))
    return out[:n]

