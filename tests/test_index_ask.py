"""Index and ask over the example letters, as a user runs it."""
from __future__ import annotations

import json
import os
import shutil
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from imr_llm.cli import app



runner = CliRunner()
FUSION_LETTERS = {"CM14-0095145", "000_2fb87f21f9d4b91f"}  # 004 (header, case number) and 000
NO_FUSION = "001_21c8226c7447611c"


@pytest.fixture
def indexed(seed_dir):
    res = runner.invoke(app, ["ingest", str(seed_dir)])
    assert res.exit_code == 0, res.output
    return Path(os.environ["IMR_DATA_DIR"])


def ask_json(*args):
    res = runner.invoke(app, ["ask", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _assert_citations_real(ans):
    for c in ans["citations"]:
        text = Path(c["source_path"]).read_text()
        assert text[c["start"]:c["end"]] == c["quote"], c


def test_fusion_question_cites_exactly_the_fusion_letters(indexed):
    ans = ask_json("why were physical therapy requests upheld after spinal fusion surgery?")
    cited = {c["cite_id"] for c in ans["citations"]}
    assert cited == FUSION_LETTERS and NO_FUSION not in cited
    _assert_citations_real(ans)
    conds = {(c["field"], tuple(c.get("values", ())), c["negate"]) for c in ans["reading"]["filters"]["conditions"]}
    assert ("fusion", (), False) in conds and ("decision", ("Upheld",), False) in conds


@pytest.mark.parametrize("question,count", [
    ("How many acupuncture requests were overturned?", 0),
    ("How many physical therapy requests were upheld?", 3),
    ("how many disputed items concerned the cervical spine?", 3),
    ("How many decisions came from reviewers licensed outside California?", 0),
])
def test_counting_questions_are_exact(indexed, question, count):
    ans = ask_json(question)
    assert ans["mode"] == "count" and ans["count"] == count


def test_listing_and_grounds(indexed):
    ans = ask_json("Which letters upheld acupuncture requests?")
    assert ans["mode"] == "list" and [x["letter_id"] for x in ans["letters"]] == [NO_FUSION]
    ans = ask_json("on what grounds were acupuncture requests denied?")
    assert {c["letter_id"] for c in ans["citations"]} == {NO_FUSION}
    _assert_citations_real(ans)
    ans = ask_json("why was therapy denied", "--region", "cervical", "--k", "5")
    assert {c["letter_id"] for c in ans["citations"]} == {NO_FUSION, "004_9cf12295204d3b85"}


def test_reindex_upserts_without_duplicates(indexed):
    """Re-indexing the same records embeds nothing and writes no segment; every chunk is in exactly
    one live segment, with its vector."""
    import sqlite3
    db = sqlite3.connect(indexed / "index" / "store.sqlite")
    n = db.execute("select count(*) from chunks").fetchone()[0]
    segs = db.execute("select num, chunks from segments").fetchall()
    res = runner.invoke(app, ["index", str(indexed / "records.jsonl")])
    assert res.exit_code == 0 and "0 embedded" in res.output and "0 new search segment" in res.output
    assert db.execute("select count(*) from chunks").fetchone()[0] == n
    assert db.execute("select num, chunks from segments").fetchall() == segs and sum(c for _, c in segs) == n
    from imr_llm.index import Index
    got = sorted(int(r) for s in Index(indexed, embedder=None).segments() for r in s.rowids)
    assert got == sorted(r for (r,) in db.execute("select rowid from chunks"))
    seg = Index(indexed, embedder=None).segments()[0]
    assert seg.vecs.shape == (len(seg), 256) and np.all(np.abs(np.linalg.norm(np.asarray(seg.vecs, dtype=np.float32), axis=1) - 1) < 1e-2)


def test_llm_answer_citations_verified_and_inventions_removed(indexed, fake_server, monkeypatch):
    srv = fake_server(mode="synthetic", invent=True)
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    ans = ask_json("why were physical therapy requests upheld after spinal fusion surgery?", "--model", "compatible:fake")
    assert {c["cite_id"] for c in ans["citations"]} == FUSION_LETTERS
    _assert_citations_real(ans)
    assert any("returned to full duty" in r for r in ans["removed"])
    assert any(r.startswith("[99]") for r in ans["removed"])
    assert "[99]" not in ans["answer"] and "[CM14-0095145 #1]" in ans["answer"]


def test_wrong_embedder_and_broken_index_give_clear_messages(indexed, monkeypatch):
    monkeypatch.setenv("IMR_EMBEDDER", "chroma-default")
    res = runner.invoke(app, ["index", str(indexed / "records.jsonl")])
    assert res.exit_code == 2 and "built with embedder 'wordllama" in res.output and "--rebuild" in res.output
    monkeypatch.delenv("IMR_EMBEDDER")
    (indexed / "index" / "store.sqlite").write_bytes(b"garbage" * 100)
    for f in (indexed / "index").glob("store.sqlite-*"):
        f.unlink()
    res = runner.invoke(app, ["ask", "why?"])
    assert res.exit_code == 2 and "damaged" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["index", "--rebuild", str(indexed / "records.jsonl")])
    assert res.exit_code == 0, res.output
    assert ask_json("How many physical therapy requests were upheld?")["count"] == 3


def test_chroma_server_path(tmp_path, monkeypatch, seed_dir, chroma_server):
    with chroma_server(tmp_path / "srv") as port:
        res = runner.invoke(app, ["ingest", str(seed_dir)])
        assert res.exit_code == 0, res.output
        assert not (Path(os.environ["IMR_DATA_DIR"]) / "index" / "chroma").exists()  # vectors live on the server
        ans = ask_json("why were physical therapy requests upheld after spinal fusion surgery?")
        assert {c["cite_id"] for c in ans["citations"]} == FUSION_LETTERS
        import chromadb
        import numpy as np
        client = chromadb.HttpClient(host="127.0.0.1", port=port)
        names = sorted(c if isinstance(c, str) else c.name for c in client.list_collections())
        lists = [n for n in names if re.fullmatch(r"imr_chunks-l\d\d", n)]
        assert "imr_chunks-centroids" in names and lists  # inverted lists, one collection each
        db = sqlite3.connect(Path(os.environ["IMR_DATA_DIR"]) / "index" / "store.sqlite")
        passages, distinct = db.execute("SELECT count(*), count(DISTINCT vkey) FROM server_vectors").fetchone()
        assert passages == db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        assert sum(client.get_collection(n).count() for n in lists) == distinct  # each vector once
        # and each decision's copy of a list: the vectors of that decision's passages, once
        for suffix, side in (("u", 1), ("o", 2)):
            copies = [n for n in names if re.fullmatch(rf"imr_chunks-l\d\d{suffix}", n)]
            want = db.execute("SELECT count(DISTINCT vkey) FROM server_vectors WHERE vside=?", (side,)).fetchone()[0]
            assert sum(client.get_collection(n).count() for n in copies) == want and (want > 0 or side == 2)
        col = client.get_collection(lists[0])
        hnsw = col.configuration_json["hnsw"]  # cosine, searched wider than Chroma's default
        assert hnsw["space"] == "cosine" and hnsw["ef_search"] == 1000
        # the server's vectors are the passages' own: each scores 1.0 against itself
        key, vlist, rowid = db.execute("SELECT vkey, vlist, rowid FROM server_vectors LIMIT 1").fetchone()
        v = np.asarray(client.get_collection(f"imr_chunks-l{vlist:02d}").get(ids=[key], include=["embeddings"])["embeddings"][0])
        assert abs(float(v @ v) - 1.0) < 1e-2
        # re-indexing a changed letter replaces its vectors: no passage or vector is left behind
        res = runner.invoke(app, ["ingest", str(seed_dir)])
        assert res.exit_code == 0, res.output
        assert db.execute("SELECT count(*) FROM server_vectors").fetchone()[0] == passages
        # each segment keeps its passages' vector keys and lists, as the store says
        seg = next((Path(os.environ["IMR_DATA_DIR"]) / "index" / "segments").glob("0*"))
        rowids, keys, vlists = (np.load(seg / f) for f in ("rowids.npy", "vkeys.npy", "vlists.npy"))
        assert len(keys) == len(rowids) == len(vlists)
        for r, k, li in zip(rowids.tolist(), keys.tolist(), vlists.tolist()):
            assert db.execute("SELECT vkey, vlist FROM server_vectors WHERE rowid=?", (r,)).fetchone() == (k.decode(), li)
        import imr_llm.query.retrieve as retrieve
        monkeypatch.setattr(retrieve, "OVERFETCH_AT", 0.5)  # of 11 passages: Upheld's 6 over-fetched, PT's 5 named to the lists
        served = _searches()
        # every filter over-fetches 2 vectors, runs short and has the lists score its passages instead
        monkeypatch.setattr(retrieve, "OVERFETCH_AT", 0.0)
        monkeypatch.setattr(retrieve, "OVERFETCH_MAX", 2)
        short = _searches()
    # the same letters indexed without a server: every search, filtered or not, finds the same passages
    monkeypatch.delenv("IMR_CHROMA_URL")
    monkeypatch.setenv("IMR_DATA_DIR", str(tmp_path / "local"))
    assert runner.invoke(app, ["ingest", str(seed_dir)]).exit_code == 0
    assert _searches() == served == short and served[1] and served[3]


def _searches() -> list[list[str]]:
    """Chunk ids found for one question under no filter, a broad one and narrow ones."""
    from imr_llm.core.filters import Filters
    from imr_llm.index import Index
    from imr_llm.query.retrieve import Retriever

    r = Retriever(Index(Path(os.environ["IMR_DATA_DIR"]), embedder=None))
    q = "why were physical therapy requests upheld after spinal fusion surgery?"
    return [[h.id for h in r.search(q, k=8, filters=f, per_letter=20)]
            for f in (None, Filters.of(decision="Upheld"), Filters.of(decision="Overturned"),
                      Filters.of(category="physical_therapy"), Filters.of(category="transportation"))]


def test_compatible_embedding_endpoint_and_no_mixing(seed_dir, fake_server, monkeypatch):
    srv = fake_server(mode="synthetic")
    monkeypatch.setenv("IMR_EMBED_BASE_URL", srv.base_url)
    monkeypatch.setenv("IMR_EMBEDDER", "compatible:hash-embed")
    res = runner.invoke(app, ["ingest", str(seed_dir)])
    assert res.exit_code == 0, res.output
    assert srv.stats.faults.get("embeddings", 0) >= 1 and "compatible:hash-embed@" in res.output
    ans = ask_json("why were physical therapy requests upheld after spinal fusion surgery?")
    assert {c["cite_id"] for c in ans["citations"]} == FUSION_LETTERS
    monkeypatch.setenv("IMR_EMBEDDER", "wordllama")  # another embedder on the same index is refused
    res = runner.invoke(app, ["index", str(Path(os.environ["IMR_DATA_DIR"]) / "records.jsonl")])
    assert res.exit_code == 2 and "compatible:hash-embed" in res.output and "--rebuild" in res.output


def test_newer_schema_and_damaged_segment(indexed, monkeypatch):
    import sqlite3
    db = sqlite3.connect(indexed / "index" / "store.sqlite")
    db.execute("UPDATE meta SET v='9.0' WHERE k='schema_version'")
    db.commit()
    db.close()
    res = runner.invoke(app, ["ask", "why was therapy denied?"])
    assert res.exit_code == 2 and "schema 9.0" in res.output and "--rebuild" in res.output
    assert runner.invoke(app, ["index", "--rebuild", str(indexed / "records.jsonl")]).exit_code == 0
    # a search segment's vectors cut short: one line, never an answer from part of the index
    vf = next((indexed / "index" / "segments").glob("*/vectors.f16"))
    vf.write_bytes(vf.read_bytes()[:1000])
    res = runner.invoke(app, ["ask", "why was therapy denied?"])
    assert res.exit_code == 2 and "damaged" in res.output and "--rebuild" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["index", "--rebuild", str(indexed / "records.jsonl")])
    assert res.exit_code == 0, res.output
    assert ask_json("why was therapy denied?")["citations"]


def test_local_only_refuses_remote_embedders(monkeypatch, seed_dir):
    monkeypatch.setenv("IMR_LOCAL_ONLY", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefabcdefabcdef")
    for spec, why in (("openai:text-embedding-3-small", "remote"), ("chroma-default", "downloads")):
        monkeypatch.setenv("IMR_EMBEDDER", spec)
        res = runner.invoke(app, ["ingest", str(seed_dir)])
        assert res.exit_code == 2 and "IMR_LOCAL_ONLY" in res.output and why in res.output, res.output
        assert "sk-test" not in res.output
    monkeypatch.setenv("IMR_EMBEDDER", "compatible:x")
    monkeypatch.setenv("IMR_EMBED_BASE_URL", "http://93.184.216.34/v1")
    res = runner.invoke(app, ["ingest", str(seed_dir)])
    assert res.exit_code == 2 and "refusing embedding endpoint" in res.output


def test_terminal_answer_shows_every_citation_marker(tmp_path, monkeypatch, seed_dir):
    """Markers like "[acme_letter #2]" look like rich markup tags; they must be printed, not eaten."""
    monkeypatch.setenv("COLUMNS", "240")
    d = tmp_path / "letters"
    d.mkdir()
    shutil.copy(seed_dir / f"{NO_FUSION}.txt", d / "acme_letter.txt")
    assert runner.invoke(app, ["ingest", str(d)]).exit_code == 0
    ans = ask_json("why were acupuncture requests upheld?")
    markers = {c["marker"] for c in ans["citations"]}
    assert markers and all(m.startswith("[acme_letter #") for m in markers)
    res = runner.invoke(app, ["ask", "why were acupuncture requests upheld?"])
    assert res.exit_code == 0, res.output
    for m in markers:
        assert m in res.output
    assert "text[start:end] == quote" in res.output
    for c in ans["citations"]:
        assert " ".join(c["quote"].split())[:60] in " ".join(res.output.split())


@pytest.mark.parametrize("filters", [
    {"decision": "Upheld"}, {"category": "acupuncture"}, {"region": "cervical"}, {"fusion": True},
    {"decision": "upheld", "category": "physical_therapy", "region": "lumbar"}, {"licensed_outside_ca": False},
    {"license_state": "california"}, {"kind": "summary"}, {"decision": "Overturned"},
])
def test_facet_masks_select_exactly_what_the_store_selects(indexed, filters):
    """The fast path (facet columns beside the mirror) keeps exactly the chunks the SQL filter keeps."""

    import numpy as np

    from imr_llm.core.filters import Filters
    from imr_llm.index import Index
    from imr_llm.query.retrieve import Retriever

    f = Filters.of(**filters)
    r = Retriever(Index(indexed, embedder=None))
    store = r.index.store
    chosen = set()
    for seg in r.segments():
        rows = store.rows(int(x) for x in seg.rowids[np.flatnonzero(f.facet_mask(seg.facets()))])
        chosen |= {d["id"] for d in rows.values()}
    where, args = f.sql()
    assert chosen == {row[0] for row in store.db.execute(f"SELECT id FROM chunk_rows WHERE {where}", args)}
    hits = r.search("physical therapy functional improvement", k=6, filters=f)
    assert all(f.match(h.row) for h in hits)


def test_server_lists_against_a_real_chroma_run(tmp_path, chroma_server):
    """The Chroma server's inverted lists: trained centroids, each distinct vector once, search equal
    to an exact scan when every list is probed, a shared vector kept until its last passage goes."""
    import numpy as np
    from imr_llm.index.store import Store
    from imr_llm.index.vectors import ServerLists, vector_key

    with chroma_server(tmp_path / "srv"):
        rng = np.random.default_rng(3)
        centers = rng.normal(size=(4, 32))
        v = np.vstack([c + 0.3 * rng.normal(size=(60, 32)) for c in centers])
        v = np.vstack([v, v[:40]])  # 40 passages embedded the same as earlier ones
        v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
        st = Store(tmp_path / "store.sqlite")
        rowids = list(range(1, len(v) + 1))
        st.db.executemany("INSERT INTO chunks (rowid, id, letter_id, item, n) VALUES (?,?,?,?,?)",
                          [(r, f"L{r}:0:0", f"L{r}", 0, 0) for r in rowids])
        srv = ServerLists(st, "t", "test-embedder", None)
        srv.train(v)
        assert len(srv.centroids()) == 240 // 39  # as many lists as the vectors can train
        srv.add(rowids, v)
        srv.send()
        st.commit()
        names = [n for n in (c if isinstance(c, str) else c.name for c in srv.client.list_collections()) if n.startswith("t-l")]
        assert sum(srv.client.get_collection(n).count() for n in names) == 240  # 280 passages, 240 distinct vectors
        m = v.astype(np.float32)
        for qi in (0, 70, 130, 239):
            q = m[qi] + 0.05 * rng.normal(size=32).astype(np.float32)
            q /= np.linalg.norm(q)
            got = srv.search(q, 10)
            ex = m @ q
            tenth = np.sort(ex)[-10]
            assert len(got) == 10 and all(ex[int(c[1:].split(":")[0]) - 1] >= tenth - 1e-3 for c in got)
        key = vector_key(v[0])
        lst = st.db.execute("SELECT vlist FROM server_vectors WHERE rowid=1").fetchone()[0]
        col = srv.list_collection(lst)
        srv.remove([1])  # passage 241 has the same vector: it stays
        st.commit()
        srv.delete_unused()
        assert col.get(ids=[key])["ids"] == [key]
        srv.remove([241])
        assert col.get(ids=[key])["ids"] == [key]  # until the store commits
        srv.add([241], v[240:241])  # the same passage again in the same transaction (a changed letter)
        srv.send()
        st.commit()
        srv.delete_unused()
        assert col.get(ids=[key])["ids"] == [key] and srv.passages() == 279
        srv.remove([241])
        st.commit()
        srv.delete_unused()
        assert col.get(ids=[key])["ids"] == [] and srv.passages() == 278
        # the best among some passages (a filter's), asked of the lists holding them: exact
        from imr_llm.index.vectors import server_keys
        keys, lists = server_keys(st, list(range(2, 241)))
        assert [k.decode() for k in keys] == [vector_key(x) for x in v[1:240]]
        for some in (np.arange(0, 239, 3), np.flatnonzero(lists == lists[5]), np.array([7])):
            q = m[some[0] + 1] + 0.3 * rng.normal(size=32).astype(np.float32)
            q /= np.linalg.norm(q)
            held = {int(k): np.unique(keys[some][lists[some] == k]) for k in np.unique(lists[some])}
            got = srv.search_among(q, 10, held)
            ex = np.sort(m[some + 1] @ q)[::-1]
            assert len(got) == min(10, len(some)) and {k.encode() for _, k, _ in got} <= set(keys[some].tolist())
            assert all(vector_key(v[int(np.flatnonzero(keys == k.encode())[0]) + 1]) == k and lists[keys == k.encode()][0] == li
                       for _, k, li in got)  # each with its own list
            assert np.allclose([s for s, _, _ in got], ex[:len(got)], atol=2e-3)
        ids, mat = srv.vectors_of(["L2:0:0", "L242:0:0"])
        assert sorted(ids) == ["L242:0:0", "L2:0:0"] and np.allclose(mat[0], mat[1]) and np.allclose(mat[0], m[1], atol=1e-3)


def test_upserts_the_server_did_not_take_fail_before_the_store_commits(tmp_path, chroma_server):
    """Upserts run beside the writer (it goes on while the server inserts); one the server did not
    take raises at ``send()``, which the writer calls before the store commits the rows naming it."""
    import numpy as np
    import pytest
    from imr_llm.index.store import Store
    from imr_llm.index.vectors import ServerLists

    rng = np.random.default_rng(5)
    v = rng.normal(size=(240, 32))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
    st = Store(tmp_path / "store.sqlite")
    st.db.executemany("INSERT INTO chunks (rowid, id, letter_id, item, n) VALUES (?,?,?,?,?)",
                      [(r, f"L{r}:0:0", f"L{r}", 0, 0) for r in range(1, 481)])
    with chroma_server(tmp_path / "srv"):
        srv = ServerLists(st, "t", "test-embedder", None)
        srv.train(v)
        srv.add(list(range(1, 241)), v, ["Upheld"] * 240)
        srv.send()
        st.commit()
        assert srv.passages() == 240
    # the server is gone; the lists' collections are known, so the upserts are sent, and fail
    w = (v.astype(np.float32) + 0.01 * rng.normal(size=v.shape)).astype(np.float16)
    srv.add(list(range(241, 481)), w, ["Upheld"] * 240)
    assert not srv._sent  # nothing sent yet (fewer than SEND_AT vectors a list)
    with pytest.raises(Exception):
        srv.send()
    st.rollback()
    assert st.db.execute("SELECT count(*) FROM server_vectors WHERE rowid > 240").fetchone()[0] == 0


def test_decision_copies_are_routed_by_their_own_centroids(tmp_path, chroma_server, monkeypatch):
    """A question near lists holding only Overturned passages: its best Upheld vectors are in other
    lists. A decision's copies are routed by that decision's centroids (kept in the store with the
    rows), so the one list asked is the one holding them."""
    import numpy as np
    import imr_llm.index.vectors as vectors
    from imr_llm.index.store import Store
    from imr_llm.index.vectors import ServerLists, vector_key

    rng = np.random.default_rng(11)
    a, b = rng.normal(size=32), rng.normal(size=32)
    v = np.vstack([a + 0.2 * rng.normal(size=(120, 32)), b + 0.2 * rng.normal(size=(120, 32))])
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16)
    decisions = ["Overturned"] * 120 + ["Upheld"] * 120
    st = Store(tmp_path / "store.sqlite")
    st.db.executemany("INSERT INTO chunks (rowid, id, letter_id, item, n) VALUES (?,?,?,?,?)",
                      [(r, f"L{r}:0:0", f"L{r}", 0, 0) for r in range(1, 241)])
    with chroma_server(tmp_path / "srv"):
        srv = ServerLists(st, "t", "test-embedder", None)
        srv.train(np.vstack([v[:40], v[120:160]]))  # 80 vectors: two lists, one a cluster
        srv.add(list(range(1, 241)), v, decisions)
        srv.send()
        st.commit()
        m = v.astype(np.float32)
        lists = np.array([k for (k,) in st.db.execute("SELECT vlist FROM server_vectors ORDER BY rowid")])
        assert set(lists[:120]) == {lists[0]} and set(lists[120:]) == {lists[120]} != {lists[0]}
        # the Upheld sums are the Upheld passages' vectors, per list; the Overturned list has none of them
        got = srv.side_centroids(1)
        want = m[120:].astype(np.float64).sum(axis=0)
        assert np.allclose(got[lists[120]], want / np.linalg.norm(want), atol=1e-5) and not got[lists[0]].any()
        q = 0.8 * a / np.linalg.norm(a) + 0.6 * b / np.linalg.norm(b)
        q = (q / np.linalg.norm(q)).astype(np.float32)
        monkeypatch.setattr(vectors, "PROBE", 1)
        assert srv.nearest_lists(q)[0] == lists[0]  # the lists' own centroids send it to the Overturned list
        assert srv._ask(q, 10, srv.nearest_lists(q)[:1], side=1) == []  # whose Upheld copy is empty
        best = srv.nearest(q, 10, side=1)
        ex = m[120:] @ q
        assert [k for _, k, _ in best] == [vector_key(v[120 + i]) for i in np.argsort(-ex)[:10]]
        # read back from the store by another reader: the same routing
        again = ServerLists(st, "t", "test-embedder", None)
        assert np.allclose(again.side_centroids(1), got) and again.nearest_lists(q, 1)[0] == lists[120]
        # rows rolled back: what the writer summed for them goes too (the next commit adds only its own)
        srv.add([1], v[120:121], ["Upheld"])
        st.rollback()
        srv.forget_unsent()
        srv.add([2], v[121:122], ["Upheld"])
        srv.send()
        st.commit()
        k = int(lists[120])
        stored = np.frombuffer(st.db.execute("SELECT vsum FROM server_side_sums WHERE vlist=? AND vside=1", (k,)).fetchone()[0])
        assert np.allclose(stored, want + m[121], atol=1e-6)
        assert st.db.execute("SELECT name FROM sqlite_master WHERE name='server_vectors_key_side'").fetchone()
        # an index whose copies were made before the sums were kept stays routed by the lists' centroids
        st.set_meta("server_side_sums", "0")
        st.commit()
        old = ServerLists(st, "t", "test-embedder", None)
        assert old.side_centroids(1) is None and old.nearest_lists(q, 1) == old.nearest_lists(q)
        old.add([3], v[122:123], ["Upheld"])  # its rows still say their decision (its copies need it)
        old.send()
        assert st.db.execute("SELECT vside FROM server_vectors WHERE rowid=3").fetchone() == (1,)
        st.commit()
