"""Reliability: faults, token budgets, a hostile bad-input corpus, and kill -9 at random points."""
from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imr_llm.bench.corpus import build, write_corpus
from imr_llm.cli import app

from .conftest import LETTERS, ROOT
from imr_llm.bench.pdfs import image_only_pdf, locked_pdf, text_pdf

runner = CliRunner()
SEED = LETTERS / "001_21c8226c7447611c.txt"


def test_timeout_is_retried(fake_server, monkeypatch):
    srv = fake_server(mode="synthetic", fault_script=["timeout"])
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    monkeypatch.setenv("IMR_TIMEOUT", "1")
    res = runner.invoke(app, ["extract", str(SEED), "--model", "compatible:fake", "--out", "r.jsonl"])
    assert res.exit_code == 0, res.output
    assert srv.stats.faults == {"timeout": 1} and srv.stats.by_status[200] == 1


def test_validation_retries_stop_at_the_token_budget(fake_server, monkeypatch):
    ok = fake_server(mode="synthetic")
    monkeypatch.setenv("IMR_BASE_URL", ok.base_url)
    assert runner.invoke(app, ["extract", str(SEED), "--model", "compatible:fake", "--out", "one.jsonl", "--no-cache"]).exit_code == 0
    usage = json.loads(Path("one.jsonl").read_text())["usage"]
    per_call = usage["input_tokens"] + usage["output_tokens"]
    srv = fake_server(mode="synthetic", fault_script=["invalid"] * 10)
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    monkeypatch.setenv("IMR_VALIDATION_RETRIES", "8")
    monkeypatch.setenv("IMR_LETTER_TOKEN_BUDGET", str(int(per_call * 1.5)))
    res = runner.invoke(app, ["extract", str(SEED), "--model", "compatible:fake", "--out", "r.jsonl", "--no-cache"])
    assert res.exit_code == 1
    assert srv.stats.requests == 2  # stopped by the budget (after 2 calls), not by the 9 allowed attempts
    errors = [json.loads(x) for x in Path("r.errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["source_path"].endswith("001_21c8226c7447611c.txt")
    assert "model failed after retries" in errors[0]["error"]


def test_hostile_corpus_one_line_each_and_the_rest_unaffected(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    good = [d / p.name for p in sorted(LETTERS.glob("00*.txt"))]
    for p in good:
        p.write_text((LETTERS / p.name).read_text())
    (d / "empty.txt").write_bytes(b"")
    (d / "binary.txt").write_bytes(os.urandom(4096))
    with open(d / "huge.txt", "wb") as f:  # 50 MB
        f.write((SEED.read_bytes() + b"\n") * (50 * 1024 * 1024 // (len(SEED.read_bytes()) + 1) + 1))
    (d / "latin.txt").write_bytes(SEED.read_text().encode("utf-8").replace(b"injured worker", b"injured w\x81\x8d\x8f\x90rker"))
    (d / "not_imr.txt").write_text("Dear Sir, please find enclosed the invoice for March.\n" * 20)
    t = SEED.read_text()
    (d / "truncated.txt").write_text(t[: t.index("Decision rationale: Physical therapy") + 60])
    text_pdf(SEED.read_text(), d / "good.pdf")
    image_only_pdf(d / "scanned.pdf")
    locked_pdf(d / "good.pdf", d / "locked.pdf")
    thirty, gold = build(seed=5, n_items=30)
    (d / "thirty_items.txt").write_text(thirty)
    res = runner.invoke(app, ["extract", str(d), "--out", "r.jsonl", "--csv", "i.csv"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    errs = [l for l in res.output.splitlines() if l.startswith("error: ")]
    expect = {"empty.txt": "empty file", "binary.txt": "binary", "huge.txt": "too large", "latin.txt": "encoding",
              "not_imr.txt": "not an IMR", "truncated.txt": "truncated", "scanned.pdf": "no text layer",
              "locked.pdf": "password-protected"}
    assert len(errs) == len(expect), errs
    for name, why in expect.items():
        assert any(name in e and why in e for e in errs), (name, errs)
    recs = {Path(json.loads(x)["source_path"]).name: json.loads(x) for x in Path("r.jsonl").read_text().splitlines()}
    assert set(recs) == {p.name for p in good} | {"good.pdf", "thirty_items.txt"}
    assert [i["decision"] for i in recs["thirty_items.txt"]["items"]] == [i["decision"] for i in gold["items"]]
    assert len(recs["thirty_items.txt"]["items"]) == 30
    assert [i["request"] for i in recs["good.pdf"]["items"]] == [i["request"] for i in recs["001_21c8226c7447611c.txt"]["items"]]


def _imr(args, env):
    return subprocess.Popen([sys.executable, "-m", "imr_llm.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=os.getcwd())


def test_kill9_at_random_points_of_a_2000_letter_run(tmp_path, fake_server):
    srv = fake_server(mode="synthetic")
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 2000, seed=3)
    env = {**os.environ, "IMR_BASE_URL": srv.base_url, "PYTHONPATH": str(ROOT)}
    args = ["extract", str(corpus), "--model", "compatible:fake", "--concurrency", "32", "--out", "out.jsonl"]
    rng = random.Random(11)
    kills = 0
    complete = None  # the output of a run that finished (a re-run from the cache can finish before the kill)
    for _ in range(3):
        before = srv.stats.requests
        p = _imr(args, env)
        time.sleep(rng.uniform(1.5, 6.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        if p.returncode == 0:
            complete = Path("out.jsonl").read_bytes()
        else:  # never a partial output file: nothing, or the last complete run's output untouched
            assert (complete is None and not Path("out.jsonl").exists()) or Path("out.jsonl").read_bytes() == complete
        assert srv.stats.requests >= before
    p = _imr(args, env)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-2000:]
    assert kills >= 1
    assert srv.stats.requests <= 2000 + 32 * kills * 2  # only letters in flight at a kill were asked twice
    ref_env = {**env, "IMR_DATA_DIR": str(tmp_path / "fresh")}
    p = _imr(args[:-1] + ["ref.jsonl"], ref_env)
    assert p.wait(timeout=600) == 0
    got, ref = Path("out.jsonl").read_text(), Path("ref.jsonl").read_text()
    lines = got.splitlines()
    assert got == ref and len(lines) == 2000 and len(set(lines)) == 2000
    assert all(json.loads(line) for line in lines)  # no truncated line

    # the same for `imr index`: killed at a random point, re-run, same index as an uninterrupted build
    ienv = {**env, "IMR_DATA_DIR": str(tmp_path / "idx")}
    p = _imr(["index", "out.jsonl"], ienv)
    time.sleep(rng.uniform(2.0, 5.0))
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _imr(["index", "out.jsonl"], ienv).wait(timeout=600) == 0
    renv = {**env, "IMR_DATA_DIR": str(tmp_path / "idx-ref")}
    assert _imr(["index", "out.jsonl"], renv).wait(timeout=600) == 0

    def state(root):
        from imr_llm.index import Index

        idx = Index(Path(root), embedder=None)
        rows = idx.store.db.execute("SELECT id, body FROM chunks ORDER BY id").fetchall()
        live = {r for (r,) in idx.store.db.execute("SELECT rowid FROM chunks")}
        searchable = [idx.store.rows([int(r)])[int(r)]["id"] for s in idx.segments() for r in s.rowids if int(r) in live]
        idx.close()
        return rows, searchable

    a, b = state(tmp_path / "idx"), state(tmp_path / "idx-ref")
    # the same rows, and every chunk searchable exactly once (a killed run's segment never committed)
    assert a[0] == b[0] and sorted(a[1]) == sorted(b[1]) == sorted(r[0] for r in a[0])
