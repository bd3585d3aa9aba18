"""Provider plumbing over real HTTP on 127.0.0.1: recorded real answers, faults, retries, local-only."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imr_llm.cli import app
from imr_llm.config import ConfigError, settings
from imr_llm.core.ground import check_evidence, ungrounded_values
from imr_llm.core.load import read_letter
from imr_llm.core.models import DecisionRecord

from .conftest import LETTERS, RECORDED

runner = CliRunner()


def _records(p="r.jsonl"):
    return [DecisionRecord.model_validate_json(x) for x in Path(p).read_text().splitlines()]


def test_recorded_real_model_answers_replayed_over_http(fake_server, monkeypatch):
    """Real answers of the 0.5B model, through openai + instructor + HTTP, then grounded."""
    srv = fake_server(mode="recorded")
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    recorded = sorted(RECORDED.glob("*.json"))
    assert recorded, "no recorded answers"
    letters = [str(LETTERS / (f.stem + ".txt")) for f in recorded]
    res = runner.invoke(app, ["extract", *letters, "--model", "compatible:qwen2.5-coder-0.5b", "--out", "r.jsonl"])
    assert res.exit_code == 0, res.output
    recs = _records()
    assert len(recs) == len(letters) and srv.stats.requests == len(letters)
    proposed = 0
    for rec in recs:
        text = read_letter(rec.source_path).text
        assert rec.usage.calls == 1 and rec.usage.input_tokens > 0
        assert check_evidence(rec, text) == []
        assert ungrounded_values(rec) == []
        assert not any(f.startswith("decision_mismatch") for f in rec.flags)
        proposed += sum(1 for e in rec.evidence if e.origin == "llm")
    assert proposed > 0  # the model's answers were used (kept or, if ungrounded, dropped)


def test_transient_http_faults_are_retried(fake_server, monkeypatch):
    srv = fake_server(mode="synthetic", fault_script=["429", "500", "reset", "429-noheader", "503", "502"])
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    monkeypatch.setenv("IMR_MAX_RETRIES", "8")
    res = runner.invoke(app, ["extract", str(LETTERS / "001_21c8226c7447611c.txt"), "--model", "compatible:fake",
                              "--concurrency", "1", "--out", "r.jsonl"])
    assert res.exit_code == 0, res.output
    assert srv.stats.faults == {"429": 1, "500": 1, "reset": 1, "429-noheader": 1, "503": 1, "502": 1}
    assert len(_records()) == 1


def test_invalid_json_is_revalidated_and_retry_tokens_reported(fake_server, monkeypatch):
    srv = fake_server(mode="synthetic", fault_script=["truncated"])
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    res = runner.invoke(app, ["extract", str(LETTERS / "004_9cf12295204d3b85.txt"), "--model", "compatible:fake", "--out", "r.jsonl"])
    assert res.exit_code == 0, res.output
    rec = _records()[0]
    assert rec.usage.calls == 2 and rec.usage.retry_tokens > 0
    assert "retries:" in res.output


def test_letter_fails_cleanly_when_model_never_validates(fake_server, monkeypatch):
    srv = fake_server(mode="synthetic", fault_script=["invalid", "length", "ok", "ok"])
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    letters = [str(LETTERS / "000_2fb87f21f9d4b91f.txt"), str(LETTERS / "001_21c8226c7447611c.txt"), str(LETTERS / "004_9cf12295204d3b85.txt")]
    res = runner.invoke(app, ["extract", *letters, "--model", "compatible:fake", "--concurrency", "1", "--out", "r.jsonl"])
    assert res.exit_code == 1
    errs = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert len(errs) == 1 and "000_2fb87f21f9d4b91f.txt" in errs[0] and "model failed after retries" in errs[0]
    assert [r.letter_id for r in _records()] == ["001_21c8226c7447611c", "004_9cf12295204d3b85"]


def test_local_only_refuses_remote_before_sending(monkeypatch):
    monkeypatch.setenv("IMR_LOCAL_ONLY", "1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefabcdef")
    with pytest.raises(ConfigError, match="refusing provider 'openai'"):
        settings("openai:gpt-4o-mini")
    monkeypatch.setenv("IMR_BASE_URL", "http://8.8.8.8:8000/v1")
    with pytest.raises(ConfigError, match="not a loopback or private"):
        settings("compatible:x")
    monkeypatch.setenv("IMR_BASE_URL", "http://127.0.0.1:8000/v1")
    assert settings("compatible:x").base_url.startswith("http://127.0.0.1")
    monkeypatch.setenv("IMR_BASE_URL", "http://llm.lan.example:8000/v1")
    monkeypatch.setenv("IMR_PRIVATE_HOSTS", "llm.lan.example")
    assert settings("compatible:x").provider == "compatible"
    res = runner.invoke(app, ["extract", str(LETTERS / "001_21c8226c7447611c.txt"), "--model", "openai:gpt-4o-mini"])
    assert res.exit_code == 2 and "IMR_LOCAL_ONLY" in res.output and "sk-test" not in res.output


def test_batch_api_submit_resume_collect(fake_server, monkeypatch, seed_dir):
    srv = fake_server(mode="synthetic", batch_polls=2)
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    args = ["extract", str(seed_dir), "--model", "compatible:fake", "--batch-api", "--poll", "0.05", "--out", "r.jsonl"]
    res = runner.invoke(app, args + ["--no-wait"])  # submit only
    assert res.exit_code == 0 and "submitted batch batch_1 with 3 letters" in res.output
    assert not Path("r.jsonl").exists() and srv.stats.faults == {"batch_api": 2}  # file upload + batch create
    res = runner.invoke(app, args)  # resume: poll the same batch, collect, write records
    assert res.exit_code == 0, res.output
    assert "collected 3 answers from 1 batch" in res.output and len(srv.batches) == 1
    recs = _records()
    assert len(recs) == 3 and all(r.usage.calls == 1 for r in recs)
    assert sum(v for k, v in srv.stats.by_status.items()) == srv.stats.requests
    chat_calls = srv.stats.requests - srv.stats.faults["batch_api"]
    assert chat_calls == 0  # no live call: every answer came from the batch
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "nothing to submit" in res.output and len(srv.batches) == 1


def test_batch_api_takes_letters_in_an_unknown_layout_too(fake_server, monkeypatch, seed_dir):
    """The Batch API sends each letter the call the live path would make (the unknown-layout call for
    a layout the parser does not know), and the records are written from the collected answers alone."""
    from .test_unknown_layout import LETTER

    (seed_dir / "family2.txt").write_text(LETTER)
    srv = fake_server(mode="synthetic", batch_polls=1)
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    args = ["extract", str(seed_dir), "--model", "compatible:fake", "--batch-api", "--poll", "0.05", "--out", "r.jsonl"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "submitted batch batch_1 with 4 letters" in res.output and "collected 4 answers from 1 batch" in res.output
    assert srv.stats.requests == srv.stats.faults["batch_api"]  # no live chat call at all
    rec = next(r for r in _records() if r.letter_id == "family2")
    assert any(f.startswith("model_derived_items") for f in rec.flags) and rec.usage.prompt_version == "unknown-layout-v1"
    assert [(it.decision, it.category) for it in rec.items] == [("Upheld", "physical_therapy"), ("Overturned", "imaging")]
    text = read_letter(seed_dir / "family2.txt").norm.text
    assert rec.items[0].request in text and rec.items[1].request in text


def test_a_cached_answer_for_another_item_count_is_used_not_fatal(fake_server, monkeypatch, seed_dir):
    """A parser change can find another number of items in a letter whose answer is cached (same
    text, model and prompt): the answer is used and the difference flagged, never a failed letter."""
    from imr_llm.config import settings
    from imr_llm.extract.assemble import analyse
    from imr_llm.run import calls
    from imr_llm.run import runner as run_runner
    from imr_llm.run.cache import Cache

    srv = fake_server(mode="synthetic")
    monkeypatch.setenv("IMR_BASE_URL", srv.base_url)
    args = ["extract", str(seed_dir), "--model", "compatible:fake", "--out", "r.jsonl"]
    assert runner.invoke(app, args).exit_code == 0
    path = sorted(seed_dir.glob("*.txt"))[0]
    letter, s = read_letter(path), settings("compatible:fake")
    call = calls.plan(letter, analyse(letter), s)
    cache = Cache(s.data_dir / "cache.sqlite")
    got = cache.get(call.key)
    got["output"]["items"].append(dict(got["output"]["items"][0], index=99))  # the answer has one item more
    cache.put(call.key, "llm", got)
    cache.close()
    before = srv.stats.requests
    monkeypatch.setattr(run_runner, "code_fingerprint", lambda: "other-code")  # finished records are not reused
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert srv.stats.requests == before  # every answer came from the cache
    rec = next(r for r in _records() if r.source_path == str(path))
    assert "llm_extra_item:99" in rec.flags


def test_shipped_prompts_match_their_versions():
    """A prompt file edited without a new version would change what the model reads while the cache
    keys stay: the shipped text of each version is recorded, and this fails when a file changes alone."""
    from imr_llm.extract import prompts

    for version, name in ((prompts.PROMPT_VERSION, prompts.PROMPT_FILE), (prompts.UNKNOWN_PROMPT_VERSION, prompts.UNKNOWN_PROMPT_FILE)):
        assert prompts.prompt_digest(name) == prompts.SHIPPED[version], f"{name} changed: give it a new version and record its digest"
        assert prompts.version_key(version, name) == version


def test_memoized_async_validator_check_still_refuses_async_validators():
    """The speed-up (instructor's per-call type walk remembered per class) must not weaken the check."""
    from instructor.v2.core import client as instructor_client
    from instructor.v2.validation import async_validators as av
    from pydantic import BaseModel

    from imr_llm.extract.answers import response_model
    from imr_llm.providers.llm import _memoize_async_validator_check

    _memoize_async_validator_check()
    check = av.reject_async_validators
    assert getattr(check, "_imr_memo", False)
    assert getattr(instructor_client, "reject_async_validators", check) is check
    check(response_model(2))  # ours passes, and is remembered
    check(response_model(2))

    class Sneaky(BaseModel):
        x: int = 0

        @av.async_field_validator("x")
        async def v(cls, value):  # noqa: N805
            return value

    for _ in range(2):  # refused every time, never remembered
        with pytest.raises(ValueError, match="async validators"):
            check(Sneaky)
