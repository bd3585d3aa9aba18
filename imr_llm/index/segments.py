"""Segments: what search reads, written once and never rewritten. An ``imr index`` run adds one
segment per ``SEGMENT_MAX`` chunks (BM25, facet columns, float16 vectors: scanned exactly in a
small segment, in inverted lists from ``IVF_MIN`` chunks); the store's ``segments`` table,
committed with the chunk rows, says which are live, and each chunk row says which segment holds it
(a re-indexed letter's old entries are skipped). Small segments are merged when they pile up;
large ones stay as written.

Vector search, chosen by measurement (BENCHMARKS.md, `python -m imr_llm.bench.ann`): HNSW graphs
(Chroma's, faiss's, usearch's) lost half of the question queries at 1M passages, inverted lists
kept them. Large segments are a faiss IVF whose codes are the float16 vectors themselves (the one
copy: scores are exact at float16, nothing to rescore); a probe reads 1/12 of the lists.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.filters import write_facets
from . import bm25
from .problems import IndexProblem

SEGMENT_MAX = 250_000  # chunks; bounds the build's memory (BM25 tokenises a segment at once)
IVF_MIN = 62_500  # below this a segment is scanned exactly (and is "small": merged with others)
EXACT_MAX = 20_000  # a filter leaving fewer chunks than this in a segment: every one of them is scored
EXACT_FEW = 1_000  # ... read one by one up to this many; above, the lists holding them are scanned whole
SCAN_LISTS_MAX = 4  # ... when those lists hold at most this many times what a search probes
MERGE_AT = 8  # this many small segments are merged into one


def seg_root(index_dir: Path) -> Path:
    return index_dir / "segments"


def seg_dir(index_dir: Path, num: int) -> Path:
    return seg_root(index_dir) / f"{num:06d}"


def ivf_shape(n: int) -> tuple[int, int]:
    """(lists, lists probed): ~250 vectors a list, 1/12 of the lists probed. Tie-aware recall@10
    against an exact scan, 24 questions: at 70k passages 1/16 gave 0.97 (worst question 0.6), 1/8
    1.00; at 3.5M passages (16 segments) 1/8 1.00 / 1.00 unfiltered / broad filter, 1/12 1.00 / 0.996
    (worst 0.9), 1/16 1.00 / 0.962 (worst 0.1)."""
    nlist = int(min(4096, max(64, n // 250)))
    return nlist, max(8, nlist // 12)


KEYS_FILE, LISTS_FILE = "vkeys.npy", "vlists.npy"  # a Chroma server index's: each passage's vector key and list


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

    def finish(self, server_keys: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
        """Write BM25, facets, rowids and (large segments) the IVF; then rename into place.
        ``server_keys``: with a Chroma server, each passage's vector key and list (``ServerLists.keys_of``),
        so a filtered question finds the keys it may ask for without a store query per passage."""
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
        np.save(self.tmp / "termmax.npy", bm25.term_max(bm.scores["data"], bm.scores["indptr"]))
        del toks, bm
        write_facets(self.facets, self.tmp / "facets.npz")
        self.facets = []
        np.save(self.tmp / "rowids.npy", np.asarray(self.rowids, dtype=np.int64))
        if server_keys is not None:
            np.save(self.tmp / KEYS_FILE, server_keys[0])
            np.save(self.tmp / LISTS_FILE, server_keys[1])
        meta = {"chunks": n, "dim": self.dim, "ivf": None}
        if self.dim and n >= IVF_MIN:
            vf = self.tmp / "vectors.f16"
            meta["ivf"] = build_ivf(np.memmap(vf, dtype=np.float16, mode="r", shape=(n, self.dim)), self.tmp / "ivf.faiss")
            vf.unlink()  # the lists hold the vectors
        (self.tmp / "segment.json").write_text(json.dumps(meta))
        final = seg_dir(self.index_dir, self.num)
        shutil.rmtree(final, ignore_errors=True)
        self.tmp.rename(final)
        return final

    def abort(self) -> None:
        self._vf.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _random_access(*arrays: np.ndarray) -> None:
    """Tell the kernel these mapped arrays are read at random (pruned BM25 reads a few postings of
    the long lists by binary search): without it each page fault reads ahead as far as the disk's
    read-ahead setting (8 MB on the bench machine), which had a long-running reader's cache holding
    every BM25 file whole."""
    import mmap

    for a in arrays:
        m = getattr(a, "_mmap", None)
        if m is not None and hasattr(m, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            try:
                m.madvise(mmap.MADV_RANDOM)
            except OSError:
                pass


def add_term_max(index_dir: Path, nums: list[int]) -> None:
    """Give segments written before 0.4.1 their ``termmax.npy`` (each BM25 term's highest score,
    what pruning needs); derived from the segment's own lists, written atomically."""
    for num in nums:
        d = seg_dir(index_dir, num)
        if (d / "termmax.npy").is_file() or not (d / "data.csc.index.npy").is_file():
            continue
        tm = bm25.term_max(np.load(d / "data.csc.index.npy", mmap_mode="r"), np.load(d / "indptr.csc.index.npy"))
        tmp = d / f"termmax.tmp-{os.getpid()}.npy"
        np.save(tmp, tm)
        os.replace(tmp, d / "termmax.npy")


def _damaged(what, e: Exception, detail: int = 0) -> IndexProblem:
    """The one line for a damaged index file or segment, with the remedy."""
    why = f"{type(e).__name__}: {str(e)[:detail]}" if detail else type(e).__name__
    return IndexProblem(f"{what} is damaged ({why}); run `imr index --rebuild RECORDS`")


class Columns(Mapping):
    """An .npz of the index's columns (facets of a segment, items), each read on first use (a
    filter reads two or three of a segment's ~30: loading all of them took 0.23 s of `imr ask` at
    16 segments)."""

    def __init__(self, path: Path):
        self.path, self._got = path, {}
        try:
            self._z = np.load(path, allow_pickle=False)
        except Exception as e:
            raise _damaged(path, e) from None

    def __getitem__(self, k: str) -> np.ndarray:
        if k not in self._got:
            if k not in self._z.files:
                raise KeyError(k)
            try:
                self._got[k] = self._z[k]
            except Exception as e:
                raise _damaged(self.path, e) from None
        return self._got[k]

    def __iter__(self):
        return iter(self._z.files)

    def __len__(self) -> int:
        return len(self._z.files)

    def close(self) -> None:
        self._z.close()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """An .npz of the index (facet or item columns), every column read; damage is one line with the remedy."""
    cols = Columns(path)
    try:
        return dict(cols)
    finally:
        cols.close()


def build_ivf(vecs: np.ndarray, path: Path) -> dict:
    """faiss IVF over ``vecs`` (float16, rows are positions), its codes the float16 vectors."""
    import faiss

    n, d = vecs.shape
    nlist, nprobe = ivf_shape(n)
    ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_fp16,
                                        faiss.METRIC_INNER_PRODUCT, False)  # not residuals: the vectors as they are
    sample = np.sort(np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False))
    ivf.train(np.asarray(vecs[sample], dtype=np.float32))
    for s in range(0, n, 50_000):
        ivf.add(np.asarray(vecs[s:s + 50_000], dtype=np.float32))
    # where each vector sits, saved with the index (8 bytes a vector, loaded into memory): a narrow
    # filter reads only its vectors (building it at query time pulled 0.9 GB of pages in at 3.5M)
    ivf.make_direct_map()
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
            _random_access(self.bm.scores["data"], self.bm.scores["indices"])
            n, dim = self.meta["chunks"], self.meta["dim"]
            self.ivf = bool(self.meta["ivf"])
            self.dense_ok = bool(vectors and dim)
            # a small segment's vectors (a large one's are in its lists)
            self.vecs = np.memmap(d / "vectors.f16", dtype=np.float16, mode="r", shape=(n, dim)) \
                if self.dense_ok and not self.ivf else None
            if len(self.rowids) != n or self.bm.scores["num_docs"] != n:
                raise ValueError("its files do not agree on the number of passages")
            for need in ["facets.npz"] + (["ivf.faiss"] if self.dense_ok and self.ivf else []):
                if not (d / need).is_file():
                    raise FileNotFoundError(need)
        except Exception as e:  # a deleted or truncated file
            raise _damaged(f"the index segment {d}", e, 100) from None
        if self.bm.nonoccurrence_array is not None:  # only the BM25 variants the writer uses are pruned exactly
            raise IndexProblem(f"the index segment {d} was written with an unknown BM25 variant; run `imr index --rebuild RECORDS`")
        self._facets: Columns | None = None
        self._search = None
        self._lists: tuple | None = None  # each passage's inverted list and the lists' sizes, read on first use
        self._tmax = None

    def __len__(self) -> int:
        return len(self.rowids)

    def server_keys(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Each passage's vector key and list on the Chroma server, if the writer kept them here."""
        if not (self.dir / KEYS_FILE).is_file():
            return None
        return np.load(self.dir / KEYS_FILE, mmap_mode="r"), np.load(self.dir / LISTS_FILE, mmap_mode="r")

    def facets(self) -> Columns:
        if self._facets is None:
            self._facets = Columns(self.dir / "facets.npz")
        return self._facets

    def lexical(self, tokens: list[str], n: int, mask: np.ndarray | None) -> Scored:
        """Best ``n`` by BM25 among the passages ``mask`` allows (all without one), exact."""
        vocab, cols = self.bm.vocab_dict, len(self.bm.scores["indptr"]) - 1
        # (bm25s keeps "" in its vocabulary with no column of its own)
        ids, counts = np.unique(np.asarray([vocab[t] for t in tokens if t and vocab.get(t, cols) < cols], dtype=np.int64),
                                return_counts=True)
        if not len(ids) or not min(n, len(self)):
            return Scored(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))
        sc = self.bm.scores
        scores, pos = bm25.top_n(sc["data"], sc["indices"], sc["indptr"], len(self), ids, counts.astype(np.float32),
                                 self._term_max(ids), n, mask)
        return Scored(scores, pos)

    def _term_max(self, ids: np.ndarray) -> np.ndarray:
        """Each term's highest score: written with the segment; for a segment written before that,
        read from its list once."""
        if self._tmax is None:
            f = self.dir / "termmax.npy"
            try:
                self._tmax = np.load(f) if f.is_file() else {}
                if isinstance(self._tmax, np.ndarray) and self._tmax.shape != (len(self.bm.scores["indptr"]) - 1,):
                    raise ValueError("not one score a term")
            except Exception as e:
                raise _damaged(f"the index segment {self.dir}", e, 80) from None
        if isinstance(self._tmax, np.ndarray):
            return self._tmax[ids]
        ptr, known = self.bm.scores["indptr"], self._tmax
        out = []
        for t in ids.tolist():
            if t not in known:  # (two threads may both read it: the same value)
                s, e = int(ptr[t]), int(ptr[t + 1])
                known[t] = float(np.max(self.bm.scores["data"][s:e])) if e > s else 0.0
            out.append(known[t])
        return np.asarray(out, dtype=np.float32)

    def _index(self):
        """The faiss index: the IVF file (memory-mapped), or for a small segment its float16 vectors."""
        if self._search is None:
            import faiss

            if self.ivf:
                try:
                    # the lists mapped in place (IO_FLAG_MMAP reads them through faiss's on-disk lists,
                    # which took 1.9 ms a segment for what this does in 0.3 ms)
                    ix = faiss.read_index(str(self.dir / "ivf.faiss"), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
                except Exception as e:
                    raise _damaged(f"the index segment {self.dir}", e, 80) from None
                if ix.ntotal != len(self):
                    raise IndexProblem(f"the index segment {self.dir} is damaged (its lists hold {ix.ntotal} of "
                                       f"{len(self)} passages); run `imr index --rebuild RECORDS`")
                ix.nprobe = self.meta["ivf"]["nprobe"]
            else:
                ix = faiss.IndexScalarQuantizer(self.meta["dim"], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
                for s in range(0, len(self), 50_000):
                    ix.add(np.asarray(self.vecs[s:s + 50_000], dtype=np.float32))
            self._search = ix
        return self._search

    def vectors(self) -> np.ndarray:
        """Every vector of the segment in position order, float16 (a large segment's read from its lists)."""
        if not self.ivf:
            return np.asarray(self.vecs)
        import faiss

        inv = self._index().invlists
        out = np.zeros((len(self), self.meta["dim"]), dtype=np.float16)
        for lst in range(inv.nlist):
            k = inv.list_size(lst)
            if k:
                ids = faiss.rev_swig_ptr(inv.get_ids(lst), k).astype(np.int64)
                codes = faiss.rev_swig_ptr(inv.get_codes(lst), k * inv.code_size)
                out[ids] = np.frombuffer(codes.tobytes(), dtype=np.float16).reshape(k, -1)
        return out

    def _exact(self, qv: np.ndarray, pos: np.ndarray, n: int) -> Scored:
        """Exact scores of ``pos``, read from the lists through a map of where each vector sits
        (scanning every list with a selector read the whole file: 1.5 GB of pages, 180 ms at 3.5M)."""
        import faiss

        ix = self._index()
        if ix.direct_map.type == faiss.DirectMap.NoMap:  # a segment written without its map
            ix.make_direct_map()
        s = ix.reconstruct_batch(pos) @ qv
        top = np.argsort(-s, kind="stable")[:n]
        return Scored(s[top], pos[top])

    def _list_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(the inverted list of each passage, the size of each list), from the IVF's map of where
        each vector sits; read once a segment (4 bytes a passage)."""
        if self._lists is None:
            import faiss

            ix = self._index()
            if ix.direct_map.type != faiss.DirectMap.Array:  # a segment written without its map
                ix.make_direct_map()
            list_of = (faiss.vector_to_array(ix.direct_map.array) >> 32).astype(np.int32)
            self._lists = (list_of, np.bincount(list_of, minlength=ix.nlist))
        return self._lists

    def _scan_lists(self, qv: np.ndarray, lists: np.ndarray, n: int, sel) -> Scored:
        """Best ``n`` the selector allows in ``lists``, every vector of those lists scored."""
        import faiss

        ix = self._index()
        x = np.ascontiguousarray(qv[None, :], dtype=np.float32)
        keys = np.ascontiguousarray(lists[None, :], dtype=np.int64)
        coarse = np.ascontiguousarray((ix.quantizer.reconstruct_batch(lists) @ qv)[None, :], dtype=np.float32)
        D, I = np.empty((1, n), np.float32), np.empty((1, n), np.int64)
        # the C++ call: faiss's Python wrapper of search_preassigned takes no search parameters
        ix.search_preassigned_c(1, faiss.swig_ptr(x), n, faiss.swig_ptr(keys), faiss.swig_ptr(coarse), faiss.swig_ptr(D),
                                faiss.swig_ptr(I), False, faiss.SearchParametersIVF(sel=sel, nprobe=len(lists)))
        keep = I[0] >= 0
        return Scored(D[0][keep], I[0][keep])

    def _top(self, qv: np.ndarray, n: int, params=None) -> Scored:
        scores, got = self._index().search(qv[None, :].astype(np.float32), min(n, len(self)), params=params)
        keep = got[0] >= 0
        return Scored(scores[0][keep], got[0][keep].astype(np.int64))

    def dense(self, qv: np.ndarray, n: int, mask: np.ndarray | None) -> Scored:
        """Best ``n`` by cosine, exact at float16 among what is probed; with ``mask``, among the
        chunks it keeps."""
        import faiss

        if not self.dense_ok or not len(self):
            return Scored(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))
        if mask is None:
            return self._top(qv, n)
        count = int(np.count_nonzero(mask))  # (the positions themselves only where they are used)
        if not count:
            return Scored(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))
        bits = np.packbits(mask if mask.dtype == bool else mask.astype(bool), bitorder="little")
        sel = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
        if not self.ivf:
            return self._top(qv, n, faiss.SearchParameters(sel=sel))
        nlist, nprobe = self.meta["ivf"]["nlist"], self.meta["ivf"]["nprobe"]
        if count <= EXACT_FEW:  # a narrow filter: the allowed vectors themselves, scored exactly
            return self._exact(qv, np.flatnonzero(mask), n)
        # A filter on what the embedded context names (category, decision) keeps passages that sit
        # in a few lists: scanning those lists whole, with the filter, scores every allowed passage
        # (exact) from contiguous pages. One category at 250k passages: 50 lists, 0.9 ms; reading
        # its 13.7k vectors one by one took 10.9 ms. The lists hold at least the allowed passages, so
        # a filter allowing more than the budget never qualifies (a broad one skips finding its lists).
        budget = SCAN_LISTS_MAX * len(self) * nprobe / nlist
        allowed = np.flatnonzero(mask) if count <= max(budget, EXACT_MAX) else None
        if count <= budget:
            list_of, sizes = self._list_map()
            lists = np.flatnonzero(np.bincount(list_of[allowed], minlength=len(sizes)))
            if sizes[lists].sum() <= budget:
                return self._scan_lists(qv, lists, min(n, count), sel)
        if count <= EXACT_MAX:
            return self._exact(qv, allowed, n)
        # The lists nearest a question can hold few of the allowed passages (the embedded context
        # names the decision, so lists gather by it): probe four times more lists until n are
        # found, up to all of them.
        while True:
            got = self._top(qv, n, faiss.SearchParametersIVF(sel=sel, nprobe=nprobe))
            if len(got.pos) >= min(n, count) or nprobe >= nlist:
                return got
            nprobe = min(nlist, nprobe * 4)


def merged(parts: list[tuple["Segment", Scored]], n: int) -> list[tuple[float, int, int]]:
    """(score, rowid, segment number) of the best ``n`` over every segment's results."""
    out = []
    for seg, sc in parts:
        if len(sc.pos):
            rids = seg.rowids[sc.pos]
            out += zip(sc.scores.tolist(), rids.tolist(), [seg.num] * len(rids))
    out.sort(key=lambda t: (-t[0], t[1]))
    return out[:n]

