"""What a careless or hostile user did to earlier versions (issue 15): each case now ends in one clear
line, and no earlier result is lost or changed."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imr_llm.cli import app

from .conftest import SEEDS

runner = CliRunner()


@pytest.fixture
def letter() -> Path:
    p = Path("v.txt")
    p.write_text(SEEDS["000"].read_text())
    return p


def test_output_that_would_destroy_something_is_refused_before_any_work(letter):
    before = letter.read_bytes()
    res = runner.invoke(app, ["extract", str(letter), "--out", str(letter)])
    assert res.exit_code == 2 and "is one of the input letters" in res.output
    assert letter.read_bytes() == before
    Path("adir").mkdir()
    res = runner.invoke(app, ["extract", str(letter), "--out", "adir"])
    assert res.exit_code == 2 and "is a folder" in res.output
    os.mkfifo("fifo")
    res = runner.invoke(app, ["extract", str(letter), "--out", "fifo"])
    assert res.exit_code == 2 and "is a FIFO" in res.output
    res = runner.invoke(app, ["extract", str(letter), "--out", "r.jsonl", "--csv", "r.jsonl"])
    assert res.exit_code == 2 and "the same file" in res.output
    res = runner.invoke(app, ["extract", str(letter), "--out", "r.jsonl", "--csv", "r.errors.jsonl"])
    assert res.exit_code == 2 and "the same file" in res.output
    assert not Path("r.jsonl").exists() and "Traceback" not in res.output


def test_a_run_in_which_every_letter_fails_keeps_the_earlier_output(letter):
    res = runner.invoke(app, ["extract", str(letter), "--out", "records.jsonl", "--csv", "items.csv"])
    assert res.exit_code == 0
    good, good_csv = Path("records.jsonl").read_bytes(), Path("items.csv").read_bytes()
    Path("empty.txt").write_bytes(b"")
    res = runner.invoke(app, ["extract", "empty.txt", "--out", "records.jsonl", "--csv", "items.csv"])
    assert res.exit_code == 1 and "left as it was" in res.output
    assert Path("records.jsonl").read_bytes() == good and Path("items.csv").read_bytes() == good_csv
    assert json.loads(Path("records.errors.jsonl").read_text())["error"] == "empty file"
    # ingest: the records file under the data dir and the index keep the earlier letters
    res = runner.invoke(app, ["ingest", str(letter)])
    assert res.exit_code == 0, res.output
    data = Path(os.environ["IMR_DATA_DIR"])
    kept = (data / "records.jsonl").read_bytes()
    res = runner.invoke(app, ["ingest", "empty.txt"])
    assert res.exit_code == 1
    assert (data / "records.jsonl").read_bytes() == kept
    out = runner.invoke(app, ["ask", "How many requests?", "--json"])
    assert json.loads(out.output)["count"] == 1


def test_a_missing_folder_is_reported_and_the_rest_extracted(letter):
    res = runner.invoke(app, ["extract", "no_such_folder", str(letter), "--out", "r.jsonl"])
    assert res.exit_code == 1
    assert "error: no_such_folder: no such file or folder" in res.output
    assert len(Path("r.jsonl").read_text().splitlines()) == 1
    assert "no_such_folder" in Path("r.errors.jsonl").read_text()


def test_ask_rejects_bad_options_and_empty_questions(letter):
    assert runner.invoke(app, ["ingest", str(letter)]).exit_code == 0
    for args, msg in ((["ask", ""], "the question is empty"), (["ask", "why", "--k", "0"], "--k 0"),
                      (["ask", "why", "--decision", "Maybe"], "unknown value 'Maybe'"),
                      (["ask", "why", "--region", "moon"], "valid values: cervical"),
                      (["ask", "How many requests were overturned?", "--decision", "Upheld"], "conflicting filters")):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and msg in res.output, (args, res.output)
    # case-insensitive where unambiguous
    res = runner.invoke(app, ["ask", "How many requests?", "--category", "Physical_Therapy", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["count"] == 1
    # options add to the question's filters instead of replacing them
    q = runner.invoke(app, ["ask", "How many lumbar requests were upheld?", "--json"])
    o = runner.invoke(app, ["ask", "How many requests were upheld?", "--region", "lumbar", "--json"])
    assert json.loads(q.output)["count"] == json.loads(o.output)["count"] == 1


def test_same_file_name_in_two_folders_and_identical_copies(tmp_path):
    """`imr ingest A/` then `imr ingest B/`, both with letter.txt: both letters stay; a byte-identical
    copy is one letter listing both paths, counted once."""
    for d, seed in (("A", "000"), ("B", "001"), ("C", "000")):
        Path(d).mkdir()
        (Path(d) / "letter.txt").write_text(SEEDS[seed].read_text())
    for d in ("A", "B", "C"):
        res = runner.invoke(app, ["ingest", d])
        assert res.exit_code == 0, res.output
    ans = json.loads(runner.invoke(app, ["ask", "How many requests?", "--json"]).output)
    assert ans["count"] == 3  # 000 has one item, 001 two: C's copy of 000 is not counted again
    ids = sorted(L["letter_id"] for L in ans["letters"])
    assert ids[0] == "letter" and ids[1].startswith("letter~")
    a = next(L for L in ans["letters"] if "A" in Path(L["source_path"]).parts)
    assert {Path(p).parent.name for p in a["paths"]} == {"A", "C"}


def _r005() -> str:
    from imr_llm.core.load import read_letter

    from .conftest import LETTERS
    return read_letter(LETTERS / "r005_CM16-0228949.pdf").text


def _extract_one(name: str, text: str) -> tuple[int, dict | None, str]:
    Path(name).write_text(text)
    res = runner.invoke(app, ["extract", name, "--out", name + ".jsonl"])
    out = Path(name + ".jsonl")
    return res.exit_code, (json.loads(out.read_text()) if out.exists() and out.read_text() else None), res.output


def test_impossible_and_contradictory_dates_are_flagged_with_the_quote():
    t = _r005()
    for bad in ("02/30/2016", "13/45/2016", "00/00/0000"):
        code, rec, _ = _extract_one("d.txt", t.replace("10/14/2016", bad, 1).replace("injury on 10-14-2016", "injury", 1))
        assert code == 0 and rec["date_of_injury"] is None
        assert any(f.startswith("impossible_date: date_of_injury") and bad in f and "(left empty)" in f for f in rec["flags"]), rec["flags"]
    # the summary states it again ("sustained an industrial injury on 10-14-2016"): that statement is the value
    code, rec, _ = _extract_one("d2.txt", t.replace("10/14/2016", "02/30/2016", 1))
    assert rec["date_of_injury"] == "2016-10-14"
    ev = next(e for e in rec["evidence"] if e["field"] == "date_of_injury")
    assert ev["quote"] == "industrial injury on 10-14-2016" and ev["status"] == "exact"
    assert any(f.startswith("impossible_date: date_of_injury '02/30/2016'") and "kept: 2016-10-14" in f for f in rec["flags"])
    code, rec, _ = _extract_one("o.txt", t.replace("Date of Injury:  10/14/2016", "Date of Injury:  01/14/2017", 1))
    assert any(f.startswith("date_order: the date of injury 2017-01-14") for f in rec["flags"])
    code, rec, _ = _extract_one("f.txt", t.replace("Decision Date: 12/30/2016", "Decision Date: 12/30/2099", 1))
    assert any(f.startswith("future_date: decision_date 2099-12-30") for f in rec["flags"])


def test_pasted_twice_concatenated_and_nul_bytes():
    t = _r005()
    start = t.index("Continue physical therapy 3 times")
    code, rec, _ = _extract_one("dup.txt", t + "\n \n" + t[start:])
    assert code == 0 and len(rec["items"]) == 2
    assert any(f.startswith("duplicate_item: items[1] repeats items[0]") for f in rec["flags"])
    other = t.replace("CM16-0228949", "CM16-0999999")
    code, rec, out = _extract_one("two.txt", t + "\n \n" + other)
    assert code == 1 and rec is None and "several letters in one file (case numbers CM16-0228949, CM16-0999999)" in out
    code, rec, out = _extract_one("nul.txt", t + " " * 9000 + "\x00 tail")
    assert code == 1 and "NUL byte" in out
    block = t[start:]
    many = t + "".join("\n \n" + block.replace("Continue physical therapy", f"Physical therapy request {k}", 1) for k in range(44))
    code, rec, _ = _extract_one("many.txt", many)
    assert code == 0 and len(rec["items"]) == 45 and any(f.startswith("many_items: 45") for f in rec["flags"])


def test_rebuild_against_a_dead_chroma_server_changes_nothing(letter, monkeypatch):
    assert runner.invoke(app, ["ingest", str(letter)]).exit_code == 0
    data = Path(os.environ["IMR_DATA_DIR"])
    before = (data / "index" / "store.sqlite").read_bytes()
    monkeypatch.setenv("IMR_CHROMA_URL", "http://127.0.0.1:9")  # loopback, nothing listens there
    res = runner.invoke(app, ["index", "--rebuild", str(data / "records.jsonl")])
    assert res.exit_code == 2 and "did not answer" in res.output and "nothing was changed" in res.output
    assert "--rebuild" not in res.output.split("did not answer")[1]  # no advice to rebuild a server that is down
    monkeypatch.delenv("IMR_CHROMA_URL")
    assert (data / "index" / "store.sqlite").read_bytes() == before
    assert json.loads(runner.invoke(app, ["ask", "How many requests?", "--json"]).output)["count"] == 1
    # a local rebuild swaps in a complete new index and leaves no build folder behind
    res = runner.invoke(app, ["index", "--rebuild", str(data / "records.jsonl")])
    assert res.exit_code == 0, res.output
    assert not list(data.glob("index.rebuild-*")) and not list(data.glob("index.old-*"))
    assert json.loads(runner.invoke(app, ["ask", "How many requests?", "--json"]).output)["count"] == 1


def test_one_index_writer_at_a_time_and_readers_told_it_is_being_built(letter, tmp_path):
    import subprocess
    import sys
    import time

    data = Path(os.environ["IMR_DATA_DIR"])
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from pathlib import Path; from imr_llm.index.lock import WriterLock; "
                               f"WriterLock(Path({str(data)!r})); print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = runner.invoke(app, ["ask", "How many requests?"])
        assert res.exit_code == 2 and f"is being built (imr pid {holder.pid})" in res.output
        runner.invoke(app, ["extract", str(letter), "--out", "r.jsonl"])
        res = runner.invoke(app, ["index", "r.jsonl"])
        assert res.exit_code == 2 and f"another imr (pid {holder.pid}) is writing the index" in res.output
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    res = runner.invoke(app, ["index", "r.jsonl"])  # the lock died with its process
    assert res.exit_code == 0, res.output


def test_bad_settings_are_one_line_and_config_masks_secrets(letter, monkeypatch):
    for var, val in (("IMR_MAX_RETRIES", "abc"), ("IMR_TIMEOUT", "abc"), ("IMR_INDEX_WORKERS", "many")):
        monkeypatch.setenv(var, val)
        res = runner.invoke(app, ["extract", str(letter), "--out", "r.jsonl"])
        assert res.exit_code == 2 and res.output.startswith(f"error: {var}={val!r}") and "Traceback" not in res.output
        monkeypatch.delenv(var)
    secret = "sk-test-" + "Zq9" * 10
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("IMR_TIMEOUT", "7")
    res = runner.invoke(app, ["config"])
    assert res.exit_code == 0 and secret not in res.output and "***" in res.output
    assert "IMR_TIMEOUT" in res.output and "7.0" in res.output


def test_a_server_that_never_answers_fails_the_letter_at_its_deadline(fake_server, monkeypatch, letter):
    import time

    srv = fake_server(mode="synthetic", fault_script=["timeout"] * 20)  # accepts, then never answers
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    monkeypatch.setenv("IMR_LETTER_DEADLINE", "2")
    t0 = time.monotonic()
    res = runner.invoke(app, ["extract", str(letter), "--model", "compatible:fake", "--out", "r.jsonl", "--no-cache"])
    assert time.monotonic() - t0 < 30
    assert res.exit_code == 1 and "no answer from the model within 2 s (IMR_LETTER_DEADLINE" in res.output
    # ask with a model that never answers, and with an endpoint nobody listens on: one line each
    assert runner.invoke(app, ["ingest", str(letter)]).exit_code == 0
    monkeypatch.setenv("IMR_ANSWER_DEADLINE", "2")
    res = runner.invoke(app, ["ask", "why was therapy denied?", "--model", "compatible:fake"])
    assert res.exit_code == 2 and "no answer from the model within 2 s" in res.output
    monkeypatch.setenv("IMR_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("IMR_MAX_RETRIES", "0")
    res = runner.invoke(app, ["ask", "why was therapy denied?", "--model", "compatible:fake"])
    assert res.exit_code == 2 and "the model could not answer" in res.output and "Traceback" not in res.output


def test_damaged_search_segment_and_embedder_failures_are_one_line(letter, monkeypatch):
    assert runner.invoke(app, ["ingest", str(letter)]).exit_code == 0
    data = Path(os.environ["IMR_DATA_DIR"])
    seg = next((data / "index" / "segments").iterdir())
    paths = sorted(seg.iterdir()) + [data / "index" / "items.npz"]
    assert len(paths) >= 9
    backup = {p: p.read_bytes() for p in paths}
    for p in paths:
        for damage in ("delete", "truncate"):
            if damage == "delete":
                p.unlink()
            else:
                p.write_bytes(backup[p][: len(backup[p]) // 3])
            # who reads it: the statistics read items.npz, a filtered search the facet columns
            args = (["ask", "What share of requests were overturned?"] if p.name == "items.npz" else
                    ["ask", "why was therapy denied?", "--decision", "Upheld"] if p.name == "facets.npz" else ["ask", "why was therapy denied?"])
            res = runner.invoke(app, args)
            if p.name in ("items.npz", "termmax.npy") and damage == "delete":
                # accelerators: without them the same answer comes from the store, the BM25 lists
                assert res.exit_code == 0 and "Traceback" not in res.output, (p.name, res.output)
            else:
                assert res.exit_code == 2 and "Traceback" not in res.output and "rebuild" in res.output, (p.name, damage, res.output)
            p.write_bytes(backup[p])
    # a model that cannot start in ask
    Path("bogus.gguf").write_bytes(b"not a model")
    res = runner.invoke(app, ["ask", "why was therapy denied?", "--model", "llama-cpp:bogus.gguf"])
    assert res.exit_code == 2 and "cannot start model" in res.output and "Traceback" not in res.output


def test_embedder_without_network_during_index_then_ask_says_no_index(letter, monkeypatch, tmp_path):
    monkeypatch.setenv("IMR_DATA_DIR", str(tmp_path / "fresh"))
    monkeypatch.setenv("IMR_EMBEDDER", "compatible:emb")
    monkeypatch.setenv("IMR_EMBED_BASE_URL", "http://127.0.0.1:9/v1")  # loopback, nothing listens
    monkeypatch.setenv("IMR_MAX_RETRIES", "0")
    runner.invoke(app, ["extract", str(letter), "--out", "r.jsonl"])
    res = runner.invoke(app, ["index", "r.jsonl"])
    assert res.exit_code == 2 and "the embedder compatible:emb failed" in res.output and "Traceback" not in res.output
    monkeypatch.delenv("IMR_EMBEDDER")
    res = runner.invoke(app, ["ask", "why was therapy denied?"])
    assert res.exit_code == 2 and "no complete index" in res.output


def test_workers_clean_up_shard_folders_left_by_a_killed_run(letter):
    """`--workers 2` killed with -9 left a `.OUT.shards-PID` folder (288 MB at scale); the next run removes it."""
    stale = Path(".r.jsonl.shards-999999")  # no such process
    stale.mkdir()
    (stale / "shard0.jsonl").write_text("x" * 1000)
    res = runner.invoke(app, ["extract", str(letter), "--out", "r.jsonl", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert not stale.exists() and not list(Path(".").glob(".r.jsonl.shards-*"))


def test_an_index_of_the_previous_format_is_upgraded_in_place(letter):
    """Format 1 had fewer filter columns and no paths: readers are told, `imr index --upgrade` upgrades it."""
    import sqlite3

    assert runner.invoke(app, ["ingest", str(letter)]).exit_code == 0
    data = Path(os.environ["IMR_DATA_DIR"])
    before = json.loads(runner.invoke(app, ["ask", "How many requests were upheld?", "--json"]).output)["count"]
    import numpy as np

    from imr_llm.index.store import Store

    from imr_llm.index import Index

    idx = Index(data, embedder=None)
    seg = idx.segments()[0]
    vecs = {int(r): np.asarray(seg.vecs[i], dtype=np.float32).tobytes() for i, r in enumerate(seg.rowids)}
    rows = idx.store.rows(vecs)
    jsons = {lid: idx.store.record(lid)[0] for (lid,) in idx.store.db.execute("SELECT letter_id FROM records").fetchall()}
    idx.close()
    shutil.rmtree(data / "index" / "segments")
    (data / "index" / "items.npz").unlink()
    (data / "index" / "bm25").mkdir()  # format 1-4 kept BM25 here: the upgrade removes it
    (data / "index" / "bm25" / "ids.json").write_text("[]")
    db = sqlite3.connect(data / "index" / "store.sqlite")
    # format 1: records as plain JSON, chunks with their text, their filter columns and float32 vectors
    db.execute("ALTER TABLE records ADD COLUMN json TEXT")
    for lid, js in jsons.items():
        db.execute("UPDATE records SET json=? WHERE letter_id=?", (js, lid))
    db.execute("DELETE FROM meta WHERE k='record_zdict'")
    old_items = {"letter_id", "item", "cite_id", "request", "decision", "category", "regions", "had_surgery", "had_fusion",
                 "license_states", "licensed_outside_ca", "specialties", "guidelines", "denial_reasons", "decision_date"}
    old_chunks = ["id", "letter_id", "item", "n", "text", "context", "start", "end", "digest", "cite_id", "source_path", "request",
                  "guidelines", "denial_reasons", *sorted(old_items - {"letter_id", "item", "cite_id", "request", "guidelines", "denial_reasons"})]
    db.execute("DROP TABLE chunks")
    db.execute("DROP TABLE segments")
    db.execute(f"CREATE TABLE chunks (rowid INTEGER PRIMARY KEY, {', '.join(f'[{c}]' for c in old_chunks)}, vec BLOB)")
    for r, d in rows.items():
        d = {**d, "digest": "0" * 16}
        db.execute(f"INSERT INTO chunks VALUES ({','.join('?' * (len(old_chunks) + 2))})", [r, *[d[c] for c in old_chunks], vecs[r]])
    for table, keep in (("items", old_items), ("records", {"letter_id", "cite_id", "source_path", "sha256", "json"})):
        for (col,) in [(r[1],) for r in db.execute(f"PRAGMA table_info({table})")]:
            if col not in keep:
                db.execute(f'ALTER TABLE {table} DROP COLUMN "{col}"')
    db.execute("DELETE FROM meta WHERE k='index_format'")
    db.commit()
    db.close()
    res = runner.invoke(app, ["ask", "How many requests were upheld?"])
    assert res.exit_code == 2 and "imr index --upgrade" in res.output
    res = runner.invoke(app, ["index", "--upgrade"])
    assert res.exit_code == 0 and "format 2: filter columns added and filled for 1 letters" in res.output, res.output
    assert "format 3: the letter text of" in res.output and "format 4: 1 records compressed" in res.output, res.output
    assert "format 5:" in res.output and "into 1 search segment(s)" in res.output, res.output
    assert not (data / "index" / "bm25").exists() and (data / "index" / "items.npz").exists()
    after = json.loads(runner.invoke(app, ["ask", "How many requests were upheld?", "--json"]).output)["count"]
    assert after == before == 1
    # extractive answers quote from the upgraded chunk rows: each quote is the letter's text at its offsets
    got = json.loads(runner.invoke(app, ["ask", "why was the request upheld?", "--json"]).output)
    text = runner.invoke(app, ["text", str(letter)]).output
    assert got["citations"] and all(text[c["start"]:c["end"]] == c["quote"] for c in got["citations"]), got["citations"]
    assert runner.invoke(app, ["index", "--upgrade"]).output.strip().endswith("already current")
