"""A loopback OpenAI-compatible server for tests and load benchmarks (127.0.0.1 only).

Starlette routes served by uvicorn on a background thread: real HTTP/1.1 with keep-alive, so
numbers include the whole openai + instructor client stack.
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
import logging
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..core import lexicon as lx

log = logging.getLogger(__name__)


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


_ISSUE = re.compile(r"\b(?:Issue|Item|Request)\s+\d+:\s*(?P<req>[^.]+)\.\s+(?P<dec>[^.]+\.)", re.IGNORECASE)


def synthetic_free_items(user: str) -> dict:
    """What a careful model lists for a letter in a layout the parser does not know: each "Issue N:"
    request and the sentence after it that decides it."""
    items = []
    for m in _ISSUE.finditer(user):
        sentence = " ".join(m.group("dec").split())
        upheld = re.search(r"not\s+medically\s+necessary|\bupheld\b", sentence, re.IGNORECASE)
        items.append({"request": " ".join(m.group("req").split()), "decision": "Upheld" if upheld else "Overturned",
                      "decision_quote": sentence})
    return {"items": items}


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


class _Regex(Convertor[str]):
    def __init__(self, regex: str) -> None:
        self.regex = regex

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Routes match as the hand-written server's path tests did: any prefix ending in "/" (so "/v1/models"
# and "/models" both answer, like path.endswith("/models")), an empty file id, trailing slashes ignored.
register_url_convertor("imr_prefix", _Regex("(?:.*/)?"))
register_url_convertor("imr_segment", _Regex("[^/]*"))
register_url_convertor("imr_slashes", _Regex("/*"))


async def _drop(receive) -> None:
    """Close the TCP connection without sending a byte (a simulated reset). ASGI has no message for
    that, so abort the transport of uvicorn's request cycle, the object ``receive`` is bound to."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("the ASGI server does not expose its transport: cannot drop the connection")
    transport.abort()
    while (await receive())["type"] != "http.disconnect":
        pass


class _Endpoint:
    """One route's ASGI app (any method unless the route lists some). The handler answers
    ``(status, payload, headers)``, or None to drop the connection; a request it cannot answer
    (bad JSON, missing fields) drops the connection too, as the hand-written server did."""

    def __init__(self, owner: "FakeOpenAI", handler, label: str | None = None) -> None:
        self.owner, self.handler, self.label = owner, handler, label

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        try:
            result = await self.handler(request, await request.body())
        except asyncio.CancelledError:
            if not self.owner._stopping:
                raise
            result = None  # stop(): requests still waiting (latency, "timeout") end with their connection
        except Exception as e:  # noqa: BLE001
            if not isinstance(e, ValueError):
                log.exception("fake server: %s %s", request.method, request.url.path)
            result = None
        if result is None:
            await _drop(receive)
            return
        status, payload, extra = result
        if self.label:
            self.owner.stats.hit(status, self.label)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await Response(data, status, extra, "application/json")(scope, receive, send)


class _Uvicorn(uvicorn.Server):
    """uvicorn on a pre-bound socket in a thread: reports when it listens, waits for stop() instead of
    polling every 0.1 s, and stops at once: listener closed, idle keep-alive connections closed,
    requests still running cancelled (their connections dropped, no response)."""

    def __init__(self, config: uvicorn.Config, owner: "FakeOpenAI", ready: threading.Event) -> None:
        super().__init__(config)
        self.owner, self.ready = owner, ready
        self.halt = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self.ready.set()

    def request_stop(self) -> None:  # from another thread
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.halt.set)

    async def main_loop(self) -> None:
        await self.halt.wait()

    async def shutdown(self, sockets=None) -> None:
        self.owner._stopping = True
        for server in self.servers:
            server.close()
        for conn in list(self.server_state.connections):
            conn.shutdown()
        tasks = [t for t in self.server_state.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()


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
        e, pre = _Endpoint, "/{_p:imr_prefix}"
        self.app = Starlette(routes=[
            Route(pre + "models", e(self, self._models)),
            Route(pre + "chat/completions", e(self, self._chat_route), methods=["POST"]),
            Route(pre + "embeddings", e(self, self._embeddings), methods=["POST"]),
            # Batch API: files upload/content and batches create/retrieve (completes after batch_polls polls)
            Route(pre + "files", e(self, self._upload, "batch_api"), methods=["POST"]),
            Route(pre + "files/{fid:imr_segment}/content{_s:imr_slashes}", e(self, self._file_content, "batch_api"), methods=["GET"]),
            Route(pre + "batches", e(self, self._batch_create, "batch_api"), methods=["POST"]),
            Route(pre + "batches/{bid}{_s:imr_slashes}", e(self, self._batch_retrieve, "batch_api"), methods=["GET"]),
            Route("/{_p:path}", e(self, self._no_route)),  # any other path or method: 404, counted
        ])
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle
    def start(self) -> "FakeOpenAI":
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so (proto 0 would
        # leave Nagle on, and uvicorn's separate header and body writes would wait for delayed ACKs)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))  # loopback only, never another address
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, ws="none", lifespan="off", interface="asgi3", log_config=None, log_level="warning",
                                server_header=False, date_header=False, proxy_headers=False, backlog=512,
                                timeout_keep_alive=24 * 3600)  # idle keep-alive connections stay open, as before
        ready = threading.Event()
        self._stopping = False
        self._server = server = _Uvicorn(config, self, ready)

        def runner() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(server.serve(sockets=[sock]))
            finally:
                sock.close()
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                ready.set()

        self._thread = threading.Thread(target=runner, daemon=True)
        self._thread.start()
        ready.wait(10)
        if not server.started:
            raise RuntimeError("the loopback server did not start")
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server and thread and thread.is_alive():
            server.request_stop()
            thread.join(5)

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *a) -> None:
        self.stop()

    # -- HTTP
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

    async def _models(self, request: Request, body: bytes):
        self.stats.hit(200)
        return 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]}, {}

    async def _chat_route(self, request: Request, body: bytes):
        return await self._chat(json.loads(body or b"{}"))

    async def _embeddings(self, request: Request, body: bytes):
        req = json.loads(body or b"{}")
        texts = req["input"] if isinstance(req["input"], list) else [req["input"]]
        self.stats.hit(200, "embeddings")
        return 200, {"object": "list", "model": req.get("model", "fake"), "usage": {"prompt_tokens": 0, "total_tokens": 0},
                     "data": [{"object": "embedding", "index": i, "embedding": hashed_embedding(t)} for i, t in enumerate(texts)]}, {}

    async def _no_route(self, request: Request, body: bytes):
        self.stats.hit(404)
        path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
        return 404, {"error": {"message": f"no route {request.method} {path}"}}, {}

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

    # -- Batch API (each answer is counted as a "batch_api" fault by its route)
    async def _upload(self, request: Request, body: bytes):
        from email import policy
        from email.parser import BytesParser

        ctype = request.headers.get("content-type", "")
        msg = BytesParser(policy=policy.HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
        data, name = b"", "upload.jsonl"
        for part in msg.iter_parts():
            if part.get_param("name", header="content-disposition") == "file":
                data = part.get_payload(decode=True)
                name = part.get_filename() or name
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = data
        return 200, {"id": fid, "object": "file", "bytes": len(data), "created_at": 0, "filename": name,
                     "purpose": "batch", "status": "processed"}, {}

    async def _file_content(self, request: Request, body: bytes):
        return 200, self.files.get(request.path_params["fid"], b""), {}

    async def _batch_create(self, request: Request, body: bytes):
        req = json.loads(body)
        lines = [json.loads(x) for x in self.files[req["input_file_id"]].decode().splitlines() if x.strip()]
        bid = f"batch_{len(self.batches) + 1}"
        self.batches[bid] = {"obj": {"id": bid, "object": "batch", "endpoint": req["endpoint"], "input_file_id": req["input_file_id"],
                                     "completion_window": req["completion_window"], "status": "validating", "created_at": 0,
                                     "request_counts": {"total": len(lines), "completed": 0, "failed": 0}},
                             "lines": lines, "polls": 0}
        return 200, self.batches[bid]["obj"], {}

    async def _batch_retrieve(self, request: Request, body: bytes):
        b = self.batches.get(request.path_params["bid"])
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
        elif tool_name == "FreeItems" and self.cfg.mode != "recorded":
            args = json.dumps(synthetic_free_items(user))
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
