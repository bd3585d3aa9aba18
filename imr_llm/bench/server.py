"""A loopback OpenAI-compatible server for tests and load benchmarks (127.0.0.1 only).

Real HTTP/1.1 with keep-alive, so numbers include the whole openai + instructor client stack.
Answers ``/v1/chat/completions`` with a forced tool call whose arguments are either

* ``recorded``: a real model's answer recorded earlier, looked up by the sha256 of the user
  message (``tests/fixtures/recorded/*.json``), or
* ``synthetic``: schema-valid output derived from the letter it was sent (decisions, categories
  and regions read from the request lines; a deliberately invented age/sex when ``invent=True``).

Faults for reliability tests: per-request latency, tokens/s, a rate limit answering 429 with or
without Retry-After, and rates of 500/502/503, dropped connections, truncated JSON,
schema-invalid JSON and replies cut by max_tokens (finish_reason "length").
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core import lexicon as lx


@dataclass
class ServerConfig:
    mode: str = "synthetic"  # synthetic | recorded
    recorded_dir: Path | None = None
    latency: float = 0.0  # seconds per request
    tokens_per_s: float = 0.0  # 0 = instant generation
    rate_limit: int = 0  # requests per second, 0 = none
    retry_after: float | None = 1.0  # None = 429 without the header
    fault_rates: dict[str, float] = field(default_factory=dict)  # 500, 502, 503, reset, truncated, invalid, length
    fault_script: list[str] = field(default_factory=list)  # faults to serve first, in order ("ok" = none)
    invent: bool = False
    seed: int = 0
    batch_polls: int = 3  # a batch completes on this poll


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.faults: dict[str, int] = {}
        self.lock = threading.Lock()

    def hit(self, status: int, fault: str | None = None) -> None:
        with self.lock:
            self.requests += 1
            self.by_status[status] = self.by_status.get(status, 0) + 1
            if fault:
                self.faults[fault] = self.faults.get(fault, 0) + 1


_ITEM = re.compile(r"^ITEM (\d+): (.*)\nDECISION: (.*)$", re.MULTILINE)


def synthetic_arguments(user: str, invent: bool = False) -> dict:
    """What a careful model would answer for our compact letter rendering."""
    items = []
    for m in _ITEM.finditer(user):
        req = m.group(2)
        cat = lx.categorize(req)
        q = lx.quantity(req)
        fr = lx.frequency(req)
        items.append({"index": int(m.group(1)), "decision": m.group(3).strip(), "category": cat[0] if cat else "other",
                      "quantity": q[0] if q else None, "frequency": fr[0] if fr else None,
                      "body_regions": [r for r, _, _ in lx.body_regions(req)][:6], "denial_reasons": []})
    out = {"age": None, "sex": None, "claimant_quote": None, "diagnoses": [], "prior_treatments": [],
           "surgeries": [], "items": items}
    summ = user.split("\n\nITEM ", 1)[0]
    m = lx.AGE_SEX.search(summ)
    if m:
        out["age"] = int(m.group("age"))
        out["sex"] = lx.SEX_WORDS.get((m.group("sex") or "").lower())
        out["claimant_quote"] = m.group()
    elif invent:  # what small models do: state facts the letter never gives
        out.update(age=24, sex="male", claimant_quote="The applicant is a 24 year old male")
    return out


def hashed_embedding(text: str, dim: int = 64) -> list[float]:
    """A deterministic bag-of-words vector (feature hashing): a real, if crude, embedding."""
    v = [0.0] * dim
    for w in re.findall(r"[a-z]{3,}", text.lower()):
        h = int(hashlib.md5(w[:6].encode()).hexdigest(), 16)
        v[h % dim] += 1.0 if (h >> 8) & 1 else -1.0
    return v


_PASSAGE = re.compile(r"^\[(\d+)\] [^\n]*\n([^\n]+)", re.MULTILINE)


def synthetic_answer(user: str, invent: bool = False) -> dict:
    """Cite each passage with its first sentence; with ``invent``, add a citation that is not there."""
    cites, parts = [], []
    for m in _PASSAGE.finditer(user):
        first = re.split(r"(?<=[.!?])\s+", m.group(2).strip())[0]
        cites.append({"source": int(m.group(1)), "quote": first})
        parts.append(f"The reviewer explained the decision [{m.group(1)}].")
    if invent:
        cites.append({"source": 1, "quote": "The reviewer noted the claimant returned to full duty in 2019."})
        cites.append({"source": 99, "quote": "A passage that does not exist."})
        parts.append("It was also noted that the claimant returned to work [99].")
    return {"answer": " ".join(parts) or "The passages do not answer the question.", "citations": cites}


class FakeOpenAI:
    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.stats = Stats()
        self.rng = random.Random(cfg.seed)
        self._script = list(cfg.fault_script)
        self._window: list[float] = []
        self._recorded: dict[str, dict] = {}
        if cfg.mode == "recorded" and cfg.recorded_dir:
            for f in sorted(Path(cfg.recorded_dir).glob("*.json")):
                rec = json.loads(f.read_text())
                self._recorded[rec["user_sha256"]] = rec
        self.batches: dict[str, dict] = {}
        self.files: dict[str, bytes] = {}
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "FakeOpenAI":
        ready = threading.Event()

        def runner() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0, backlog=512))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=runner, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self._loop and self._server:
            async def shut() -> None:
                self._server.close()
                me = asyncio.current_task()
                tasks = [t for t in asyncio.all_tasks() if t is not me]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *a) -> None:
        self.stop()

    # -- HTTP
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                result = await self._route(method, path.split("?")[0], body, headers)
                if result is None:  # simulated connection reset
                    writer.transport.abort()
                    return
                status, payload, extra = result
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'ERR'}", "content-type: application/json",
                        f"content-length: {len(data)}", "connection: keep-alive"]
                head += [f"{k}: {v}" for k, v in extra.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    def _pick_fault(self) -> str | None:
        if self._script:
            f = self._script.pop(0)
            return None if f == "ok" else f
        for name, rate in self.cfg.fault_rates.items():
            if self.rng.random() < rate:
                return name
        return None

    def _rate_limited(self) -> bool:
        if not self.cfg.rate_limit:
            return False
        now = time.monotonic()
        self._window = [t for t in self._window if now - t < 1.0]
        if len(self._window) >= self.cfg.rate_limit:
            return True
        self._window.append(now)
        return False

    async def _route(self, method: str, path: str, body: bytes, headers: dict):
        if path.endswith("/models"):
            self.stats.hit(200)
            return 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}, {}
        if path.endswith("/chat/completions") and method == "POST":
            return await self._chat(json.loads(body or b"{}"))
        if path.endswith("/embeddings") and method == "POST":
            req = json.loads(body or b"{}")
            texts = req["input"] if isinstance(req["input"], list) else [req["input"]]
            self.stats.hit(200, "embeddings")
            return 200, {"object": "list", "model": req.get("model", "fake"), "usage": {"prompt_tokens": 0, "total_tokens": 0},
                         "data": [{"object": "embedding", "index": i, "embedding": hashed_embedding(t)} for i, t in enumerate(texts)]}, {}
        res = self._batch_api(method, path, body, headers)
        if res is not None:
            self.stats.hit(res[0], "batch_api")
            return res
        self.stats.hit(404)
        return 404, {"error": {"message": f"no route {method} {path}"}}, {}

    async def _chat(self, req: dict):
        if self._rate_limited():
            self.stats.hit(429, "rate_limit")
            extra = {"retry-after": str(self.cfg.retry_after)} if self.cfg.retry_after is not None else {}
            return 429, {"error": {"message": "rate limit", "type": "rate_limit_error"}}, extra
        fault = self._pick_fault()
        if fault in ("429", "429-noheader"):
            self.stats.hit(429, fault)
            extra = {"retry-after": "0.2"} if fault == "429" else {}
            return 429, {"error": {"message": "rate limit", "type": "rate_limit_error"}}, extra
        if fault in ("500", "502", "503"):
            self.stats.hit(int(fault), fault)
            return int(fault), {"error": {"message": f"server error {fault}"}}, {}
        if fault == "reset":
            self.stats.hit(0, fault)
            return None
        if fault == "timeout":
            self.stats.hit(0, fault)
            await asyncio.sleep(3600)
        status, payload = 200, self.completion(req, fault)
        if self.cfg.latency:
            await asyncio.sleep(self.cfg.latency)
        if self.cfg.tokens_per_s:
            await asyncio.sleep(payload["usage"]["completion_tokens"] / self.cfg.tokens_per_s)
        self.stats.hit(status, fault)
        return status, payload, {}

    # -- Batch API: files upload/content and batches create/retrieve (completes after batch_polls polls)
    def _batch_api(self, method: str, path: str, body: bytes, headers: dict):
        parts = path.rstrip("/").split("/")
        if path.endswith("/files") and method == "POST":
            from email import policy
            from email.parser import BytesParser

            msg = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + headers.get("content-type", "").encode() + b"\r\n\r\n" + body)
            data, name = b"", "upload.jsonl"
            for part in msg.iter_parts():
                if part.get_param("name", header="content-disposition") == "file":
                    data = part.get_payload(decode=True)
                    name = part.get_filename() or name
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = data
            return 200, {"id": fid, "object": "file", "bytes": len(data), "created_at": 0, "filename": name,
                         "purpose": "batch", "status": "processed"}, {}
        if len(parts) >= 2 and parts[-1] == "content" and parts[-3] == "files" and method == "GET":
            return 200, self.files.get(parts[-2], b""), {}
        if path.endswith("/batches") and method == "POST":
            req = json.loads(body)
            lines = [json.loads(x) for x in self.files[req["input_file_id"]].decode().splitlines() if x.strip()]
            bid = f"batch_{len(self.batches) + 1}"
            self.batches[bid] = {"obj": {"id": bid, "object": "batch", "endpoint": req["endpoint"], "input_file_id": req["input_file_id"],
                                         "completion_window": req["completion_window"], "status": "validating", "created_at": 0,
                                         "request_counts": {"total": len(lines), "completed": 0, "failed": 0}},
                                 "lines": lines, "polls": 0}
            return 200, self.batches[bid]["obj"], {}
        if len(parts) >= 2 and parts[-2] == "batches" and method == "GET":
            b = self.batches.get(parts[-1])
            if b is None:
                return 404, {"error": {"message": "no such batch"}}, {}
            b["polls"] += 1
            o, total = b["obj"], len(b["lines"])
            if b["polls"] >= self.cfg.batch_polls and o["status"] != "completed":
                out = []
                for i, r in enumerate(b["lines"]):
                    out.append({"id": f"req_{i}", "custom_id": r["custom_id"],
                                "response": {"status_code": 200, "request_id": f"r{i}", "body": self.completion(r["body"])}, "error": None})
                fid = f"file-{len(self.files) + 1}"
                self.files[fid] = "".join(json.dumps(x) + "\n" for x in out).encode()
                o.update(status="completed", output_file_id=fid, request_counts={"total": total, "completed": total, "failed": 0})
            elif o["status"] != "completed":
                done = min(total, total * b["polls"] // max(1, self.cfg.batch_polls))
                o.update(status="in_progress", request_counts={"total": total, "completed": done, "failed": 0})
            return 200, o, {}
        return None

    def completion(self, req: dict, fault: str | None = None) -> dict:
        msgs = req.get("messages", [])
        user = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), "")
        if isinstance(user, list):
            user = " ".join(p.get("text", "") for p in user if isinstance(p, dict))
        sha = hashlib.sha256(user.encode()).hexdigest()
        finish = "tool_calls"
        tools = req.get("tools") or []
        tool_name = tools[0]["function"]["name"] if tools else ""
        if tool_name == "LLMAnswer" and self.cfg.mode != "recorded":
            args = json.dumps(synthetic_answer(user, self.cfg.invent))
        elif self.cfg.mode == "recorded":
            rec = self._recorded.get(sha)
            args = rec["arguments"] if rec else json.dumps({"error": "no recording for this message"})
        else:
            args = json.dumps(synthetic_arguments(user, self.cfg.invent))
        if fault == "truncated":
            args = args[: max(1, len(args) // 2)]
        elif fault == "invalid":
            args = json.dumps({"items": "not a list", "age": "old"})
        elif fault == "length":
            args, finish = args[: max(1, len(args) // 3)], "length"
        name = tool_name or "LLMExtraction"
        ptoks = sum(len(str(m.get("content", ""))) for m in msgs) // 4 + len(json.dumps(tools)) // 4
        ctoks = max(1, len(args) // 4)
        msg: dict = {"role": "assistant", "content": None,
                     "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": name, "arguments": args}}]}
        if not tools:  # JSON modes
            msg = {"role": "assistant", "content": args}
            finish = "stop" if finish != "length" else finish
        return {"id": f"chatcmpl-{sha[:12]}", "object": "chat.completion", "created": 0, "model": req.get("model", "fake"),
                "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
                "usage": {"prompt_tokens": ptoks, "completion_tokens": ctoks, "total_tokens": ptoks + ctoks}}
