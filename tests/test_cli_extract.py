"""`imr extract` as a user runs it: outputs, CSV, cache, resume after kill -9, bad input, secrets."""
from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

from typer.testing import CliRunner

from imr_llm.cli import app

from .conftest import LETTERS, ROOT

runner = CliRunner()


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_extract_examples_without_a_model(tmp_path, seed_dir):
    res = runner.invoke(app, ["extract", str(seed_dir), "--out", "out/r.jsonl", "--csv", "out/items.csv"])
    assert res.exit_code == 0, res.output
    assert "No model configured" in res.output  # the one clear notice
    recs = _lines(Path("out/r.jsonl"))
    assert [r["letter_id"] for r in recs] == ["000_2fb87f21f9d4b91f", "001_21c8226c7447611c", "004_9cf12295204d3b85"]
    rows = list(csv.DictReader(open("out/items.csv")))
    assert len(rows) == 4 and rows[1]["request"].startswith("6 Physical therapy sessions")
    assert rows[3]["case_number"] == "CM14-0095145" and rows[3]["quantity"] == "8"
    # idempotent: a re-run writes the identical file
    before = Path("out/r.jsonl").read_bytes()
    assert runner.invoke(app, ["extract", str(seed_dir), "--out", "out/r.jsonl"]).exit_code == 0
    assert Path("out/r.jsonl").read_bytes() == before


def test_schema_command():
    res = runner.invoke(app, ["schema"])
    s = json.loads(res.output)
    assert "evidence" in s["properties"] and "items" in s["properties"]


def _bad_corpus(root: Path) -> Path:
    d = root / "mixed"
    d.mkdir()
    for p in LETTERS.glob("00*.txt"):
        (d / p.name).write_text(p.read_text())
    (d / "empty.txt").write_bytes(b"")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 10)
    (d / "recipe.txt").write_text("Preheat the oven to 350 degrees. Mix flour and sugar.\n")
    t = (LETTERS / "001_21c8226c7447611c.txt").read_text()
    (d / "truncated.txt").write_text(t[: t.index("6 Acupuncture therapy sessions") + 80])
    return d


def test_bad_inputs_do_not_stop_the_batch(tmp_path):
    d = _bad_corpus(tmp_path)
    res = runner.invoke(app, ["extract", str(d), "--out", "r.jsonl"])
    assert res.exit_code == 1
    assert len(_lines(Path("r.jsonl"))) == 3
    errs = [l for l in res.output.splitlines() if l.startswith("error: ")]
    assert len(errs) == 4
    joined = "\n".join(errs)
    for name, why in (("empty.txt", "empty file"), ("binary.txt", "binary"), ("recipe.txt", "not an IMR"),
                      ("truncated.txt", "truncated")):
        assert any(name in e and why in e for e in errs), (name, joined)
    assert "Traceback" not in res.output


def test_cache_makes_rerun_free_and_keys_never_leak(tmp_path, fake_server, monkeypatch, seed_dir):
    srv = fake_server(mode="synthetic")
    secret = "sk-test-" + "S3CR3T" * 6
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    monkeypatch.setenv("IMR_API_KEY", secret)
    args = ["extract", str(seed_dir), "--model", "compatible:fake", "--out", "r.jsonl", "--csv", "i.csv"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    first = srv.stats.requests
    assert first == 3
    res2 = runner.invoke(app, args)
    assert res2.exit_code == 0 and srv.stats.requests == first  # zero LLM calls
    recs = _lines(Path("r.jsonl"))
    assert all(r["usage"]["provider"] == "compatible" and r["usage"]["calls"] == 1 for r in recs)
    for f in [Path("r.jsonl"), Path("i.csv"), *Path(os.environ["IMR_DATA_DIR"]).rglob("*")]:
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    # cache values are compressed: a byte grep of the file alone would not see a leaked key
    db = sqlite3.connect(Path(os.environ["IMR_DATA_DIR"]) / "cache.sqlite")
    values = [zlib.decompress(v) if isinstance(v, bytes) else v.encode() for (v,) in db.execute("SELECT v FROM kv")]
    db.close()
    assert len(values) == 6 and all(secret.encode() not in v for v in values)  # 3 answers + 3 records
    assert secret not in res.output + res2.output


def _corpus(root: Path, n: int) -> Path:
    d = root / "corpus"
    d.mkdir()
    seeds = sorted(LETTERS.glob("00*.txt"))
    for i in range(n):
        text = seeds[i % 3].read_text().replace("physical therapy", f"physical therapy (ref {i})", 1)
        (d / f"letter_{i:04d}.txt").write_text(text)
    return d


def _imr(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imr_llm.cli", *args], env=env, cwd=os.getcwd(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, fake_server):
    srv = fake_server(mode="synthetic", latency=0.1)
    d = _corpus(tmp_path, 60)
    env = {**os.environ, "IMR_BASE_URL": srv.base_url, "PYTHONPATH": str(ROOT)}
    args = ["extract", str(d), "--model", "compatible:fake", "--concurrency", "2", "--out", "out.jsonl"]
    Path("out.jsonl").write_text("previous results\n")
    p = _imr(args, env)
    deadline = time.time() + 60
    while srv.stats.requests < 10 and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert Path("out.jsonl").read_text() == "previous results\n"  # untouched by the killed run
    done_before = srv.stats.requests
    assert 10 <= done_before < 60
    p = _imr(args, env)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert srv.stats.requests - done_before <= 60 - 10 + 2  # finished letters were not asked again
    ref_env = {**env, "IMR_DATA_DIR": str(tmp_path / "fresh")}
    p = _imr(args[:-1] + ["ref.jsonl"], ref_env)
    assert p.wait(timeout=120) == 0
    resumed, ref = Path("out.jsonl").read_text(), Path("ref.jsonl").read_text()
    assert resumed == ref and len(ref.splitlines()) == 60
    assert not list(Path(".").glob(".out.jsonl.tmp-*"))


def test_workers_output_equals_single_process_output(tmp_path, fake_server):
    """`--workers 2` shards letters over processes; the merged file equals a one-process run's,
    in input order, with the CSV and the failures of the bad letters reported the same way."""
    srv = fake_server(mode="synthetic")
    d = _corpus(tmp_path, 40)
    (d / "letter_0005.txt").write_text("")  # one failure, in the middle
    env = {**os.environ, "IMR_BASE_URL": srv.base_url, "PYTHONPATH": str(ROOT)}
    base = ["extract", str(d), "--model", "compatible:fake", "--concurrency", "8"]
    p = _imr(base + ["--workers", "2", "--out", "w2.jsonl", "--csv", "w2.csv"], env)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 1 and b"letter_0005.txt" in err and b"empty file" in err  # exits non-zero, names it
    assert srv.stats.requests == 39
    one_env = {**env, "IMR_DATA_DIR": str(tmp_path / "one")}
    p = _imr(base + ["--workers", "1", "--out", "w1.jsonl", "--csv", "w1.csv"], one_env)
    p.communicate(timeout=180)
    assert p.returncode == 1 and srv.stats.requests == 78  # really ran again, in its own cache
    w2, w1 = Path("w2.jsonl").read_text(), Path("w1.jsonl").read_text()
    assert w2 == w1 and len(w1.splitlines()) == 39
    assert [json.loads(x)["letter_id"] for x in w1.splitlines()] == [f"letter_{i:04d}" for i in range(40) if i != 5]
    assert Path("w2.csv").read_text() == Path("w1.csv").read_text()
    errs = [json.loads(x) for x in Path("w2.errors.jsonl").read_text().splitlines()]
    assert len(errs) == 1 and "letter_0005.txt" in json.dumps(errs[0])
