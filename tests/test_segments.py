"""Search segments: the parallel build writes what one process writes; adding letters writes a new
segment and rewrites none; a re-indexed letter is found once, in its new segment; small segments
are merged once they pile up."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imr_llm.cli import app

runner = CliRunner()
LETTERS = Path(__file__).parent.parent / "evals" / "letters"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """Layout-parser records of the 91 letters in evals/letters."""
    d = tmp_path_factory.mktemp("recs")
    from imr_llm.config import Settings
    from imr_llm.run.runner import extract

    out = d / "records.jsonl"
    extract(sorted(str(p) for p in LETTERS.iterdir() if p.suffix in (".txt", ".pdf")), Settings(data_dir=d / "data"), out, None, 8, use_cache=False)
    assert len(out.read_text().splitlines()) == 91
    return out


def _state(data: Path) -> dict:
    from imr_llm.index import Index

    idx = Index(data, embedder=None)
    rows = dict(idx.store.db.execute("SELECT id, body FROM chunks").fetchall())
    recs = dict(idx.store.db.execute("SELECT letter_id, data FROM records").fetchall())
    vecs = {}
    for s in idx.segments():
        ids = idx.store.rows(int(r) for r in s.rowids)
        for i, r in enumerate(s.rowids):
            if int(r) in ids and ids[int(r)]["seg"] == s.num:
                vecs.setdefault(ids[int(r)]["id"], []).append(np.asarray(s.vecs[i], dtype=np.float32))
    idx.close()
    return {"rows": rows, "records": recs, "vecs": vecs}


def _index(data: Path, records: Path, monkeypatch, workers: int, *extra: str) -> str:
    monkeypatch.setenv("IMR_DATA_DIR", str(data))
    monkeypatch.setenv("IMR_INDEX_WORKERS", str(workers))
    res = runner.invoke(app, ["index", str(records), *extra])
    assert res.exit_code == 0, res.output
    return res.output


def test_parallel_build_writes_what_one_process_writes(records, tmp_path, monkeypatch):
    _index(tmp_path / "one", records, monkeypatch, 1)
    _index(tmp_path / "two", records, monkeypatch, 2)
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    assert a["rows"] == b["rows"] and a["records"] == b["records"] and len(a["rows"]) > 300
    assert set(a["vecs"]) == set(a["rows"]) == set(b["vecs"])
    assert all(len(v) == 1 and np.allclose(v[0], b["vecs"][k][0], atol=2e-3) for k, v in a["vecs"].items())


def test_parallel_build_through_a_chroma_server(records, tmp_path, monkeypatch, chroma_server):
    """Workers embed, the one writer sends their vectors to the server's lists: the same passages,
    each with a vector on the server equal to the one-process build's, and segment key files as the
    store says."""
    from imr_llm.index import Index

    got, pools = {}, []
    real = Index._prepared_by_workers
    monkeypatch.setattr(Index, "_prepared_by_workers", lambda self, *a: (pools.append(a[1]), real(self, *a))[1])
    for workers in (1, 2):
        with chroma_server(tmp_path / f"srv{workers}"):
            data = tmp_path / f"d{workers}"
            _index(data, records, monkeypatch, workers)
            idx = Index(data, embedder=None)
            ids = [c for (c,) in idx.store.db.execute("SELECT id FROM chunks ORDER BY id")]
            found, mat = idx.server.vectors_of(ids)
            keys = {}
            for s in idx.segments():
                k, li = s.server_keys()
                keys.update(zip(s.rowids.tolist(), zip(k.tolist(), li.tolist())))
            store = {r: (k.encode(), li) for r, k, li in idx.store.db.execute("SELECT rowid, vkey, vlist FROM server_vectors")}
            assert keys == store and len(store) == len(ids) > 300
            got[workers] = dict(zip(found, mat))
            idx.close()
    assert pools == [2]  # the second build's letters were embedded by two worker processes
    assert set(got[1]) == set(got[2]) and len(got[1]) > 300
    assert all(np.allclose(v, got[2][c], atol=2e-3) for c, v in got[1].items())


def test_adding_letters_writes_one_segment_and_rewrites_none(records, tmp_path, monkeypatch):
    lines = records.read_text().splitlines(keepends=True)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text("".join(lines[:60]))
    second.write_text("".join(lines[60:]))
    data = tmp_path / "d"
    _index(data, first, monkeypatch, 1)
    seg1 = data / "index" / "segments" / "000001"
    before = {p.name: p.read_bytes() for p in seg1.iterdir()}
    out = _index(data, second, monkeypatch, 1)
    assert "1 new search segment" in out
    assert {p.name: p.read_bytes() for p in seg1.iterdir()} == before  # never rewritten
    whole = tmp_path / "whole"
    _index(whole, records, monkeypatch, 1)
    a, b = _state(data), _state(whole)
    assert a["rows"] == b["rows"] and set(a["vecs"]) == set(b["vecs"])  # every chunk searchable once
    _items_columns_are_the_tables(data)
    # counts are exact whatever the segments
    q = ["ask", "How many physical therapy requests were upheld?", "--json"]
    monkeypatch.setenv("IMR_DATA_DIR", str(data))
    n_two = json.loads(runner.invoke(app, q).output)["count"]
    monkeypatch.setenv("IMR_DATA_DIR", str(whole))
    assert json.loads(runner.invoke(app, q).output)["count"] == n_two > 0

    # a changed letter: its chunks move to a new segment; the old segment's entries are never returned
    rec = json.loads(lines[0])
    rec["items"][0]["decision"] = "Overturned" if rec["items"][0]["decision"] == "Upheld" else "Upheld"
    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps(rec) + "\n")
    out = _index(data, changed, monkeypatch, 1)
    assert "1 new search segment" in out
    from imr_llm.index import Index
    from imr_llm.query.retrieve import Retriever

    r = Retriever(Index(data, embedder=None))
    found = r.dense(np.asarray(r.index.embedder([rec["items"][0]["request"]]), dtype=np.float32), 400) + \
        r.lexical(rec["items"][0]["request"], 400)
    rows = r.index.store.rows({rid for _, rid, _ in found})
    live = r._ids(found, rows)
    ids = [rows[rid]["id"] for _, rid, _ in found if rid in rows]
    assert len(live) == len(set(live)) and any(i.startswith(rec["letter_id"] + ":") for i in live)
    stale = [n for _, rid, n in found if rid not in rows or rows[rid]["seg"] != n]
    assert stale and all(i in live for i in ids)  # the old entries were found, and dropped
    from imr_llm.core.filters import Filters

    hits = r.search(rec["items"][0]["request"], k=20, per_letter=20, filters=Filters.of(letter_id=rec["letter_id"]))
    mine = [h for h in hits if h.row["letter_id"] == rec["letter_id"] and h.row["item"] == 0]
    assert mine and all(h.row["decision"] == rec["items"][0]["decision"] for h in mine)
    _items_columns_are_the_tables(data)


def _items_columns_are_the_tables(data: Path) -> None:
    """items.npz, brought up to date run by run, equals one written from the items table."""
    from imr_llm.index.store import ITEM_FACETS, Store
    from imr_llm.query.stats import load_facets

    got = load_facets(data / "index")
    st = Store(data / "index" / "store.sqlite")
    st.write_item_facets(data / "fresh.npz")
    with np.load(data / "fresh.npz") as z:
        want = {k: z[k] for k in z.files}
    assert list(got["rowid"]) == list(want["rowid"]) and str(got["__version__"]) == str(want["__version__"])
    for c in ITEM_FACETS:
        assert list(got[f"{c}__vocab"][got[c]]) == list(want[f"{c}__vocab"][want[c]]), c
    from imr_llm.index import Index

    # the newest decision ("this year" in a question) read from the columns is the table's
    assert Index(data, embedder=None).latest_decision() == st.latest_decision() is not None


def test_small_segments_are_merged(records, tmp_path, monkeypatch):
    import imr_llm.index as index_mod

    monkeypatch.setattr(index_mod, "MERGE_AT", 3)
    lines = records.read_text().splitlines(keepends=True)
    data = tmp_path / "d"
    for k in range(3):
        part = tmp_path / f"p{k}.jsonl"
        part.write_text("".join(lines[k * 30:(k + 1) * 30]))
        _index(data, part, monkeypatch, 1)
    db = sqlite3.connect(data / "index" / "store.sqlite")
    segs = db.execute("SELECT num, chunks FROM segments").fetchall()
    assert len(segs) == 1 and segs[0][1] == db.execute("SELECT count(*) FROM chunks").fetchone()[0]
    assert sorted(p.name for p in (data / "index" / "segments").iterdir()) == [f"{segs[0][0]:06d}"]
    whole = tmp_path / "whole"
    part = tmp_path / "p.jsonl"
    part.write_text("".join(lines[:90]))
    _index(whole, part, monkeypatch, 1)
    a, b = _state(data), _state(whole)
    assert a["rows"] == b["rows"] and all(len(v) == 1 for v in a["vecs"].values()) and set(a["vecs"]) == set(b["vecs"])


@pytest.mark.parametrize("filtered", ["one by one", "lists scanned"])
def test_a_large_segment_searches_its_lists(records, tmp_path, monkeypatch, filtered):
    """From IVF_MIN chunks a segment keeps its float16 vectors in faiss inverted lists only: the same
    vectors as a small segment's, scores exact at float16; a filter's passages scored exactly, read
    one by one or by scanning the lists that hold them."""
    import imr_llm.index.segments as segments
    from imr_llm.core.filters import Filters
    from imr_llm.index import Index
    from imr_llm.query.retrieve import Retriever

    _index(tmp_path / "flat", records, monkeypatch, 1)
    monkeypatch.setattr(segments, "IVF_MIN", 100)
    if filtered == "lists scanned":
        monkeypatch.setattr(segments, "EXACT_FEW", 0)
        monkeypatch.setattr(segments, "SCAN_LISTS_MAX", 10**6)
        calls = []
        real = segments.Segment._scan_lists
        monkeypatch.setattr(segments.Segment, "_scan_lists", lambda self, *a: calls.append(1) or real(self, *a))
    _index(tmp_path / "ivf", records, monkeypatch, 1)
    seg = Index(tmp_path / "ivf", embedder=None).segments()[0]
    assert seg.ivf and not (seg.dir / "vectors.f16").exists() and (seg.dir / "ivf.faiss").exists()
    flat = Index(tmp_path / "flat", embedder=None).segments()[0]
    assert not flat.ivf and np.array_equal(np.asarray(seg.rowids), np.asarray(flat.rowids))
    assert np.array_equal(seg.vectors(), flat.vectors())
    r = Retriever(Index(tmp_path / "ivf", embedder=None))
    vecs = seg.vectors().astype(np.float32)
    pos = {int(x): i for i, x in enumerate(seg.rowids)}
    for q in ("why was physical therapy denied", "opioids without urine drug screening", "acupuncture after fusion"):
        qv = np.asarray(r.index.embedder([q]), dtype=np.float32)
        got = r.dense(qv, 10)
        assert len(got) == 10 and all(abs(sc - float(vecs[pos[rid]] @ qv[0])) < 1e-3 for sc, rid, _ in got)
        f = Filters.of(category="acupuncture")
        m = f.facet_mask(seg.facets())
        exact = np.where(m, vecs @ qv[0], -np.inf)
        want = [int(seg.rowids[i]) for i in np.argsort(-exact)[:5]]
        assert [rid for _, rid, _ in r.dense(qv, 5, r._masks(f))] == want  # every allowed passage scored: exact
        f = Filters.of(decision="Upheld")
        exact = np.where(f.facet_mask(seg.facets()), vecs @ qv[0], -np.inf)
        got = r.dense(qv, 8, r._masks(f))
        assert [rid for _, rid, _ in got] == [int(seg.rowids[i]) for i in np.argsort(-exact)[:8]]
        assert all(abs(sc - exact[pos[rid]]) < 1e-3 for sc, rid, _ in got)
    if filtered == "lists scanned":
        assert len(calls) == 6
    ans = r.search("why were physical therapy requests upheld after fusion", k=5)
    assert ans and all(h.row["quote"] for h in ans)


@pytest.mark.parametrize("check_from", [1, 64, 16_384])
@pytest.mark.parametrize("vocab", [400, 40])
def test_pruned_bm25_equals_scoring_every_passage(check_from, vocab, monkeypatch):
    """Max-score pruning returns the same top n as bm25s adding up every posting, for queries with
    rare, common and repeated words, with and without filters."""
    import bm25s

    from imr_llm.index import bm25

    monkeypatch.setattr(bm25, "CHECK_FROM", check_from)
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(vocab)]
    # Zipf (a few words in nearly every passage), or a small flat vocabulary (passages with many
    # common words outscore those with one rare word: what pruning must not lose)
    p = 1.0 / np.arange(1, vocab + 1) ** (1.1 if vocab > 100 else 0.3)
    docs = [" ".join(rng.choice(words, size=rng.integers(5, 40), p=p / p.sum())) for _ in range(3000)]
    bm = bm25s.BM25()
    bm.index(bm25s.tokenize(docs, stopwords=None, show_progress=False), show_progress=False)
    sc = bm.scores
    ub = bm25.term_max(sc["data"], sc["indptr"])
    masks = [None, rng.random(3000) < 0.85, rng.random(3000) < 0.01, np.zeros(3000, dtype=bool)]
    checked = 0
    for qi in range(60):
        q = list(rng.choice(words[:40], size=rng.integers(1, 4))) + list(rng.choice(words, size=rng.integers(0, 7)))
        if qi % 7 == 0:
            q += q[:1]  # a repeated word counts twice
        ids, counts = np.unique([bm.vocab_dict[w] for w in q if w in bm.vocab_dict], return_counts=True)
        for mask in masks:
            full = bm.get_scores(q, weight_mask=None if mask is None else mask.astype(np.float32))
            want = np.flatnonzero(full > 0)
            want = want[np.lexsort((want, -full[want]))][:20]
            got_s, got_p = bm25.top_n(sc["data"], sc["indices"], sc["indptr"], 3000, ids, counts.astype(np.float32),
                                      ub[ids], 20, mask)
            np.testing.assert_allclose(got_s, full[want], rtol=1e-5)
            gap = np.abs(np.diff(full[want])) > 1e-5
            distinct = np.r_[True, gap] & np.r_[gap, True] if len(want) else np.zeros(0, dtype=bool)
            assert set(got_p[distinct]) == set(want[distinct])  # the same passages where no tie makes the order arbitrary
            if mask is not None:
                assert mask[got_p].all()
            checked += len(want)
    assert checked > 1000


def test_a_segment_without_term_maxima_searches_the_same_and_gets_them(records, tmp_path, monkeypatch):
    """A segment written before termmax.npy existed (0.4.0): the same lexical results, read from
    its lists; the next `imr index` writes the file, equal to the one a new segment gets."""
    from imr_llm.index import Index
    from imr_llm.query.retrieve import Retriever

    data = tmp_path / "d"
    _index(data, records, monkeypatch, 1)
    tm = data / "index" / "segments" / "000001" / "termmax.npy"
    want_bytes = tm.read_bytes()
    qs = ["physical therapy after fusion", "opioids urine drug screen", "acupuncture", "MRI lumbar spine radiculopathy"]

    def lexical():
        r = Retriever(Index(data, embedder=None))
        return [r.lexical(q, 50) for q in qs]

    want = lexical()
    assert all(want)
    tm.unlink()
    assert lexical() == want
    out = _index(data, records, monkeypatch, 1)
    assert "0 new search segment" in out and tm.read_bytes() == want_bytes
    assert lexical() == want


def test_chroma_server_search_over_segments_finds_what_the_local_index_finds(records, tmp_path, monkeypatch, chroma_server):
    """Three segments (two adds and a changed letter, whose old passages stay in an older segment)
    in several lists on a real chroma run: every search, unfiltered, under a broad filter
    (over-fetched, and over-fetched short so the lists score the filter's passages) and narrower
    ones, finds the passages the local index finds."""
    import imr_llm.query.retrieve as retrieve
    from imr_llm.core.filters import Filters
    from imr_llm.index import Index
    from imr_llm.query.retrieve import Retriever

    lines = records.read_text().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["items"][0]["decision"] = "Overturned" if rec["items"][0]["decision"] == "Upheld" else "Upheld"
    parts = [tmp_path / f"p{i}.jsonl" for i in range(3)]
    for p, text in zip(parts, ("".join(lines[:60]), "".join(lines[60:]), json.dumps(rec) + "\n")):
        p.write_text(text)
    asks = ["why were physical therapy requests upheld after spinal fusion surgery?", "acupuncture for chronic low back pain",
            "opioid weaning and urine drug screens", "was the MRI of the knee medically necessary"]
    filters = [None, Filters.of(decision="Upheld"), Filters.of(decision="Overturned"), Filters.of(category="physical_therapy"),
               Filters.of(category="medication", decision="Upheld")]

    def searches(data):
        r = Retriever(Index(data, embedder=None))
        return [[h.id for h in r.search(q, k=8, filters=f, per_letter=20)] for q in asks for f in filters]

    def build(data):
        for p in parts:
            _index(data, p, monkeypatch, 1)

    with chroma_server(tmp_path / "srv"):
        build(tmp_path / "server")
        idx = Index(tmp_path / "server", embedder=None)
        assert len(idx.segments()) == 3 and len(idx.server.centroids()) > 1
        # the changed letter's first passages are dead in segment 1 (their vectors left the server)
        assert len(idx.store.dead_rowids(1)) == idx.store.db.execute(
            "SELECT count(*) FROM chunks WHERE letter_id=?", (rec["letter_id"],)).fetchone()[0] > 0
        # each decision's copy of the lists holds exactly the vectors its passages have (the changed
        # letter's old ones gone), in the list that holds the vector
        srv, db = idx.server, idx.store.db
        assert srv.sided
        for side, decision in ((1, "Upheld"), (2, "Overturned")):
            want = set(db.execute("SELECT DISTINCT s.vkey, s.vlist FROM server_vectors s JOIN chunk_rows c ON c.rowid = s.rowid "
                                  "WHERE c.decision = ?", (decision,)))
            have = {(key, k) for k in range(len(srv.centroids())) for key in srv.list_collection(k, side).get(include=[])["ids"]}
            assert want and have == want
        idx.close()
        monkeypatch.setattr(retrieve, "OVERFETCH_AT", 0.3)
        served = searches(tmp_path / "server")
        monkeypatch.setattr(retrieve, "OVERFETCH_AT", 0.0)  # every filter over-fetched, 3 vectors: short
        monkeypatch.setattr(retrieve, "OVERFETCH_MAX", 3)
        short = searches(tmp_path / "server")
        db = sqlite3.connect(tmp_path / "server" / "index" / "store.sqlite")
        db.execute("DELETE FROM dead_rows")  # an index written before they were kept: the lists skip the gone vectors
        db.commit()
        db.close()
        older = searches(tmp_path / "server")
    monkeypatch.delenv("IMR_CHROMA_URL")
    build(tmp_path / "local")
    local = searches(tmp_path / "local")
    assert sum(map(len, local)) > 100 and all(local[i] for i in range(0, len(local), len(filters)))
    assert served == local and short == local and older == local
