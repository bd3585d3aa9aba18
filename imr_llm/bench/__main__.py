"""Benchmarks: ``python -m imr_llm.bench corpus|serve|run``.

    python -m imr_llm.bench corpus --n 100000 DIR        # deterministic synthetic letters
    python -m imr_llm.bench serve --latency 0.5          # loopback OpenAI-compatible server
    python -m imr_llm.bench run --n 100000 --out bench.json

``run`` prints a table and writes JSON; record results in BENCHMARKS.md with the command.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_children_seen = 0.0


def _children_cpu() -> float:
    """CPU of worker processes that ended since the last call (the loopback server is still running)."""
    global _children_seen
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    now = r.ru_utime + r.ru_stime
    d, _children_seen = now - _children_seen, now
    return d


def cmd_corpus(a) -> None:
    from .corpus import write_corpus

    t = time.monotonic()
    paths = write_corpus(Path(a.dir), a.n, a.seed)
    print(f"wrote {len(paths)} letters to {a.dir} in {time.monotonic() - t:.1f} s")


def cmd_serve(a) -> None:
    from .server import FakeOpenAI, ServerConfig

    srv = FakeOpenAI(ServerConfig(latency=a.latency, rate_limit=a.rate_limit, tokens_per_s=a.tokens_per_s)).start()
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


def bench_parse(corpus: list[Path]) -> dict:
    """One core: (a) read + normalise + layout parse (the target's scope), then (b) the whole offline
    pipeline: also the rules pass, grounding every value and building the record."""
    from ..extract.assemble import analyse, assemble
    from ..core.load import read_letter
    from ..core.segment import parse

    t0 = time.monotonic()
    for p in corpus:
        parse(read_letter(p).norm.text)
    layout_wall = time.monotonic() - t0
    t0, c0 = time.monotonic(), _cpu()
    for p in corpus:
        letter = read_letter(p)
        assemble(letter, analyse(letter))
    wall = time.monotonic() - t0
    n = len(corpus)
    return {"letters": n, "layout_letters_per_s": round(n / layout_wall, 1), "wall_s": round(wall, 2),
            "letters_per_s": round(n / wall, 1), "cpu_s": round(_cpu() - c0, 2)}


def _start_server(latency: float) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([sys.executable, "-m", "imr_llm.bench", "serve", "--latency", str(latency)],
                         stdout=subprocess.PIPE, text=True)
    url = p.stdout.readline().strip()
    return p, url


def _proc_cpu(pid: int | None) -> float:
    """CPU seconds used so far by another process (the loopback server), from /proc."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0


def bench_extract(corpus: list[Path], concurrency: int, latency: float, data_dir: Path, url: str, workers: int = 1,
                  server_pid: int | None = None) -> dict:
    """Letters/s through real HTTP + openai + instructor against the loopback server. With workers > 1
    the letters are sharded over processes (``imr extract --workers``); their start-up is in the time."""
    from ..run.runner import Extractor, run, run_parallel
    from ..config import Settings
    from ..providers.llm import Provider

    s = Settings(provider="compatible", model="bench", base_url=url, api_key="x", data_dir=data_dir, max_retries=2, timeout=30)
    ex = Extractor(s, Provider(s))
    # warm up imports, schema caches and connections on other letters, so the rate is steady-state
    asyncio.run(run([str(p) for p in corpus[-min(len(corpus) // 4, 16):]], Extractor(s, Provider(s), use_cache=False), None, None, 8))
    _children_cpu()
    t0, c0, s0 = time.monotonic(), _cpu(), _proc_cpu(server_pid)
    if workers > 1:
        totals = run_parallel([str(p) for p in corpus], s, data_dir / "out.jsonl", None, concurrency, workers)
    else:
        totals = asyncio.run(run([str(p) for p in corpus], ex, data_dir / "out.jsonl", None, concurrency))
    wall = time.monotonic() - t0
    cpu = _cpu() - c0 + _children_cpu()
    server_cpu = _proc_cpu(server_pid) - s0
    ex.cache.close()
    rate = totals.ok / wall
    ideal = concurrency / latency
    return {"concurrency": concurrency, "workers": workers, "letters": totals.ok, "failed": totals.failed, "wall_s": round(wall, 2),
            "letters_per_s": round(rate, 1), "ideal_letters_per_s": round(ideal, 1), "share_of_ideal": round(rate / ideal, 3),
            "tool_cpu_share": round(cpu / wall / (os.cpu_count() or 1), 3),
            "server_cpu_share": round(server_cpu / wall / (os.cpu_count() or 1), 3),
            "tool_cpu_ms_per_letter": round(cpu * 1000 / max(1, totals.ok), 2), "llm_calls": totals.usage.calls}


class RssSampler:
    """Samples the RSS of this process and each child (worker processes) once a second, so "memory
    flat" is shown as a curve over the run, not inferred from one peak."""

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _rss(pid: int | str) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _children(self) -> list[str]:
        kids: list[str] = []
        for task in Path("/proc/self/task").glob("*"):
            try:
                kids += (task / "children").read_text().split()
            except OSError:
                pass
        return kids

    def _loop(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(1.0):
            self.samples.append((time.monotonic() - t0, self._rss("self") + sum(self._rss(k) for k in self._children())))

    def __enter__(self) -> "RssSampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def summary(self) -> dict:
        """Total RSS (this process + children) at 10/25/50/75/100% of the run, and the peak."""
        if not self.samples:
            return {}
        v = [m for _, m in self.samples]
        at = {f"rss_mb_at_{q}pct": round(v[min(len(v) - 1, int(len(v) * q / 100))], 1) for q in (10, 25, 50, 75)}
        return {**at, "rss_mb_at_end": round(v[-1], 1), "rss_mb_peak": round(max(v), 1)}


def bench_rerun(corpus: list[Path], data_dir: Path, url: str, workers: int = 1, out: str = "rerun.jsonl") -> dict:
    from ..run.runner import Extractor, run, run_parallel
    from ..config import Settings
    from ..providers.llm import Provider

    s = Settings(provider="compatible", model="bench", base_url=url, api_key="x", data_dir=data_dir)
    t0 = time.monotonic()
    with RssSampler() as rss:
        if workers > 1:
            totals = run_parallel([str(p) for p in corpus], s, data_dir / out, None, 64, workers)
        else:
            totals = asyncio.run(run([str(p) for p in corpus], Extractor(s, Provider(s)), data_dir / out, None, 64))
    wall = time.monotonic() - t0
    return {"letters": totals.ok, "failed": totals.failed, "llm_calls": totals.usage.calls, "from_cache": totals.cached,
            "wall_s": round(wall, 2), "letters_per_s": round(totals.ok / wall, 1), "workers": workers, **rss.summary()}


def bench_tokens(suite: Path) -> dict:
    """Input/output tokens per letter: our call vs the naive one (whole letter + full record schema)."""
    from ..providers import tokens
    from ..extract.answers import response_model
    from ..extract.assemble import analyse, assemble
    from ..extract.prompts import build_messages
    from ..core.load import read_letter
    from .naive import NaiveRecord, naive_messages
    from .server import synthetic_arguments

    from instructor import openai_schema

    naive_schema = json.dumps(openai_schema(NaiveRecord).openai_schema)
    ours_in, ours_out, naive_in, naive_out, n = 0, 0, 0, 0, 0
    for p in sorted((suite / "letters").iterdir()):
        letter = read_letter(p)
        lay = analyse(letter)
        msgs, _ = build_messages(lay)
        # the tool definition as instructor sends it (Mode.TOOLS), for both
        schema = json.dumps(response_model(len(lay.items)).openai_schema)
        ours_in += sum(tokens.count(m["content"]) for m in msgs) + tokens.count(schema)
        ours_out += tokens.count(json.dumps(synthetic_arguments(msgs[-1]["content"])))
        # naive: the prompt of bench/naive.py, the whole letter and the record's content schema; its
        # output is the record's content fields as the layout parser filled them (a lower bound:
        # a model also fills the fields left empty here)
        naive_in += sum(tokens.count(m["content"]) for m in naive_messages(letter.text))
        naive_in += tokens.count(naive_schema)
        rec = assemble(letter, lay).model_dump(mode="json", include=set(NaiveRecord.model_fields))
        naive_out += tokens.count(json.dumps(rec))
        n += 1
    return {"letters": n, "ours_input_per_letter": ours_in // n, "naive_input_per_letter": naive_in // n,
            "input_ratio": round(ours_in / naive_in, 3), "ours_output_per_letter": ours_out // n,
            "naive_output_per_letter": naive_out // n, "output_ratio": round(ours_out / naive_out, 3)}


def bench_index(records: Path, data_dir: Path, queries: int = 200) -> dict:
    """``imr index --rebuild`` of a records file (worker processes, as the CLI runs it), with the
    resident memory of all processes sampled over the build."""
    from ..index.rebuild import rebuild

    t0 = time.monotonic()
    with RssSampler() as rss:
        idx, st = rebuild(data_dir, "wordllama", records, batch=2048)
    wall = time.monotonic() - t0
    idx.close()
    size = sum(f.stat().st_size for f in (data_dir / "index").rglob("*") if f.is_file())
    return {"letters": st["letters"], "chunks": st["chunks"], "segments": st["segments"], "index_wall_s": round(wall, 1),
            "chunks_per_s": round(st["chunks"] / wall, 1), "build_rss_mb": rss.summary(), "disk_mb": round(size / 1e6, 1),
            "bytes_per_letter": disk_breakdown(data_dir / "index", st["letters"])}


def bench_add(data_dir: Path, extra: Path) -> dict:
    """``imr index EXTRA.jsonl`` into the built index, as a user runs it (a new process): the time,
    and that no earlier segment was rewritten."""
    seg_root = data_dir / "index" / "segments"
    before = {p: p.stat().st_mtime_ns for p in seg_root.rglob("*") if p.is_file()}
    env = {**os.environ, "IMR_DATA_DIR": str(data_dir)}
    imr = shutil.which("imr", path=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    t = time.monotonic()
    out = subprocess.run([imr, "index", str(extra)], env=env, capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - t
    after = {p: p.stat().st_mtime_ns for p in seg_root.rglob("*") if p.is_file()}
    return {"letters": _lines(extra), "wall_s": round(wall, 1), "output": out.strip()[-300:],
            "earlier_segment_files_rewritten": sum(1 for p, m in before.items() if p in after and after[p] != m),
            "earlier_segment_files_kept": sum(1 for p, m in before.items() if after.get(p) == m)}


_ASKS = [f"why was {w} denied" for w in ("physical therapy", "acupuncture", "MRI of the lumbar spine", "opioid medication",
                                         "chiropractic care", "epidural steroid injection", "TENS unit", "home health care",
                                         "a surgery consultation", "a topical compound", "a sleep aid", "psychotherapy")]
_ASKS += [f"{a} after {b}" for a in ("therapy", "medication", "injection", "imaging") for b in ("fusion", "knee surgery", "no improvement")]


def bench_dense_recall(data_dir: Path) -> dict:
    """Recall@10 of the segments' dense search (inverted lists in large segments) against an exact
    scan of every stored vector, unfiltered and with a broad and a narrow filter: strict (set
    overlap) and tie-aware (a returned passage counts when its exact score is within 1e-4 of the
    10th best; the templated corpus has many near-ties)."""
    import numpy as np

    from ..core.filters import Filters
    from ..index import Index
    from ..query.retrieve import Retriever

    r = Retriever(Index(data_dir, embedder=None))
    segs = r.segments()
    qs = np.asarray(r.index.embedder(_ASKS), dtype=np.float32)
    out = {"questions": len(_ASKS), "segments": len(segs), "ivf_segments": sum(1 for s in segs if s.ivf)}
    for name, f in (("unfiltered", None), ("broad", Filters.of(decision="Upheld")),
                    ("narrow", Filters.of(decision="Overturned", category="acupuncture")),
                    ("medium", Filters.of(category="acupuncture"))):
        masks = r._masks(f) if f is not None else {}
        scores: list[list] = [[] for _ in qs]  # per question: the best 50 of each block, (score, rowid)
        for s in segs:
            m = masks.get(s.num)
            vecs = s.vectors()
            for b in range(0, len(s), 200_000):
                block = np.asarray(vecs[b:b + 200_000], dtype=np.float32) @ qs.T
                keep = np.arange(b, b + len(block)) if m is None else np.flatnonzero(m[b:b + len(block)]) + b
                for qi in range(len(qs)):
                    sc = block[keep - b, qi]
                    top = np.argsort(-sc)[:50]
                    scores[qi] += [(float(sc[t]), int(s.rowids[keep[t]])) for t in top]
        strict, ties = [], []
        for qi, q in enumerate(qs):
            ex = sorted(scores[qi], key=lambda t: -t[0])
            if len(ex) < 10:
                continue
            tenth = ex[9][0]
            got = r.dense(q[None, :], 10, masks)  # scores are exact: float16 vectors, as the scan's
            strict.append(len({rid for _, rid, _ in got} & {rid for _, rid in ex[:10]}) / 10)
            ties.append(float(np.mean([sc >= tenth - 1e-4 for sc, _, _ in got] + [False] * (10 - len(got)))))
        out[name] = {"strict_mean": round(float(np.mean(strict)), 3), "strict_min": min(strict),
                     "tie_aware_mean": round(float(np.mean(ties)), 3), "tie_aware_min": min(ties), "questions": len(strict)}
    return out


def _exact_vectors(remote, local: Path):
    """Every passage's vector for an exact scan: (chunk ids, matrix, what closes the source, its name). From
    ``local`` (an index of the same records without a server) when it exists, else the server's own
    copy of each distinct vector, read list by list and given to each passage that names it (what
    the lists' answers are then compared against is what the server holds: the ANN's loss alone)."""
    import numpy as np

    from ..index import Index
    from ..index.segments import Segment

    if (local / "index" / "store.sqlite").exists():
        loc = Index(local, embedder=None)
        id_of = dict(loc.store.db.execute("SELECT rowid, id FROM chunks"))
        vid, blocks = [], []
        for seg in (Segment(loc.dir, num, vectors=True) for num, _ in loc.store.segments()):
            blocks.append(seg.vectors()[:])
            vid += [id_of[int(r)] for r in np.asarray(seg.rowids)]
        return vid, np.vstack(blocks).astype(np.float32), loc.close, "local index"
    srv, at, blocks = remote.server, {}, []
    for k in range(len(srv.centroids())):
        col, off = srv.list_collection(k), 0
        while True:
            got = col.get(include=["embeddings"], limit=10_000, offset=off)
            if not len(got["ids"]):
                break
            base = len(at)
            at.update((key, base + i) for i, key in enumerate(got["ids"]))
            blocks.append(np.asarray(got["embeddings"], dtype=np.float16))
            off += len(got["ids"])
            del got
    rows = remote.store.db.execute("SELECT c.id, s.vkey FROM server_vectors s JOIN chunks c ON c.rowid = s.rowid").fetchall()
    of = np.fromiter((at[key] for _, key in rows), dtype=np.int64, count=len(rows))
    return [c for c, _ in rows], _PerPassage(np.vstack(blocks).astype(np.float32), of), lambda: None, "the server's vectors"


class _PerPassage:
    """Each passage's vector as a row (``mat @ q``, ``mat[rows]``) without a copy per passage: the
    distinct vectors and, for each passage, which is its (3.5M passages share 1.46M vectors)."""

    def __init__(self, distinct, of):
        self.distinct, self.of = distinct, of

    def __matmul__(self, q):
        return (self.distinct @ q)[self.of]

    def __getitem__(self, rows):
        import numpy as np

        return _PerPassage(self.distinct, self.of[rows]) if isinstance(rows, np.ndarray) else self.distinct[self.of[rows]]


def server_recall(remote, local: Path) -> dict:
    """The Chroma server's lists (``remote``: an Index with ``IMR_CHROMA_URL``) against an exact scan
    of the same passages' vectors (``_exact_vectors``): recall@10 strict and tie-aware over the
    bench questions, and the time of the server's dense search for 80 passages (what search asks)."""
    import numpy as np

    vid, mat, close, source = _exact_vectors(remote, local)
    pos_of = {c: k for k, c in enumerate(vid)}
    strict, ties, lat = [], [], []
    srv = remote.server
    for q in np.asarray(remote.embedder(_ASKS), dtype=np.float32):
        ex = mat @ q
        order = np.argsort(-ex)
        tenth = ex[order[9]]
        t = time.perf_counter()
        got = srv.search(q, 80)[:10]
        lat.append((time.perf_counter() - t) * 1000)
        strict.append(len(set(got) & {vid[k] for k in order[:10]}) / 10)
        ties.append(float(np.mean([ex[pos_of[c]] >= tenth - 1e-4 if c in pos_of else False for c in got] + [False] * (10 - len(got)))))
    out = {"server_passages": srv.passages(), "compared_chunks": len(vid), "lists": len(srv.centroids()),
           "strict_mean": round(float(np.mean(strict)), 3), "tie_aware_mean": round(float(np.mean(ties)), 3),
           "tie_aware_min": min(ties), "questions": len(ties),
           "search80_p50_ms": round(float(np.median(lat)), 1), "search80_max_ms": round(max(lat), 1),
           "exact_from": source}
    out["filtered"] = _server_filtered_recall(remote, mat, pos_of)
    close()
    return out


def _server_filtered_recall(remote, mat, pos_of) -> dict:
    """Under filters: the server's dense best 10 of a filter's passages (``Retriever._server_dense``,
    as search runs it) against an exact scan of those passages' vectors."""
    import numpy as np

    from ..core.filters import Filters
    from ..query.retrieve import Retriever

    r = Retriever(remote)
    r.warm()
    out = {}
    for name, f in (("narrow", Filters.of(decision="Overturned", category="acupuncture", region="lumbar")),
                    ("category", Filters.of(category="acupuncture")), ("overturned", Filters.of(decision="Overturned")),
                    ("broad", Filters.of(decision="Upheld"))):
        masks = r._masks(f)
        allowed = np.concatenate([np.asarray(s.rowids)[masks[s.num]] for s in r.segments()]).tolist()
        rows = remote.store.rows(allowed)
        ids = [rows[x]["id"] for x in allowed if x in rows and f.match(rows[x])]
        pos = np.array([pos_of[c] for c in ids if c in pos_of], dtype=np.int64)
        keep = set(ids)
        if len(pos) < 10:
            continue
        ties, lat = [], []
        for q in np.asarray(remote.embedder(_ASKS), dtype=np.float32):
            ex = mat[pos] @ q
            tenth = np.sort(ex)[-10]
            t = time.perf_counter()
            got, _ = r._server_dense(q[None, :], 80, f, masks)
            lat.append((time.perf_counter() - t) * 1000)
            got = [c for c in got if c in keep][:10]  # the store has the last word, as in search
            ties.append(float(np.mean([float(mat[pos_of[c]] @ q) >= tenth - 1e-4 for c in got] + [False] * (10 - len(got)))))
        out[name] = {"passages": len(pos), "tie_aware_mean": round(float(np.mean(ties)), 3), "tie_aware_min": min(ties),
                     "dense_p50_ms": round(float(np.median(lat)), 1), "dense_max_ms": round(max(lat), 1)}
    return out


def bench_hnsw(data_dir: Path, settings: list[tuple[int, int]], efs=(1000, 3000)) -> dict:
    """hnswlib (chroma-hnswlib: the graph library under Chroma's index; `pip install
    chroma-hnswlib`) over every vector of the index in ``data_dir``, built in process with each
    (M, ef_construction) and searched at each ef: recall@10 of the bench questions against an
    exact scan, tie-aware and within 1% of the 10th best's cosine distance (ann-benchmarks'
    epsilon recall), as Chroma's server would give it with those settings."""
    import hnswlib
    import numpy as np

    from ..index import Index
    from ..index.segments import Segment

    loc = Index(data_dir, embedder=None)
    m = np.vstack([Segment(loc.dir, num, vectors=True).vectors()[:] for num, _ in loc.store.segments()]).astype(np.float32)
    qs = np.asarray(loc.embedder(_ASKS), dtype=np.float32)
    exact = [m @ q for q in qs]
    tenth = [np.sort(e)[-10] for e in exact]
    out = {"vectors": len(m), "distinct_vectors": len({v.tobytes() for v in m.astype(np.float16)}), "questions": len(qs), "runs": []}
    for M, efc in settings:
        t = time.monotonic()
        g = hnswlib.Index(space="cosine", dim=m.shape[1])
        g.init_index(len(m), ef_construction=efc, M=M)
        g.add_items(m, np.arange(len(m)), num_threads=2)
        build = time.monotonic() - t
        for ef in efs:
            g.set_ef(ef)
            ties, eps, lat = [], [], []
            for q, ex, t10 in zip(qs, exact, tenth):
                t = time.perf_counter()
                lab, _ = g.knn_query(q[None], k=80)  # what search asks a server for
                lat.append((time.perf_counter() - t) * 1000)
                sc = ex[lab[0][:10]]
                ties.append(float(np.mean(sc >= t10 - 1e-4)))
                eps.append(float(np.mean((1 - sc) <= (1 - t10) * 1.01)))
            out["runs"].append({"M": M, "ef_construction": efc, "ef_search": ef, "build_s": round(build, 1),
                                "inserts_per_s": round(len(m) / build), "tie_aware_mean": round(float(np.mean(ties)), 3),
                                "tie_aware_min": min(ties), "epsilon01_mean": round(float(np.mean(eps)), 3),
                                "epsilon01_min": min(eps), "query_p50_ms": round(float(np.median(lat)), 2)})
    loc.close()
    return out


def bench_chroma_collection(work: Path, local: Path) -> dict:
    """``server_recall`` of the lists a ``chroma`` step left in WORK/chroma-server with its index in
    WORK/index-chroma, with the server's memory and disk."""
    port, proc = _chroma_run(work / "chroma-server")
    old = os.environ.get("IMR_CHROMA_URL")
    try:
        os.environ["IMR_CHROMA_URL"] = f"http://127.0.0.1:{port}"
        from ..index import Index

        out = {f"retrieval_{k}": v for k, v in bench_retrieval(work / "index-chroma", 100).items()}
        print(json.dumps(out), flush=True)  # kept if the recall below dies
        idx = Index(work / "index-chroma", embedder=None)
        out.update(server_recall(idx, local))
        idx.close()
        st = dict(ln.split(":", 1) for ln in open(f"/proc/{proc.pid}/status") if ":" in ln)
        out["server_peak_rss_mb"] = int(st["VmHWM"].split()[0]) // 1024
        out["server_disk_mb"] = round(sum(f.stat().st_size for f in (work / "chroma-server").rglob("*") if f.is_file()) / 1e6, 1)
        return out
    finally:
        if old is None:
            os.environ.pop("IMR_CHROMA_URL", None)
        else:
            os.environ["IMR_CHROMA_URL"] = old
        proc.terminate()
        proc.wait(60)


def _chroma_run(path: Path):
    """A real ``chroma run`` on 127.0.0.1 over ``path``, answering: (port, process)."""
    import socket

    exe = shutil.which("chroma", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([exe, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.2)
    return port, proc


def bench_chroma_server(records: Path, work: Path, local: Path, letters: int) -> dict:
    """The team path: a real ``chroma run`` on 127.0.0.1, ``IMR_CHROMA_URL`` set, the first
    ``letters`` records indexed (vectors upserted to the server), then retrieval timed and the
    server's dense top 10 compared with an exact scan of the same chunks' vectors in ``local``
    (an index of the same records without a server)."""
    srv_dir, data = work / "chroma-server", work / "index-chroma"
    shutil.rmtree(srv_dir, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    part = records  # all of them: no copy (14 GB at 1M)
    if letters < _lines(records):
        part = work / f"records-first-{letters}.jsonl"
        with open(records) as src, open(part, "w") as dst:
            for i, line in enumerate(src):
                if i >= letters:
                    break
                dst.write(line)
    port, proc = _chroma_run(srv_dir)
    old = os.environ.get("IMR_CHROMA_URL")
    try:
        os.environ["IMR_CHROMA_URL"] = f"http://127.0.0.1:{port}"  # env() follows the environment
        from ..index.rebuild import rebuild

        t = time.monotonic()
        idx, st = rebuild(data, "wordllama", part, batch=2048)
        wall = time.monotonic() - t
        out = {"letters": st["letters"], "chunks": st["chunks"], "index_wall_s": round(wall, 1),
               "chunks_per_s": round(st["chunks"] / wall, 1),
               "server_disk_mb": round(sum(f.stat().st_size for f in srv_dir.rglob("*") if f.is_file()) / 1e6, 1),
               "local_disk_mb": round(sum(f.stat().st_size for f in (data / "index").rglob("*") if f.is_file()) / 1e6, 1)}
        out.update({f"retrieval_{k}": v for k, v in bench_retrieval(data, 100).items()})
        out["dense_recall"] = server_recall(idx, local)
        idx.close()
        return out
    finally:
        if old is None:
            os.environ.pop("IMR_CHROMA_URL", None)
        else:
            os.environ["IMR_CHROMA_URL"] = old
        proc.terminate()
        proc.wait(30)


def disk_breakdown(index_dir: Path, letters: int) -> dict:
    """Bytes per letter of each part of the index on disk (issue 14's target: 8 KB all together)."""
    import sqlite3

    def du(paths) -> int:
        return sum(p.stat().st_size for p in paths if p.is_file())

    db = sqlite3.connect(index_dir / "store.sqlite")
    pages = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    body = db.execute("SELECT sum(length(body)) FROM chunks").fetchone()[0] or 0
    rec = db.execute("SELECT sum(length(data)) FROM records").fetchone()[0] or 0
    db.close()
    seg = list((index_dir / "segments").rglob("*"))
    bm25 = [p for p in seg if ".index." in p.name]
    parts = {"store_total": du(index_dir.glob("store.sqlite*")), "store_records_table": pages.get("records", 0),
             "store_records_data": rec, "store_chunks_table": pages.get("chunks", 0), "store_chunk_bodies": body,
             "store_items_table": pages.get("items", 0),
             "store_indexes": sum(v for k, v in pages.items() if k not in ("records", "chunks", "items")),
             "vectors_f16": du(p for p in seg if p.name == "vectors.f16"), "ivf_codes": du(p for p in seg if p.name == "ivf.faiss"),
             "bm25": du(bm25), "chunk_facets": du(p for p in seg if p.name == "facets.npz"),
             "item_facets": du([index_dir / "items.npz"]), "segment_other": du(p for p in seg if p.name in ("rowids.npy", "segment.json"))}
    parts["total"] = du(p for p in index_dir.rglob("*"))
    return {k: round(v / max(1, letters)) for k, v in parts.items()}


def pct(v: list[float], q: int) -> float:
    """The q-th percentile of ``v``, rounded to 0.1."""
    return round(statistics.quantiles(v, n=100)[q - 1], 1)


def bench_retrieval(data_dir: Path, queries: int = 200) -> dict:
    """p50/p95 of ``Retriever.search`` (embed the query, dense + BM25, fuse, diversity), warm."""
    from ..core.filters import Filters
    from ..index import Index
    from ..query.retrieve import Retriever

    r = Retriever(Index(data_dir, embedder=None))
    qs = ["why were physical therapy requests upheld after fusion", "facet blocks denied no radicular pain",
          "opioids without urine drug screening", "acupuncture functional improvement", "MRI without neurologic findings",
          "TENS unit adjunct functional restoration", "home exercise program transition", "cognitive behavioral therapy visits"]
    r.warm()  # as a server does before anyone asks (segments, lists; a Chroma server loads each list's graph)
    r.search(qs[0], k=8)

    def timed(filters) -> list[float]:
        out = []
        for i in range(queries):
            t = time.perf_counter()
            r.search(qs[i % len(qs)] + f" {i}", k=8, filters=filters)
            out.append((time.perf_counter() - t) * 1000)
        return out

    unf = timed(None)
    broad = timed(Filters.of(decision="Upheld"))  # ~85% of chunks
    narrow = timed(Filters.of(decision="Overturned", category="acupuncture", region="lumbar"))
    medium = timed(Filters.of(category="acupuncture"))  # ~5%: what "why was acupuncture denied?" reads
    return {"chunks": sum(len(s) for s in r.segments()), "unfiltered_p50_ms": pct(unf, 50), "unfiltered_p95_ms": pct(unf, 95),
            "broad_filter_p50_ms": pct(broad, 50), "broad_filter_p95_ms": pct(broad, 95),
            "narrow_filter_p50_ms": pct(narrow, 50), "narrow_filter_p95_ms": pct(narrow, 95),
            "medium_filter_p50_ms": pct(medium, 50), "medium_filter_p95_ms": pct(medium, 95)}


_MEMORY = ("import atexit, sys\n"
           "def _report():\n"
           "    st = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
           "    print('MEMORY', *(int(st[k].split()[0]) // 1024 for k in ('VmHWM', 'RssAnon', 'RssFile')), file=sys.stderr)\n"
           "atexit.register(_report)\n")
# VmHWM of the process itself: getrusage's and wait4's ru_maxrss keep the peak of the parent before
# exec (the bench process holds gigabytes after a build), so they overstate a child's memory.


def _memory(stderr: str) -> dict:
    line = [ln for ln in stderr.splitlines() if ln.startswith("MEMORY ")][-1].split()
    return {"peak_rss_mb": int(line[1]), "anon_mb_at_exit": int(line[2]), "file_backed_mb_at_exit": int(line[3])}


def bench_cold_ask(data_dir: Path, runs: int = 5) -> dict:
    """`imr ask` as a user runs it, a new process each time: wall time and its peak resident memory
    (anonymous, and file-backed: pages of the memory-mapped index files it touched)."""
    env = {**os.environ, "IMR_DATA_DIR": str(data_dir)}
    code = _MEMORY + "from imr_llm.cli import app\nsys.argv[0] = 'imr'\napp()\n"
    times, mem = [], []
    for _ in range(runs):
        t = time.monotonic()
        p = subprocess.run([sys.executable, "-c", code, "ask", "why were physical therapy requests upheld after spinal fusion surgery?",
                            "--json"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
        times.append(time.monotonic() - t)
        mem.append(_memory(p.stderr))
    return {"runs": runs, "median_s": round(statistics.median(times), 2), "max_s": round(max(times), 2),
            "max_rss_mb": max(m["peak_rss_mb"] for m in mem), "memory_last_run": mem[-1]}


def bench_retrieval_process(data_dir: Path, queries: int = 200) -> dict:
    """``bench_retrieval`` in a fresh process, with that process's peak resident memory."""
    code = _MEMORY + ("import json; from pathlib import Path; from imr_llm.bench.__main__ import bench_retrieval\n"
                      "print(json.dumps(bench_retrieval(Path(sys.argv[1]), int(sys.argv[2]))))\n")
    p = subprocess.run([sys.executable, "-c", code, str(data_dir), str(queries)], capture_output=True, text=True, check=True)
    m = _memory(p.stderr)
    return {**json.loads(p.stdout.strip().splitlines()[-1]), "max_rss_mb": m["peak_rss_mb"], "memory": m}


def wide_index(data_dir: Path, work: Path, letters: int, have: int) -> Path:
    """An index folder with the segments of ``data_dir`` (``have`` letters) and copies of them under
    new numbers until it holds the chunks of ``letters`` letters: the per-segment work of retrieval
    at that scale (the segment count, the files' pages), measured without building a larger corpus.
    The copies' passages point at rows of the original segments, so retrieval drops what they find
    (answers can differ: the copies crowd out candidates); latency and memory are what this measures."""
    import sqlite3

    from ..index.segments import seg_dir
    from ..index.store import Store

    src, wide = data_dir / "index", work / "index-wide"
    done = wide / "index" / "wide.json"
    if done.is_file() and json.loads(done.read_text()) == {"letters": letters, "have": have}:
        return wide  # made by an earlier run over the same index (a re-run measures it warm)
    shutil.rmtree(wide, ignore_errors=True)
    (wide / "index" / "segments").mkdir(parents=True)
    with sqlite3.connect(src / "store.sqlite") as a, sqlite3.connect(wide / "index" / "store.sqlite") as b:
        a.backup(b)  # a consistent copy of the store
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("store.sqlite"):
            shutil.copy2(f, wide / "index" / f.name)
    st = Store(wide / "index" / "store.sqlite")
    segs = st.segments()
    for num, _ in segs:  # the originals: hard links (read-only here)
        d = seg_dir(wide / "index", num)
        d.mkdir()
        for f in seg_dir(src, num).iterdir():
            os.link(f, d / f.name)
    total, target, nxt, i = sum(c for _, c in segs), round(sum(c for _, c in segs) * letters / have), max(n for n, _ in segs) + 1, 0
    while total < target:  # the copies: real copies, so their pages are their own in the cache
        num, chunks = segs[i % len(segs)]
        shutil.copytree(seg_dir(src, num), seg_dir(wide / "index", nxt))
        st.add_segment(nxt, chunks)
        total, nxt, i = total + chunks, nxt + 1, i + 1
    st.db.commit()
    st.db.close()
    done.write_text(json.dumps({"letters": letters, "have": have}))
    return wide


def bench_wide(data_dir: Path, work: Path, letters: int, have: int) -> dict:
    """Retrieval (warm, its own process) over ``wide_index``: ``letters`` letters' worth of segments."""
    wide = wide_index(data_dir, work, letters, have)
    from ..index.store import Store

    st = Store(wide / "index" / "store.sqlite")
    segs = st.segments()
    st.db.close()
    bench_retrieval_process(wide, 50)  # a first pass to bring the copies' pages in, as a long-running reader has them
    out = {"letters_equivalent": letters, "segments": len(segs), "chunks": sum(c for _, c in segs),
           "segment_files_mb": round(sum(f.stat().st_size for f in (wide / "index" / "segments").rglob("*") if f.is_file()) / 1e6, 1)}
    out.update(bench_retrieval_process(wide))
    return out


def bench_served(data_dir: Path, queries: int = 200, clients: int = 4) -> dict:
    """The team path: a real `imr serve` (its own process, token set) on 127.0.0.1 over ``data_dir``,
    asked through ``/api/ask`` as `imr ask` does with IMR_SERVER_URL: p50/p95 of whole answers
    (question read, retrieval, passages quoted) one at a time, unfiltered and with a broad and a
    narrow filter; then ``clients`` users at once; and the server's peak resident memory."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    token = "bench-" + os.urandom(12).hex()
    env = {**os.environ, "IMR_SERVE_TOKEN": token}
    log = open(data_dir / "bench-serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "imr_llm.cli", "serve", "--data", str(data_dir), "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url, hdr = f"http://127.0.0.1:{port}/api/ask", {"authorization": f"Bearer {token}"}
    try:
        for _ in range(600):
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"imr serve exited ({proc.returncode}): {log.read()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        asks = _ASKS + ["why were physical therapy requests upheld after fusion", "facet blocks denied without radicular pain",
                        "opioids without urine drug screening", "acupuncture functional improvement"]
        # the filtered runs' questions name no category or decision of their own (the reader would
        # add it, and a contradiction with the filter is refused)
        plain = ["why was the request not supported", "functional improvement not documented", "guideline criteria were not met",
                 "no objective findings on examination", "failed conservative care", "duration and frequency exceed guidelines",
                 "no documentation of pain relief", "medical necessity not established", "red flags absent",
                 "prior response to treatment", "long-term use not recommended", "why were these requests decided"]
        http = httpx.Client(headers=hdr, timeout=120)

        def one(i: int, extra: dict) -> float:
            qs = plain if extra else asks
            t = time.perf_counter()
            r = http.get(url, params={"q": qs[i % len(qs)], "k": "6", **extra})
            r.raise_for_status()
            assert r.json()["question"] == qs[i % len(qs)]
            return (time.perf_counter() - t) * 1000

        t = time.monotonic()
        first = one(0, {})  # opens the index and loads the embedder in the server
        first_s = time.monotonic() - t
        for i in range(1, 4):
            one(i, {})

        out = {"first_answer_ms": round(first, 1), "first_answer_s": round(first_s, 2)}
        for name, extra in (("unfiltered", {}), ("broad_filter", {"decision": "Upheld"}),
                            ("narrow_filter", {"decision": "Overturned", "category": "acupuncture", "region": "lumbar"}),
                            ("medium_filter", {"category": "acupuncture"})):
            v = [one(i, extra) for i in range(queries)]
            out[f"{name}_p50_ms"], out[f"{name}_p95_ms"] = pct(v, 50), pct(v, 95)
        t = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            v = list(pool.map(lambda i: one(i, {}), range(queries)))
        wall = time.monotonic() - t
        out.update({f"clients{clients}_p50_ms": pct(v, 50), f"clients{clients}_p95_ms": pct(v, 95),
                    f"clients{clients}_answers_per_s": round(queries / wall, 1)})
        st = dict(ln.split(":", 1) for ln in open(f"/proc/{proc.pid}/status") if ":" in ln)
        out["server_peak_rss_mb"] = int(st["VmHWM"].split()[0]) // 1024
        # its own memory, apart from pages of the mapped index files (the kernel's cache, shared)
        out["server_anon_mb"], out["server_file_mb"] = (int(st[k].split()[0]) // 1024 for k in ("RssAnon", "RssFile"))
        return out
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def _replicated_store(corpus: list[Path], store_path: Path, n_items: int) -> None:
    """A record store of ``n_items`` disputed items: the layout parser's records of (up to) 2,000
    corpus letters, replicated under new ids with shifted decision months."""
    from ..core.load import read_letter
    from ..extract.assemble import analyse, assemble
    from ..index.prepare import prepare
    from ..index.store import INDEX_FORMAT, Store

    base = []
    for p in corpus[:2000]:
        try:
            letter = read_letter(p)
            base.append(assemble(letter, analyse(letter)))
        except Exception:
            continue
    tmp = store_path.with_name("store.tmp.sqlite")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.unlink(missing_ok=True)
    st = Store(tmp)
    zd = st.zdict()
    items, k = 0, 0
    while items < n_items:
        rec = base[k % len(base)]
        y, m = 2014 + (k // len(base)) % 10, 1 + (k // (len(base) * 10)) % 12
        p = prepare(rec.model_copy(update={"letter_id": f"{rec.letter_id}-{k}", "sha256": f"{k:064x}",
                                           "decision_date": f"{y}-{m:02d}-15"}), zd)
        p.chunks = []  # items and records only: no passages to search
        st.put_letter(p, None)
        items += len(rec.items)
        k += 1
        if k % 5000 == 0:
            st.commit()
    st.set_meta("index_format", INDEX_FORMAT)
    st.set_meta("built", "1")
    st.commit()
    st.db.close()
    tmp.rename(store_path)


def bench_stats(corpus: list[Path], work: Path, n_items: int) -> dict:
    """`imr stats` grouped queries and the page's queries (facet counts + a page of items) over a
    record store of ``n_items`` disputed items: records of the corpus (layout parser) replicated
    under new ids with shifted decision months until the store holds that many items."""
    from ..index.store import Store

    data = work / f"stats-{n_items}"
    store_path = data / "index" / "store.sqlite"
    t0 = time.monotonic()
    if not store_path.exists():
        _replicated_store(corpus, store_path, n_items)
    build_s = round(time.monotonic() - t0, 1)
    st = Store(store_path)
    fpath = data / "index" / "items.npz"
    t1 = time.monotonic()
    if not fpath.exists():
        st.write_item_facets(fpath)
    facets_s = round(time.monotonic() - t1, 1)
    return {"build_s": build_s, "items_npz_s": facets_s, **stats_timings(data, st)}


def stats_timings(data: Path, st) -> dict:
    """The grouped queries of `imr stats` and the page's two queries, on the index under ``data``."""
    import statistics

    from ..core.filters import Filters
    from ..query.stats import compute, load_facets

    fz = load_facets(data / "index")
    fpath = data / "index" / "items.npz"
    store_path = data / "index" / "store.sqlite"
    n = st.db.execute("SELECT count(*) FROM items").fetchone()[0]

    def timed(fn, reps=5) -> float:
        fn()  # warm the page cache
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return round(statistics.median(ts) * 1000, 1)

    out = {"items": n, "db_mb": round(store_path.stat().st_size / 1e6, 1),
           "items_npz_mb": round(fpath.stat().st_size / 1e6, 1), "load_items_npz_ms": timed(lambda: load_facets(data / "index"), 3)}
    for by in (["category"], ["decision_month"], ["drug_class", "decision_year"], ["body_region"]):
        out[f"stats_by_{'_'.join(by)}_ms"] = timed(lambda: compute(st, by, Filters(), fz))
    out["stats_filtered_ms"] = timed(lambda: compute(st, ["category"], Filters.of(decision="Overturned", region="lumbar"), fz))
    out["stats_sql_by_category_ms"] = timed(lambda: compute(st, ["category"], Filters()), 1)  # the SQL path, for comparison
    from starlette.testclient import TestClient

    from ..page.web import create_app

    c = TestClient(create_app(data), base_url="http://127.0.0.1")  # a loopback Host: the app refuses others

    def get(url: str) -> None:
        r = c.get(url)
        assert r.status_code == 200, (url, r.status_code)  # time pages, not refusals

    out["page_home_ms"] = timed(lambda: get("/"))
    out["page_home_filtered_ms"] = timed(lambda: get("/?category=physical_therapy&decision=Upheld"))
    return out


class _Run:
    """One ``bench run``: the corpus, the results so far (kept in WORK/results.json after every step,
    so a long run that dies keeps its numbers) and the printed table."""

    def __init__(self, a):
        from .corpus import write_corpus

        self.a = a
        self.results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}",
                              "date": time.strftime("%Y-%m-%d"), "n": a.n}
        self.work = work = Path(a.work or tempfile.mkdtemp(prefix="imr-bench-"))
        corpus_dir = work / "corpus"
        if not corpus_dir.exists() or len(list(corpus_dir.glob("*.txt"))) < a.n:
            shutil.rmtree(corpus_dir, ignore_errors=True)
            t = time.monotonic()
            write_corpus(corpus_dir, a.n, seed=7)
            self.results["corpus_gen_s"] = round(time.monotonic() - t, 1)
        self.corpus = sorted(corpus_dir.glob("*.txt"))[: a.n]
        self.steps = set(a.steps.split(","))
        self.table: list[tuple[str, str, str]] = []
        self.partial = work / "results.json"
        self.earlier = json.loads(self.partial.read_text()) if self.partial.exists() else {}

    def save(self) -> None:
        tmp = self.partial.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.earlier, **self.results}, indent=1))
        os.replace(tmp, self.partial)

    def row(self, *cells: str) -> None:
        self.table.append(cells)

    def parse(self) -> None:
        r = self.results["parse"] = bench_parse(self.corpus[: min(len(self.corpus), self.a.parse_n)])
        self.row("1 read+normalise+layout parse, 1 core", f"{r['layout_letters_per_s']} letters/s", ">= 500")
        self.row("1b + rules + grounding + record, 1 core", f"{r['letters_per_s']} letters/s", "")
        self.save()

    def tokens(self) -> None:
        r = self.results["tokens"] = bench_tokens(Path(__file__).resolve().parents[2] / "evals")
        self.row("3 input tokens vs naive", f"{r['input_ratio']:.0%}", "<= 60%")
        self.row("3 output tokens vs naive", f"{r['output_ratio']:.0%}", "<= 50%")
        self.save()

    def extract(self, url: str, server_pid: int) -> None:
        a = self.a
        self.results["extract"] = []
        for spec in a.concurrency.split(","):  # "64" or "64x2" (64 in flight over 2 worker processes)
            c, _, w = spec.partition("x")
            c, w = int(c), int(w or 1)
            n = min(len(self.corpus), max(40, int(c / a.latency * a.seconds)))
            d = self.work / f"extract-c{c}x{w}"
            shutil.rmtree(d, ignore_errors=True)
            r = bench_extract(self.corpus[:n], c, a.latency, d, url, w, server_pid)
            self.results["extract"].append(r)
            self.row(f"2 extract c={c}, {w} process(es), {a.latency}s latency",
                     f"{r['letters_per_s']} letters/s ({r['share_of_ideal']:.0%} of ideal; CPU of 2 cores: tool "
                     f"{r['tool_cpu_share']:.0%}, server {r['server_cpu_share']:.0%})", ">= 80%")
            self.save()

    def rerun(self, url: str) -> None:
        a, corpus, d = self.a, self.corpus, self.work / "rerun"
        done = d / "first.jsonl"
        if a.reuse and "full_run" in self.earlier and done.exists() and _lines(done) == len(corpus):
            first = self.earlier["full_run"]  # the first run of an earlier invocation, same corpus
        else:
            shutil.rmtree(d, ignore_errors=True)
            first = self.results["full_run"] = bench_rerun(corpus, d, url, a.workers, "first.jsonl")
            self.save()
        second = bench_rerun(corpus, d, url, 1)
        third = bench_rerun(corpus, d, url, a.workers, "rerun2.jsonl") if a.workers > 1 else None
        self.results.update(full_run=first, rerun=second, rerun_workers=third, peak_rss_mb=round(_rss_mb(), 1))
        self.save()
        self.row(f"2 full run {len(corpus)} letters, c=64, {a.workers} worker(s), no latency",
                 f"{first['letters_per_s']} letters/s, {first['llm_calls']} calls; RSS (all processes) at 25/50/75/100%: "
                 f"{first.get('rss_mb_at_25pct')}/{first.get('rss_mb_at_50pct')}/{first.get('rss_mb_at_75pct')}/{first.get('rss_mb_at_end')} MB",
                 "flat memory")
        self.row(f"4 re-run unchanged {len(corpus)} letters, 1 process", f"{second['wall_s']} s, {second['llm_calls']} LLM calls", "<= 60 s, 0 calls")
        if third:
            self.row(f"4 re-run unchanged {len(corpus)} letters, {a.workers} workers", f"{third['wall_s']} s, {third['llm_calls']} LLM calls",
                     "<= 60 s, 0 calls")

    def through_server(self) -> None:
        proc, url = _start_server(self.a.latency)
        try:
            if "extract" in self.steps:
                self.extract(url, proc.pid)
            if "rerun" in self.steps:
                proc.kill()
                proc, url = _start_server(0.0)
                self.rerun(url)
        finally:
            proc.kill()

    def records(self) -> Path:
        """Records of the corpus: the full run's, or the layout parser's (no model), kept in --work
        (a 1M-letter run resumes with the records it made)."""
        recs = self.work / "rerun" / "first.jsonl"
        if not recs.exists():
            recs = self.work / "records.jsonl"
            if not (recs.exists() and self.earlier.get("records_n") == self.a.n):
                self._layout_records([str(p) for p in self.corpus], recs)
            self.results["records_n"] = self.a.n
            self.save()
        return recs

    def _layout_records(self, paths: list[str], out: Path) -> None:
        from ..config import Settings
        from ..run.runner import extract

        t = time.monotonic()
        extract(paths, Settings(data_dir=self.work / "layout"), out, None, 8, workers=self.a.workers, use_cache=False)
        self.results.setdefault("records_s", {})[out.name] = round(time.monotonic() - t, 1)

    def extra_records(self, n: int = 10_000) -> Path:
        """Records of ``n`` more letters of the same generator (for the incremental add)."""
        from .corpus import build

        out = self.work / f"extra-{n}.jsonl"
        if not out.exists():
            d = self.work / f"extra-corpus-{n}"
            d.mkdir(exist_ok=True)
            paths = []
            for i in range(self.a.n, self.a.n + n):
                p = d / f"synthetic_7_{i:07d}.txt"
                if not p.exists():
                    p.write_text(build(7 * 1_000_003 + i)[0])
                paths.append(str(p))
            self._layout_records(paths, out)
        return out

    def index(self) -> None:
        data = self.work / "index-data"
        r = self.results["index"] = dict(self.earlier.get("index") or {})
        if "index" in self.steps:
            r.update(bench_index(self.records(), data))
            self.save()
        if r.get("chunks"):
            self.row(f"14 index {r['letters']:,} letters, {r['chunks']:,} chunks, {r.get('segments')} segments (wordllama, 2 cores)",
                     f"{r.get('chunks_per_s')} chunks/s, {r.get('disk_mb')} MB", ">= 2,000 chunks/s")
            if r.get("build_rss_mb"):
                self.row("14 build memory, all processes (10/25/50/75/100% of the run; peak)", str(r["build_rss_mb"]), "flat")
        if r.get("bytes_per_letter"):
            b = r["bytes_per_letter"]
            self.row("14 index bytes a letter: total (store / vectors f16 / IVF codes / BM25 / facets)",
                     f"{b['total']:,} ({b['store_total']:,} / {b['vectors_f16']:,} / {b['ivf_codes']:,} / {b['bm25']:,} / "
                     f"{b['chunk_facets'] + b['item_facets']:,})", "<= 8,192")
        if "recall" in self.steps:
            self.results["dense_recall"] = bench_dense_recall(data)
            self.save()
        for name, rr in (self.results.get("dense_recall") or self.earlier.get("dense_recall") or {}).items():
            if isinstance(rr, dict):
                self.row(f"14 dense recall@10 vs exact scan, {name} (strict / tie-aware, mean)",
                         f"{rr['strict_mean']} / {rr['tie_aware_mean']}", ">= 0.95")
        if "retrieval" in self.steps or "index" in self.steps:
            self.results["retrieval"] = bench_retrieval_process(data)
            self.save()
        q = self.results.get("retrieval") or self.earlier.get("retrieval")
        if q:
            for name, label in (("unfiltered", "unfiltered"), ("broad_filter", "broad filter"), ("narrow_filter", "narrow filter"),
                                ("medium_filter", "medium filter (category)")):
                if name + "_p95_ms" not in q:
                    continue
                self.row(f"14 retrieval p50/p95 {label}, {q['chunks']:,} chunks", f"{q[name + '_p50_ms']}/{q[name + '_p95_ms']} ms", "p95 <= 100 ms")
            self.row("14 retrieval process peak memory (200 x 3 queries)", f"{q['max_rss_mb']} MB", "<= 2,048 MB")
        if "ask" in self.steps:
            self.results["cold_ask"] = bench_cold_ask(data)
            self.save()
        r = self.results.get("cold_ask") or self.earlier.get("cold_ask")
        if r:
            self.row("6 imr ask cold start, no LLM", f"median {r['median_s']} s, max {r['max_s']} s, peak {r['max_rss_mb']} MB", "<= 2 s, <= 2 GB")
        if "add" in self.steps:
            self.results["add"] = bench_add(data, self.extra_records(self.a.add_letters))
            self.save()
        r = self.results.get("add") or self.earlier.get("add")
        if r:
            self.row(f"14 add {r['letters']:,} letters to the index (imr index, new process)",
                     f"{r['wall_s']} s; earlier segment files rewritten: {r['earlier_segment_files_rewritten']}", "<= 60 s, none")
        if "chroma" in self.steps:
            r = self.results["chroma_server"] = bench_chroma_server(self.records(), self.work, data, self.a.chroma_letters)
            self.row(f"14 Chroma server path (chroma run on 127.0.0.1), {r['letters']:,} letters: build / retrieval p95 / recall@10",
                     f"{r['chunks_per_s']} chunks/s / {r['retrieval_unfiltered_p95_ms']} ms unfiltered, {r['retrieval_broad_filter_p95_ms']} ms broad / "
                     f"{r['dense_recall']['tie_aware_mean']} tie-aware", "")
            self.save()
        if "hnsw" in self.steps:
            r = self.results["hnsw"] = bench_hnsw(data, [tuple(int(x) for x in v.split("/")) for v in self.a.hnsw.split(",")])
            for run in r["runs"]:
                self.row(f"14 hnswlib M{run['M']} ef_construction {run['ef_construction']} ef {run['ef_search']}, {r['vectors']:,} vectors: "
                         "recall@10 tie-aware (min) / within 1%", f"{run['tie_aware_mean']} ({run['tie_aware_min']}) / {run['epsilon01_mean']}",
                         ">= 0.95")
            self.save()
        if "chroma-recall" in self.steps:  # the collection a chroma step left (stopped part-way too)
            r = self.results["chroma_collection"] = bench_chroma_collection(self.work, data)
            self.row(f"14 Chroma server lists, {r['server_passages']:,} passages: recall@10 tie-aware (min) / server memory",
                     f"{r['tie_aware_mean']} ({r['tie_aware_min']}) / {r['server_peak_rss_mb']} MB", ">= 0.95 recall")
            self.row("14 Chroma server lists: filtered recall@10 tie-aware (min)",
                     ", ".join(f"{k} {v['tie_aware_mean']} ({v['tie_aware_min']})" for k, v in r["filtered"].items()), ">= 0.95")
            self.row("14 Chroma server lists: retrieval p95 unfiltered / broad / narrow / category",
                     " / ".join(f"{r['retrieval_' + k + '_p95_ms']}" for k in ("unfiltered", "broad_filter", "narrow_filter", "medium_filter"))
                     + " ms", "p95 <= 100 ms")
            self.save()
        if "serve" in self.steps:
            r = self.results["served"] = bench_served(data)
            self.row("14 imr serve /api/ask (IMR_SERVER_URL), whole answers: p95 unfiltered / broad / narrow / medium; 4 users",
                     f"{r['unfiltered_p95_ms']} / {r['broad_filter_p95_ms']} / {r['narrow_filter_p95_ms']} / {r.get('medium_filter_p95_ms')} ms; "
                     f"p95 {r['clients4_p95_ms']} ms, {r['clients4_answers_per_s']}/s", "p95 <= 100 ms")
            self.row("14 imr serve peak memory, first answer", f"{r['server_peak_rss_mb']} MB, {r['first_answer_s']} s", "<= 2,048 MB")
            self.save()
        if "wide" in self.steps:
            r = self.results["wide"] = bench_wide(data, self.work, self.a.wide_letters, self.a.n)
            self.row(f"14 retrieval p95 at {r['letters_equivalent']:,} letters' segments ({r['segments']}, {r['chunks']:,} chunks): "
                     "unfiltered / broad / narrow / medium",
                     f"{r['unfiltered_p95_ms']} / {r['broad_filter_p95_ms']} / {r['narrow_filter_p95_ms']} / {r['medium_filter_p95_ms']} ms, "
                     f"peak {r['max_rss_mb']} MB", "p95 <= 100 ms")
            self.save()
        if "stats-index" in self.steps:
            from ..index.store import Store

            st = Store(data / "index" / "store.sqlite")
            r = self.results["stats_index"] = stats_timings(data, st)
            self.row(f"14 stats on the built index, {r['items']:,} items: by category / month / 2 fields / region",
                     f"{r['stats_by_category_ms']} / {r['stats_by_decision_month_ms']} / {r['stats_by_drug_class_decision_year_ms']} / "
                     f"{r['stats_by_body_region_ms']} ms", "<= 1000 ms")
            self.save()

    def stats(self) -> None:
        r = self.results["stats"] = bench_stats(self.corpus, self.work, self.a.stats_items)
        self.row(f"stats: grouped query over {r['items']:,} items (by category / month / 2 fields / region)",
                 f"{r['stats_by_category_ms']} / {r['stats_by_decision_month_ms']} / {r['stats_by_drug_class_decision_year_ms']} / "
                 f"{r['stats_by_body_region_ms']} ms", "<= 1000 ms")
        self.row("page: facets + a page of items (all / filtered)", f"{r['page_home_ms']} / {r['page_home_filtered_ms']} ms", "<= 200 ms")
        self.save()

    def report(self) -> None:
        from rich.console import Console
        from rich.table import Table

        t = Table("measure", "result", "target", title=f"imr-llm bench · {self.results['machine']} · n={self.a.n}")
        for row in self.table:
            t.add_row(*row)
        Console().print(t)
        Path(self.a.out).write_text(json.dumps(self.results, indent=1))
        print(f"wrote {self.a.out}")


def cmd_run(a) -> None:
    r = _Run(a)
    if "parse" in r.steps:
        r.parse()
    if "tokens" in r.steps:
        r.tokens()
    if r.steps & {"extract", "rerun"}:
        r.through_server()
    if r.steps & {"index", "recall", "retrieval", "ask", "add", "stats-index", "chroma", "chroma-recall", "serve", "hnsw", "wide"}:
        r.index()
    if "stats" in r.steps:
        r.stats()
    r.report()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m imr_llm.bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--n", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("dir")
    s = sub.add_parser("serve")
    s.add_argument("--latency", type=float, default=0.5)
    s.add_argument("--rate-limit", type=int, default=0)
    s.add_argument("--tokens-per-s", type=float, default=0.0)
    r = sub.add_parser("run")
    r.add_argument("--n", type=int, default=2000)
    r.add_argument("--parse-n", type=int, default=5000)
    r.add_argument("--latency", type=float, default=0.5)
    r.add_argument("--concurrency", default="1,8,32,64")
    r.add_argument("--seconds", type=float, default=6.0, help="target duration of each concurrency level")
    r.add_argument("--steps", default="parse,tokens,extract,rerun,index,ask",
                   help="any of parse,tokens,extract,rerun,index,recall,retrieval,ask,add,stats-index,chroma,chroma-recall,serve,hnsw,stats; "
                        "results of earlier steps are kept in WORK/results.json, so a long run resumes")
    r.add_argument("--work", default=None, help="work folder (kept; reused corpus)")
    r.add_argument("--out", default="bench.json")
    r.add_argument("--workers", type=int, default=2, help="processes for the full run and the second re-run")
    r.add_argument("--reuse", action="store_true", help="keep a finished first full run in --work and only re-run")
    r.add_argument("--stats-items", type=int, default=1_000_000, help="items in the store for the stats/page step")
    r.add_argument("--add-letters", type=int, default=10_000, help="letters added to the built index (step add)")
    r.add_argument("--wide-letters", type=int, default=1_800_000,
                   help="step wide: retrieval over the index's segments and copies of them, as many as this many letters have")
    r.add_argument("--chroma-letters", type=int, default=100_000, help="letters indexed through a Chroma server (step chroma)")
    r.add_argument("--hnsw", default="16/100,32/200", help="M/ef_construction settings of step hnsw (needs chroma-hnswlib)")
    nv = sub.add_parser("naive", help="accuracy and tokens of the naive one-call baseline vs imr extract")
    nv.add_argument("--model", required=True, help="PROVIDER:MODEL, e.g. llama-cpp:PATH.gguf")
    nv.add_argument("--suite", default=str(Path(__file__).resolve().parents[2] / "evals"))
    nv.add_argument("--only", default=None, help="glob over letter ids, e.g. '00*' (the real letters)")
    nv.add_argument("--out", default="naive.json")
    a = ap.parse_args()
    if a.cmd == "naive":
        from .naive import cmd_naive

        return cmd_naive(a)
    {"corpus": cmd_corpus, "serve": cmd_serve, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    main()
