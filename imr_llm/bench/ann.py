"""Approximate nearest-neighbour structures for dense retrieval at scale (issue 14).

    python -m imr_llm.bench.ann --n 1000000 --queries 300 --out /tmp/ann.json

Vectors are ~200-word passages of synthetic letters (from the clinical summary on: the boilerplate
before it is not indexed by imr) embedded with WordLlama, cached in /tmp/ann-vecs-N.npy (a larger
cache is sliced, a smaller one extended). Queries: short questions and held-out passages. Each
candidate is built here, written to disk, then loaded and queried single-threaded in a fresh
subprocess, so its resident memory is measured alone. Recall@10 is against exact float32 search,
strict and tie-aware (the templated corpus has many near-duplicate passages).
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads BLAS
    os.environ.setdefault(_v, "1")

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

D = 256
WORK = Path("/tmp/ann-work")
_WS = re.compile(r"\s+")


# ---------------------------------------------------------------- vectors and queries

def passages(n: int, seed0: int = 0, words: int = 200) -> list[str]:
    """``n`` passages of consecutive synthetic letters (seed0, seed0+1, ...), deterministic."""
    from . import corpus

    out, s = [], seed0
    while len(out) < n:
        text = corpus.build(s)[0]
        s += 1
        i = text.find("CLINICAL CASE SUMMARY")
        w = _WS.sub(" ", text[max(i, 0):]).split()
        out += [" ".join(w[j:j + words]) for j in range(0, len(w), words) if len(w) - j >= 20]
    return out[:n]


def questions(n: int, seed: int = 1) -> list[str]:
    """Short questions: request types x reasons x phrasings."""
    req = ["physical therapy", "post-operative physical therapy", "acupuncture", "chiropractic manipulation", "Norco",
           "opioids", "naproxen", "NSAIDs", "compounded topical cream", "lidocaine topical", "MRI of the lumbar spine",
           "MRI of the knee", "cervical MRI", "lumbar epidural steroid injection", "facet blocks", "shoulder arthroscopy",
           "TENS unit", "cognitive behavioral therapy", "psychotherapy", "additional PT visits", "home exercise program"]
    why = ["after fusion", "after lumbar fusion", "after ACDF", "without urine drug screen", "without a pain contract",
           "without functional improvement", "exceeding guideline visits", "without radiculopathy on exam",
           "with no objective neurologic findings", "for chronic low back pain", "for carpal tunnel syndrome",
           "for depression", "after knee meniscectomy", "for cervical radiculopathy", "for myofascial pain",
           "when records are insufficient", "without an acute flare-up", "for long-term use", "reviewer outside California"]
    form = ["why was {r} denied {w}", "{r} {w}", "was {r} overturned {w}", "{r} upheld {w}", "MTUS guideline for {r} {w}",
            "is {r} medically necessary {w}", "denial of {r} {w}", "{r} approved {w}?"]
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(rng.choice(form).format(r=rng.choice(req), w=rng.choice(why)))
    return sorted(out)[:n]


def embed(texts: list[str], log=print) -> np.ndarray:
    from ..providers import embed as emb

    e, out, t = emb.make("wordllama", True), [], time.time()
    for i in range(0, len(texts), 20000):
        out.append(e(texts[i:i + 20000]))
        if len(texts) > 20000:
            log(f"  embedded {i + len(out[-1]):,}/{len(texts):,} ({time.time() - t:.0f}s)")
    return np.concatenate(out).astype(np.float32)


def vectors(n: int, log=print) -> Path:
    """Path of an (n, 256) float32 .npy of passage vectors, made or reused from /tmp/ann-vecs-*.npy."""
    path = Path(f"/tmp/ann-vecs-{n}.npy")
    if path.exists():
        return path
    caches = sorted((int(p.stem[9:]), p) for p in Path("/tmp").glob("ann-vecs-*.npy") if p.stem[9:].isdigit())
    big = [p for m, p in caches if m > n]
    if big:
        v = np.load(big[0], mmap_mode="r")[:n]
        have = v
    else:
        have = np.load(caches[-1][1]) if caches else np.zeros((0, D), np.float32)
        log(f"generating {n:,} passages ({len(have):,} cached)")
        t = time.time()
        texts = passages(n)[len(have):]
        log(f"  texts {time.time() - t:.0f}s")
        v = np.concatenate([have, embed(texts, log)])
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, np.ascontiguousarray(v, dtype=np.float32))
    tmp.rename(path)
    return path


def scan(store, Q: np.ndarray, k: int = 10, scale=None, rows=None, block: int = 32768):
    """Exact top-k (scores, ids) of queries ``Q`` (m, d) over ``store`` (float32, float16, or int8
    with per-dimension ``scale``), a block at a time so a memory-mapped store is converted piecewise.
    ``rows`` restricts the scan to those row ids (pre-filter)."""
    Qs = (Q * scale if scale is not None else Q).astype(np.float32)
    m = len(Q)
    bs, bi = np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
    n = len(store) if rows is None else len(rows)
    for a in range(0, n, block):
        ids = np.arange(a, min(a + block, n)) if rows is None else rows[a:a + block]
        blk = store[a:a + block] if rows is None else store[ids]
        s = Qs @ blk.astype(np.float32, copy=False).T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([bs, np.take_along_axis(s, part, 1)], 1)
        ci = np.concatenate([bi, ids[part]], 1)
        o = np.argsort(-cs, axis=1)[:, :k]
        bs, bi = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
    return bs, bi


# ---------------------------------------------------------------- builders (this process)

def _sample(V, n: int, seed: int = 0) -> np.ndarray:
    idx = np.sort(np.random.default_rng(seed).choice(len(V), min(n, len(V)), replace=False))
    return np.ascontiguousarray(V[idx])


def build_stores(V, out: Path) -> dict:
    """float16 and int8 copies (symmetric int8, one scale per dimension), written block-wise."""
    t = time.time()
    f16 = np.lib.format.open_memmap(out / "vecs-f16.npy", "w+", np.float16, V.shape)
    for a in range(0, len(V), 65536):
        f16[a:a + 65536] = V[a:a + 65536]
    f16.flush()
    t16, t = time.time() - t, time.time()
    amax = np.zeros(D, np.float32)
    for a in range(0, len(V), 65536):
        amax = np.maximum(amax, np.abs(V[a:a + 65536]).max(0))
    scale = np.maximum(amax, 1e-9) / 127
    np.save(out / "scale.npy", scale)
    i8 = np.lib.format.open_memmap(out / "vecs-i8.npy", "w+", np.int8, V.shape)
    for a in range(0, len(V), 65536):
        i8[a:a + 65536] = np.clip(np.rint(V[a:a + 65536] / scale), -127, 127)
    i8.flush()
    return {"f16": t16, "i8": time.time() - t}


def build_faiss(kind: str, V, path: Path, quantizers: dict) -> None:
    import faiss

    IP = faiss.METRIC_INNER_PRODUCT
    if kind.startswith("hnsw"):  # hnsw-flat-M32, hnsw-sq8-M16
        _, q, m = kind.split("-")
        m = int(m[1:])
        ix = faiss.IndexHNSWFlat(D, m, IP) if q == "flat" else faiss.IndexHNSWSQ(D, faiss.ScalarQuantizer.QT_8bit, m, IP)
        ix.hnsw.efConstruction = 40
        if not ix.is_trained:
            ix.train(_sample(V, 100_000))
    else:  # ivf-flat-1024, ivf-sq8-4096, ivf-pq64-4096
        _, q, nlist = kind.split("-")
        nlist = int(nlist)
        if nlist not in quantizers:  # one coarse quantizer per nlist, shared by the IVF variants
            t = time.time()
            km = faiss.Clustering(D, nlist)
            km.niter, km.spherical, km.max_points_per_centroid = 10, True, 10**9
            cq = faiss.IndexFlatIP(D)
            km.train(_sample(V, 32 * nlist), cq)
            quantizers[nlist] = (cq, time.time() - t)
        cq = quantizers[nlist][0]
        if q == "flat":
            ix = faiss.IndexIVFFlat(cq, D, nlist, IP)
        elif q == "sq8":
            ix = faiss.IndexIVFScalarQuantizer(cq, D, nlist, faiss.ScalarQuantizer.QT_8bit, IP)
        else:
            ix = faiss.IndexIVFPQ(cq, D, nlist, int(q[2:]), 8, IP)
            ix.pq.cp.niter = 10  # PQ k-means on 4-dim sub-vectors is slow single-threaded; 10 iterations suffice
        if not ix.is_trained:
            ix.train(_sample(V, 65536))
    for a in range(0, len(V), 100_000):
        ix.add(np.ascontiguousarray(V[a:a + 100_000]))
    faiss.write_index(ix, str(path))


def build_usearch(kind: str, V, path: Path) -> None:
    from usearch.index import Index

    ix = Index(ndim=D, metric="cos", dtype=kind.split("-")[1], connectivity=16, expansion_add=128)
    ix.add(np.arange(len(V)), np.asarray(V), threads=1)
    ix.save(str(path))


def build_chroma(V, path: Path) -> None:
    import chromadb
    from chromadb.api.client import SharedSystemClient
    from chromadb.config import Settings

    c = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    col = c.create_collection("ann", metadata={"hnsw:space": "cosine", "hnsw:num_threads": 1})
    for a in range(0, len(V), 5000):
        col.upsert(ids=[str(i) for i in range(a, min(a + 5000, len(V)))], embeddings=np.ascontiguousarray(V[a:a + 5000]))
    del col, c
    SharedSystemClient.clear_system_cache()


# ---------------------------------------------------------------- worker (fresh process: load, query, measure)

def _mem() -> tuple[float, float]:
    """(RSS, RSS less file-backed pages) in MB: memory-mapped vectors count only in the first."""
    rss, shared = (int(x) * os.sysconf("SC_PAGE_SIZE") / 2**20 for x in Path("/proc/self/statm").read_text().split()[1:3])
    return rss, rss - shared


def worker(spec: dict) -> dict:
    """Load one structure, run its settings over all queries one at a time, return the measures."""
    import faiss

    faiss.omp_set_num_threads(1)
    kind, n = spec["kind"], spec["n"]
    g = np.load(spec["gt"])
    Q, nq = g["Q"], int(g["nq"])
    V = np.load(spec["vecs"], mmap_mode="r")
    stores = {"f32": (V, None), "f16": (np.load(WORK / "vecs-f16.npy", mmap_mode="r"), None),
              "i8": (np.load(WORK / "vecs-i8.npy", mmap_mode="r"), np.load(WORK / "scale.npy"))}
    allowed = {f: g[f"rows_{f}"] for f in ("narrow", "broad")}
    if kind == "chroma":
        import chromadb
        from chromadb.config import Settings
    else:
        from usearch.index import Index
    r0 = _mem()
    t = time.time()
    if kind.startswith("exact"):
        ix = stores[kind.split("-")[1]]
    elif kind == "chroma":
        ix = chromadb.PersistentClient(path=spec["path"], settings=Settings(anonymized_telemetry=False)).get_collection("ann")
    elif kind.startswith("usearch"):
        ix = Index.restore(spec["path"])
    else:
        ix = faiss.read_index(spec["path"])
    load_s, r1 = time.time() - t, _mem()
    sels = {}  # the allowed set as a faiss bitmap, made once (the bitmap must outlive the selector)
    for f, rows in allowed.items():
        bm = np.zeros(n, bool)
        bm[rows] = True
        bm = np.packbits(bm, bitorder="little")
        sels[f] = (bm, faiss.IDSelectorBitmap(n, faiss.swig_ptr(bm)))

    def search(q: np.ndarray, st: dict) -> np.ndarray:
        k = st.get("rescore", 0) or 10
        f = st.get("filter")
        if kind.startswith("exact"):
            return scan(ix[0], q[None], k, ix[1], allowed[f] if f else None)[1][0]
        if kind == "chroma":
            r = ix.query(query_embeddings=[q], n_results=k, include=["distances"],
                         ids=[str(i) for i in allowed[f]] if f else None)
            return np.array([int(i) for i in r["ids"][0]], np.int64)
        if kind.startswith("usearch"):
            ix.expansion_search = max(st["ef"], k)
            return np.asarray(ix.search(q, k, threads=1).keys, np.int64)
        if "ef" in st:
            p = faiss.SearchParametersHNSW()
            p.efSearch = max(st["ef"], k)
        else:
            p = faiss.SearchParametersIVF()
            p.nprobe = st["nprobe"]
        if f:
            p.sel = sels[f][1]
        return ix.search(q[None], k, params=p)[1][0]

    def rescored(q: np.ndarray, st: dict) -> np.ndarray:
        ids = search(q, st)
        if not st.get("rescore"):
            return ids[:10]
        ids = ids[ids >= 0]
        store, scale = stores[st["store"]]
        s = store[np.sort(ids)].astype(np.float32) @ (q * scale if scale is not None else q)
        return np.sort(ids)[np.argsort(-s)[:10]]

    sub = np.r_[0:min(spec.get("limit", nq), nq), nq:nq + min(spec.get("limit", nq), len(Q) - nq)]
    rows = []
    for st in spec["settings"]:
        f = st.get("filter") or "all"
        gs, gi = g[f"gs_{f}"], g[f"gi_{f}"]
        t = time.perf_counter()
        rescored(Q[sub[0]], st)  # warm-up (first query may load or map the index)
        first_ms = (time.perf_counter() - t) * 1e3
        lat, got = [], []
        for i in sub:
            t = time.perf_counter()
            got.append(rescored(Q[i], st))
            lat.append((time.perf_counter() - t) * 1e3)
        rec = {}
        for name, part in (("q", sub < nq), ("p", sub >= nq)):
            strict, tie, tie3 = [], [], []
            for i, ids in zip(sub[part], [x for x, m in zip(got, part) if m]):
                ok = ids[ids >= 0]
                strict.append(len(set(ok.tolist()) & set(gi[i].tolist())) / 10)
                ex = V[np.sort(ok)] @ Q[i] if len(ok) else np.zeros(0)
                tie.append(float((ex >= gs[i, 9] - 1e-4).sum()) / 10)
                tie3.append(float((ex >= gs[i, 9] - 1e-3).sum()) / 10)  # looser: 10th and 11th best are often <1e-3 apart
            rec.update({f"r_{name}": float(np.mean(strict)), f"rt_{name}": float(np.mean(tie)), f"rt3_{name}": float(np.mean(tie3))})
        rows.append({"setting": st["label"], "filter": st.get("filter"), "nq": len(sub), "first_ms": first_ms,
                     "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                     "store": st.get("store") if st.get("rescore") else None, **rec})
    r2 = _mem()
    return {"load_s": load_s, "rss_load_mb": r1[0] - r0[0], "rss_mb": r2[0] - r0[0], "anon_mb": r2[1] - r0[1], "rows": rows}


# ---------------------------------------------------------------- candidates and driver

def _s(label: str, **kw) -> dict:
    return {"label": label, **kw}


def candidates(n: int) -> list[tuple[str, list[dict]]]:
    """(kind, settings). Filters go where they matter: pre-filter exact scans and the quantized ANNs."""
    sq = int(2 ** round(np.log2(np.sqrt(n))))  # nlist ~ sqrt(N) and 4x that
    pre = [_s(f"{f} pre-filter", filter=f) for f in ("narrow", "broad")]
    out = [("exact-f32", [_s("scan")] + pre), ("exact-f16", [_s("scan")]), ("exact-i8", [_s("scan")] + pre[:1]),
           ("chroma", [_s("ef=100 (default)"), _s("narrow ids=", filter="narrow")]),
           ("hnsw-flat-M32", [_s(f"ef={e}", ef=e) for e in (32, 64, 128, 256)])]
    for m in (16, 32):
        out.append((f"hnsw-sq8-M{m}", [_s(f"ef={e}", ef=e) for e in (32, 64, 128)]
                    + [_s(f"ef=128 r100:{st}", ef=128, rescore=100, store=st) for st in ("f32", "f16")]
                    + [_s(f"ef=128 {f}", ef=128, filter=f) for f in ("narrow", "broad")]))
    for nl in (sq, 4 * sq):
        out.append((f"ivf-flat-{nl}", [_s(f"nprobe={p}", nprobe=p) for p in (8, 16, 32, 64)]))
        out.append((f"ivf-sq8-{nl}", [_s(f"nprobe={p}", nprobe=p) for p in (8, 16, 32, 64, 128, 256)]
                    + [_s(f"nprobe={p} r100:{st}", nprobe=p, rescore=100, store=st) for p in (32, 64, 128, 256) for st in ("f32", "f16")]
                    + [_s(f"nprobe={p} {f}", nprobe=p, filter=f) for p in (32, 64) for f in ("narrow", "broad")]))
        out.append((f"ivf-pq64-{nl}", [_s(f"nprobe={p}", nprobe=p) for p in (16, 32, 64)]
                    + [_s(f"nprobe={p} r{r}:{st}", nprobe=p, rescore=r, store=st)
                       for p, r, st in ((32, 100, "f32"), (64, 100, "f32"), (64, 100, "f16"), (64, 100, "i8"), (64, 200, "i8"))]))
    for dt in ("f16", "i8"):
        out.append((f"usearch-{dt}", [_s(f"ef={e}", ef=e) for e in (32, 64, 128)]
                    + ([_s(f"ef=128 r100:{st}", ef=128, rescore=100, store=st) for st in ("f32", "f16")] if dt == "i8" else [])))
    return out


def ground_truth(V, Q: np.ndarray, nq: int, path: Path) -> None:
    """Exact float32 top-10 of every query, unfiltered and under the narrow (2%) and broad (85%) filters."""
    rng = np.random.default_rng(14)
    gt = {"Q": Q, "nq": nq}
    for f, share in (("all", None), ("narrow", 0.02), ("broad", 0.85)):
        rows = None if share is None else np.flatnonzero(rng.random(len(V)) < share)
        if rows is not None:
            gt[f"rows_{f}"] = rows
        gt[f"gs_{f}"], gt[f"gi_{f}"] = scan(V, Q, 10, rows=rows, block=65536)
    np.savez(path, **gt)


def _size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=300, help="questions, and as many held-out passages")
    ap.add_argument("--only", default="", help="comma-separated kind prefixes (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated kind prefixes to leave out")
    ap.add_argument("--chroma-n", type=int, default=0, help="build Chroma over the first N vectors only (0 = all)")
    ap.add_argument("--slow", type=int, default=50, help="queries per set for the exact scans")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    import faiss

    faiss.omp_set_num_threads(1)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    vpath = vectors(a.n, log)
    V = np.load(vpath, mmap_mode="r")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    qs = embed(questions(a.queries))
    Q = np.concatenate([qs, embed(passages(a.queries, seed0=10**8))])
    t = time.time()
    ground_truth(V, Q, len(qs), WORK / "gt.npz")
    log(f"ground truth {time.time() - t:.0f}s; building float16/int8 stores")
    store_s = build_stores(V, WORK)
    sel = lambda k, opt: any(k.startswith(p) for p in opt.split(",") if p)  # noqa: E731
    results, quantizers = [], {}
    for kind, settings in candidates(a.n):
        if (a.only and not sel(kind, a.only)) or sel(kind, a.skip):
            continue
        n = min(a.n, a.chroma_n or a.n) if kind == "chroma" else a.n
        path = WORK / kind
        vp = vpath if n == a.n else vectors(n, log)
        t = time.time()
        if kind.startswith("exact"):
            path = vpath if kind == "exact-f32" else WORK / f"vecs-{kind[6:]}.npy"
        elif kind == "chroma":
            build_chroma(V[:n], path)
        elif kind.startswith("usearch"):
            build_usearch(kind, V, path)
        else:
            build_faiss(kind, V, path, quantizers)
        build_s = time.time() - t + store_s.get(kind[6:], 0)
        train_s = quantizers.get(int(kind.rsplit("-", 1)[1]), (0, 0))[1] if kind.startswith("ivf") else 0
        log(f"{kind}: built in {build_s:.0f}s, querying")
        spec = {"kind": kind, "path": str(path), "n": n, "vecs": str(vp), "settings": settings, "gt": str(WORK / "gt.npz"),
                **({"limit": a.slow} if kind.startswith("exact") else {})}
        if n != a.n:  # a smaller Chroma is scored against exact search over its own rows
            spec["gt"] = str(WORK / f"gt-{n}.npz")
            ground_truth(V[:n], Q, len(qs), Path(spec["gt"]))
        r = subprocess.run([sys.executable, "-m", "imr_llm.bench.ann", "--worker", json.dumps(spec)],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if r.returncode:
            log(r.stderr[-2000:])
            continue
        w = json.loads(r.stdout.strip().splitlines()[-1])
        size = _size(path)
        for row in w.pop("rows"):
            extra = _size(WORK / f"vecs-{row['store']}.npy") if row["store"] == "f16" or row["store"] == "i8" else \
                (_size(vpath) if row["store"] == "f32" else 0)
            results.append({"kind": kind, "n": n, "build_s": build_s, "train_s": train_s, "bytes_per_vec": size / n,
                            "rescore_bytes_per_vec": extra / n, **w, **row})
            print(_fmt(results[-1]), flush=True)
        if not kind.startswith("exact"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    print("\n" + HEADER)
    for r in results:
        print(_fmt(r))
    if a.out:
        a.out.write_text(json.dumps({"n": a.n, "queries": a.queries, "results": results}, indent=1))


HEADER = (f"{'structure':<16}{'setting':<22}{'N':>8}{'build s':>8}{'B/vec':>7}{'+resc':>6}{'RSS MB':>8}{'anon':>7}"
          f"{'p50 ms':>8}{'p95 ms':>8}{'R@10 q':>8}{'tie q':>7}{'R@10 p':>8}{'tie p':>7}")


def _fmt(r: dict) -> str:
    return (f"{r['kind']:<16}{r['setting']:<22}{r['n']:>8}{r['build_s']:>8.0f}{r['bytes_per_vec']:>7.0f}"
            f"{r['rescore_bytes_per_vec']:>6.0f}{r['rss_mb']:>8.0f}{r['anon_mb']:>7.0f}{r['p50_ms']:>8.2f}{r['p95_ms']:>8.2f}"
            f"{r['r_q']:>8.3f}{r['rt_q']:>7.3f}{r['r_p']:>8.3f}{r['rt_p']:>7.3f}")


if __name__ == "__main__":
    main()
