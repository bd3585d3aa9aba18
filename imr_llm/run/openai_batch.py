"""OpenAI Batch API for large runs: submit, poll with progress, resume, collect (half the price).

Requests are the runner's own calls (``calls.plan``: the same messages, answer type and cache key,
for parsed letters and letters in an unknown layout alike), and answers land in the cache the live
path reads, so after collection ``imr extract`` writes every record without another call. The
state of submitted batches is kept under DATA_DIR/batches: a re-run resumes polling instead of
submitting again, and letters already answered are never re-submitted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from ..config import Settings
from ..core.load import LetterError, read_letter
from ..core.models import Usage
from ..extract.assemble import analyse
from ..providers.llm import cost
from . import calls
from .cache import Cache

MAX_REQUESTS = 50_000  # OpenAI's per-batch limit
DONE = {"completed", "failed", "expired", "cancelled"}


def _client(s: Settings):
    from openai import OpenAI

    return OpenAI(api_key=s.api_key, base_url=s.base_url, max_retries=s.max_retries, timeout=s.timeout)


def _state_dir(s: Settings) -> Path:
    d = s.data_dir / "batches"
    d.mkdir(parents=True, exist_ok=True)
    return d


def pending(s: Settings) -> list[dict]:
    states = [json.loads(p.read_text()) for p in sorted(_state_dir(s).glob("batch*.json"))]
    return [st for st in states if st.get("model") == s.label and not st.get("collected")]


def _request(call: calls.Call, s: Settings) -> dict:
    schema = call.answer_type.openai_schema
    body = {"model": s.model, "messages": call.messages, "temperature": 0, "max_tokens": s.max_output_tokens,
            "tools": [{"type": "function", "function": schema}],
            "tool_choice": {"type": "function", "function": {"name": schema["name"]}}}
    return {"custom_id": call.key, "method": "POST", "url": "/v1/chat/completions", "body": body}


def submit(paths: list[str], s: Settings, cache: Cache) -> list[dict]:
    """Write request files for letters without a cached answer and create batches for them."""
    in_flight = {cid for st in pending(s) for cid in st["requests"]}
    reqs, meta = [], {}
    for p in paths:
        try:
            letter = read_letter(p)
            call = calls.plan(letter, analyse(letter), s)
        except LetterError:
            continue  # reported by the extraction pass
        if call.key in in_flight or call.key in meta or cache.get(call.key):
            continue
        reqs.append(_request(call, s))
        meta[call.key] = {"kind": call.kind, "items": call.n_items, "prompt_version": call.prompt_version}
    client = _client(s)
    states = []
    for i in range(0, len(reqs), MAX_REQUESTS):
        part = reqs[i:i + MAX_REQUESTS]
        f = _state_dir(s) / f"input-{int(time.time() * 1000)}-{i}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in part))
        up = client.files.create(file=f.open("rb"), purpose="batch")
        b = client.batches.create(input_file_id=up.id, endpoint="/v1/chat/completions", completion_window="24h")
        st = {"batch_id": b.id, "model": s.label, "input_file": str(f), "requests": {r["custom_id"]: meta[r["custom_id"]] for r in part},
              "collected": False}
        (_state_dir(s) / f"{b.id}.json").write_text(json.dumps(st))
        states.append(st)
    return states


def _poll(client, st: dict, poll: float, on_progress, deadline: float | None):
    """The batch once it has ended, or None when ``deadline`` passed first."""
    while True:
        b = client.batches.retrieve(st["batch_id"])
        rc = b.request_counts
        if on_progress:
            on_progress(b.id, rc.completed + rc.failed if rc else 0, rc.total if rc else len(st["requests"]), b.status)
        if b.status in DONE:
            return b
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(poll)


def _collect_line(row: dict, st: dict, s: Settings, cache: Cache, stats: dict) -> None:
    from instructor import Mode
    from openai.types.chat import ChatCompletion

    cid = row["custom_id"]
    req = st["requests"].get(cid)
    if isinstance(req, int):  # state written by 0.2.0: a parsed letter with that many items
        req = {"kind": "llm", "items": req, "prompt_version": calls.PROMPT_VERSION}
    resp = row.get("response") or {}
    if req is None or resp.get("status_code") != 200:
        stats["failed"] += 1
        stats["errors"].append(f"{cid[:12]}: {row.get('error') or resp.get('status_code')}")
        return
    completion = ChatCompletion.model_validate(resp["body"])
    try:
        out = calls.answer_type(req["kind"], req["items"]).from_response(completion, mode=Mode.TOOLS)
    except Exception as e:  # an answer that does not validate: the live path will retry it
        stats["failed"] += 1
        stats["errors"].append(f"{cid[:12]}: invalid answer ({type(e).__name__})")
        return
    u = completion.usage
    tin, tout = (u.prompt_tokens, u.completion_tokens) if u else (0, 0)
    c = cost(s, tin, tout)
    usage = Usage(provider=s.provider, model=s.model, prompt_version=req["prompt_version"], calls=1, input_tokens=tin,
                  output_tokens=tout, cost_usd=None if c is None else round(c / 2, 6))  # batch price: half
    cache.put(cid, "llm", {"output": out.model_dump(mode="json"), "usage": usage.model_dump()})
    stats["answers"] += 1


def wait_and_collect(s: Settings, cache: Cache, poll: float = 30.0, on_progress: Callable[[str, int, int, str], None] | None = None,
                     timeout: float | None = None) -> dict:
    """Poll every pending batch until it ends, then store its answers in the cache."""
    client = _client(s)
    stats = {"batches": 0, "answers": 0, "failed": 0, "errors": []}
    deadline = None if timeout is None else time.monotonic() + timeout
    for st in pending(s):
        b = _poll(client, st, poll, on_progress, deadline)
        if b is None:
            return stats
        stats["batches"] += 1
        if b.output_file_id:
            for line in client.files.content(b.output_file_id).text.splitlines():
                if line.strip():
                    _collect_line(json.loads(line), st, s, cache, stats)
        if b.error_file_id:
            stats["errors"].append(f"batch {b.id}: some requests failed (error file {b.error_file_id})")
        st["collected"] = True
        st["status"] = b.status
        (_state_dir(s) / f"{st['batch_id']}.json").write_text(json.dumps(st))
    return stats
