"""OpenAI Batch API for large runs: submit, poll with progress, resume, collect (half the price).

Answers land in the same LLM cache the live path uses (keyed by text, model, prompt and schema
version), so after collection ``imr extract`` writes every record without another call. The
state of submitted batches is kept under DATA_DIR/batches: a re-run resumes polling instead of
submitting again, and letters already answered are never re-submitted.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from .cache import Cache, key
from .config import Settings
from .extract import PROMPT_VERSION, analyse, build_messages, response_model
from .llm import cost
from .load import LetterError, read_letter
from .models import SCHEMA_VERSION, Usage

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


def submit(paths: list[str], s: Settings, cache: Cache) -> list[dict]:
    """Write request files for letters without a cached answer and create batches for them."""
    in_flight = {cid for st in pending(s) for cid in st["requests"]}
    reqs, meta = [], {}
    for p in paths:
        try:
            letter = read_letter(p)
            lay = analyse(letter)
        except LetterError:
            continue  # reported by the extraction pass
        lkey = key("llm", letter.text_sha256, s.label, PROMPT_VERSION, SCHEMA_VERSION)
        if lkey in in_flight or lkey in meta or cache.get(lkey):
            continue
        msgs, _ = build_messages(lay, s.model)
        schema = response_model(len(lay.items)).openai_schema
        body = {"model": s.model, "messages": msgs, "temperature": 0, "max_tokens": s.max_output_tokens,
                "tools": [{"type": "function", "function": schema}],
                "tool_choice": {"type": "function", "function": {"name": schema["name"]}}}
        reqs.append({"custom_id": lkey, "method": "POST", "url": "/v1/chat/completions", "body": body})
        meta[lkey] = len(lay.items)
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


def wait_and_collect(s: Settings, cache: Cache, poll: float = 30.0, on_progress: Callable[[str, int, int, str], None] | None = None,
                     timeout: float | None = None) -> dict:
    """Poll every pending batch until it ends, then store its answers in the cache."""
    from instructor import Mode
    from openai.types.chat import ChatCompletion

    client = _client(s)
    stats = {"batches": 0, "answers": 0, "failed": 0, "errors": []}
    start = time.monotonic()
    for st in pending(s):
        while True:
            b = client.batches.retrieve(st["batch_id"])
            rc = b.request_counts
            if on_progress:
                on_progress(b.id, rc.completed + rc.failed if rc else 0, rc.total if rc else len(st["requests"]), b.status)
            if b.status in DONE:
                break
            if timeout is not None and time.monotonic() - start > timeout:
                return stats
            time.sleep(poll)
        stats["batches"] += 1
        if b.output_file_id:
            for line in client.files.content(b.output_file_id).text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                cid = row["custom_id"]
                n = st["requests"].get(cid)
                resp = row.get("response") or {}
                if n is None or resp.get("status_code") != 200:
                    stats["failed"] += 1
                    stats["errors"].append(f"{cid[:12]}: {row.get('error') or resp.get('status_code')}")
                    continue
                completion = ChatCompletion.model_validate(resp["body"])
                try:
                    out = response_model(n).from_response(completion, mode=Mode.TOOLS)
                except Exception as e:  # an answer that does not validate: the live path will retry it
                    stats["failed"] += 1
                    stats["errors"].append(f"{cid[:12]}: invalid answer ({type(e).__name__})")
                    continue
                u = completion.usage
                tin, tout = (u.prompt_tokens, u.completion_tokens) if u else (0, 0)
                c = cost(s, tin, tout)
                usage = Usage(provider=s.provider, model=s.model, prompt_version=PROMPT_VERSION, calls=1, input_tokens=tin,
                              output_tokens=tout, cost_usd=None if c is None else round(c / 2, 6))  # batch price: half
                cache.put(cid, "llm", {"output": out.model_dump(mode="json"), "usage": usage.model_dump()})
                stats["answers"] += 1
        if b.error_file_id:
            stats["errors"].append(f"batch {b.id}: some requests failed (error file {b.error_file_id})")
        st["collected"] = True
        st["status"] = b.status
        (_state_dir(s) / f"{st['batch_id']}.json").write_text(json.dumps(st))
    return stats
