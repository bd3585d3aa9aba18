"""What a careless or hostile user did to earlier versions (issue 15): each case now ends in one clear
line, and no earlier result is lost or changed."""
from __future__ import annotations

import json
import os
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
