"""The corpus runner: letters in, records out, in input order; one process or several.

Each letter is read, parsed, given its one model call (``calls.plan``; answered from the cache when
it was asked before, live or through the Batch API), assembled and grounded. Records are written in
input order through a bounded window, so memory stays flat and a re-run produces byte-identical
output. Outputs are temporaries renamed into place when the run ends (``outputs``), and the cache
(one committed row per finished letter) makes a re-run resume without repeating LLM calls.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterable

from .. import __version__
from ..config import Settings, redact
from ..core.load import LetterError, read_bytes, read_letter
from ..core.models import SCHEMA_VERSION, DecisionRecord, Usage, csv_rows, output_line
from ..extract.assemble import analyse, assemble
from ..procs import remove_stale
from ..providers.llm import LLMError, Provider, cost
from . import calls
from .cache import Cache, key
from .outputs import RecordWriter, write_errors

NO_MODEL_NOTICE = (
    "No model configured: extracting with the layout parser and rules only; fields that need a model "
    "(anything the letter does not state in a fixed phrasing) stay empty. To use one, set IMR_MODEL to "
    "openai:gpt-4o-mini (with OPENAI_API_KEY), compatible:NAME (with IMR_BASE_URL, e.g. Ollama/vLLM/llama.cpp server) "
    "or llama-cpp:/path/model.gguf (pip install -e '.[local]'), or pass --model."
)


@dataclass
class Outcome:
    """One letter's result: the JSONL line and a small summary (``meta``), or an error.

    Cache hits carry only the stored line and meta: re-running a corpus never re-validates records.
    """
    path: str
    line: str | None = None
    meta: dict | None = None
    error: str | None = None
    cached: bool = False
    _record: DecisionRecord | None = None

    @property
    def record(self) -> DecisionRecord | None:
        if self._record is None and self.line is not None:
            self._record = DecisionRecord.model_validate_json(self.line)
        return self._record


def summarize(rec: DecisionRecord) -> tuple[str, dict]:
    """The output line of a record and what the batch needs to know about it."""
    u = rec.usage
    line = output_line(rec)
    meta = {"letter_id": rec.letter_id, "sha256": rec.sha256, "calls": u.calls, "in": u.input_tokens, "out": u.output_tokens,
            "retry": u.retry_tokens, "cost": u.cost_usd, "flagged": any(not f.startswith("input:") for f in rec.flags),
            "csv": csv_rows(rec)}
    return line, meta


@dataclass
class Totals:
    """What a run did: letters written, failed, answered from the cache, flagged, and the model
    usage of the letters that were not (calls, tokens with retries, cost; None = unknown price)."""
    ok: int = 0
    failed: int = 0
    cached: int = 0
    flagged: int = 0
    usage: Usage = field(default_factory=lambda: Usage(cost_usd=0.0))
    errors: list[str] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        if o.line is None:
            self.fail(o.error or f"{o.path}: unknown error")
            return
        self.ok += 1
        m, u = o.meta, self.usage
        if o.cached:
            self.cached += 1
        else:
            u.calls += m["calls"]
            u.input_tokens += m["in"]
            u.output_tokens += m["out"]
            u.retry_tokens += m["retry"]
            if u.cost_usd is not None:
                u.cost_usd = None if m["cost"] is None and m["calls"] else u.cost_usd + (m["cost"] or 0.0)
        self.flagged += int(m["flagged"])

    def fail(self, error: str) -> None:
        self.failed += 1
        self.errors.append(error)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the package's source: a finished record is only reused by the code that made it
    (the LLM answer cache is keyed separately, by text, model, prompt and schema version)."""
    h = hashlib.sha256(__version__.encode())
    root = Path(__file__).resolve().parents[1]  # the whole package
    for f in sorted(root.rglob("*.py")):
        if "bench" not in f.parts and "cmd" not in f.parts:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Extractor:
    """One letter to an ``Outcome``; never raises for a letter's own problem."""

    def __init__(self, s: Settings, provider: Provider | None = None, use_cache: bool = True):
        self.s = s
        self.provider = provider
        self.cache = Cache(s.data_dir / "cache.sqlite") if use_cache else None
        self.prompt = calls.prompts_key() if s.provider != "none" else "-"

    async def one(self, path: str) -> Outcome:
        deadline = (self.s.env.letter_deadline if self.s.env else 300.0) if self.provider is not None else None
        try:
            if deadline:  # wall clock for the whole letter, every retry included: a server that never answers ends here
                return await asyncio.wait_for(self.outcome(path), deadline)
            return await self.outcome(path)
        except asyncio.TimeoutError:
            return Outcome(path, error=f"{path}: no answer from the model within {deadline:g} s (IMR_LETTER_DEADLINE; every retry included)")
        except LetterError as e:
            return Outcome(path, error=redact(str(e)))
        except LLMError as e:
            return Outcome(path, error=redact(f"{path}: model failed after retries: {e}"))
        except Exception as e:  # never let one letter stop the batch
            return Outcome(path, error=redact(f"{path}: internal error {type(e).__name__}: {str(e)[:200]} (rerun with --debug)"))

    async def outcome(self, path: str) -> Outcome:
        """The letter's outcome; raises what ``one`` turns into an error line (``--debug`` calls this)."""
        # The record key needs only the file's bytes: an unchanged letter is answered from the cache
        # without decoding, normalising or (for a PDF) extracting its text again.
        data = read_bytes(path, self.s.env.max_bytes if self.s.env else None)
        rkey = key("record", hashlib.sha256(data).hexdigest(), str(Path(path)), self.s.label, self.prompt,
                   SCHEMA_VERSION, code_fingerprint())
        if self.cache and (hit := self.cache.get(rkey)):
            return Outcome(path, hit["line"], hit["meta"], cached=True)
        letter = read_letter(path, data)
        lay = analyse(letter)
        answer, usage, flags, call = None, Usage(provider=self.s.provider, model=self.s.model), [], None
        if self.provider is not None:
            call = calls.plan(letter, lay, self.s)
            answer, usage = await self.answer(call)
            if call.truncated:
                flags.append(calls.TRUNCATED)
        free = call is not None and call.kind == "llm-free"
        rec = assemble(letter, lay, None if free else answer, usage, flags, free=answer if free else None)
        line, meta = summarize(rec)
        if self.cache:
            self.cache.put(rkey, "record", {"line": line, "meta": meta})
        return Outcome(path, line, meta, _record=rec)

    async def answer(self, call: calls.Call):
        """The model's answer to ``call`` and its usage: from the cache when asked before (a run killed
        before the record was cached, or collected from the Batch API), else asked and cached."""
        got = self.cache.get(call.key) if self.cache else None
        if got:
            return call.cached_type.model_validate(got["output"]), Usage.model_validate(got["usage"])
        value, usage = await self.provider.complete(call.messages, call.answer_type)
        usage.prompt_version = call.prompt_version
        if self.cache:
            self.cache.put(call.key, "llm", {"output": value.model_dump(mode="json"), "usage": usage.model_dump()})
        return value, usage


async def in_order(paths: Iterable[str], one: Callable[[str], Awaitable[Outcome]], concurrency: int) -> AsyncIterator[Outcome]:
    """Outcomes in input order, ``concurrency`` letters in flight, at most a bounded window finished
    ahead of the one being waited for (memory stays flat on any corpus size)."""
    sem = asyncio.Semaphore(max(1, concurrency))

    async def guarded(p: str) -> Outcome:
        async with sem:
            return await one(p)

    window: deque[asyncio.Task] = deque()
    limit = max(16, concurrency * 4)
    try:
        for p in paths:
            window.append(asyncio.create_task(guarded(p)))
            while len(window) >= limit:
                yield await window.popleft()
        while window:
            yield await window.popleft()
    finally:
        for t in window:
            t.cancel()


async def run(paths: list[str], ex: Extractor, out: Path | None, csv_path: Path | None, concurrency: int,
              on_done: Callable[[Outcome], None] | None = None) -> Totals:
    """Extract ``paths`` in one process; the outputs are replaced only by a run that wrote a record
    (or had nothing to fail)."""
    totals = Totals()
    w = RecordWriter(out, csv_path)
    if ex.provider is not None and ex.provider.in_process:
        concurrency = 1  # one generation at a time anyway; queued letters would spend their deadline waiting
    try:
        async for o in in_order(paths, ex.one, concurrency):
            totals.add(o)
            if o.line is not None:
                w.write(o.line, o.meta)
            if on_done:
                on_done(o)
    except BaseException:
        w.abort()
        raise
    finally:
        if ex.provider is not None:
            await ex.provider.aclose()
    w.finish(keep=bool(totals.ok or not totals.failed))
    if out:
        write_errors(out, totals.errors)
    return totals


def extract(paths: list[str], s: Settings, out: Path, csv_path: Path | None, concurrency: int, workers: int = 1,
            provider: Provider | None = None, use_cache: bool = True, debug: bool = False,
            on_progress: Callable[[int], None] | None = None) -> Totals:
    """The corpus: in this process (with ``provider``) or over ``workers`` processes (each starts its own)."""
    if workers > 1:
        return run_parallel(paths, s, out, csv_path, concurrency, workers, on_progress)
    ex = Extractor(s, provider, use_cache=use_cache)
    if debug:
        ex.one = ex.outcome  # type: ignore[method-assign]  # raise inside, for a traceback
    try:
        return asyncio.run(run(paths, ex, out, csv_path, concurrency, on_progress and (lambda o: on_progress(1))))
    finally:
        if ex.cache:
            ex.cache.close()


def dry_run(paths: Iterable[str], s: Settings) -> dict:
    """Letters, input tokens and estimated cost, without calling any model."""
    from ..providers import tokens

    n_ok, n_fail, tin, tout, errors = 0, 0, 0, 0, []
    for p in paths:
        try:
            letter = read_letter(p)
            lay = analyse(letter)
        except LetterError as e:
            n_fail += 1
            errors.append(str(e))
            continue
        msgs = calls.plan(letter, lay, s).messages
        n_ok += 1
        tin += sum(tokens.count(m["content"], s.model) for m in msgs) + 900  # + tool schema
        tout += 120 + 90 * len(lay.items)  # measured typical answer size
    return {"letters": n_ok, "unreadable": n_fail, "input_tokens": tin, "est_output_tokens": tout,
            "est_cost_usd": cost(s, tin, tout), "errors": errors}


def progress_callback(total: int):
    """A rich progress bar (rate and ETA) on stderr; returns (callback(n letters done), stop)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    prog = Progress(TextColumn("extracting"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]} letters/s"), TimeRemainingColumn(), console=console,
                    disable=not console.is_terminal)
    task = prog.add_task("x", total=total, rate="-")
    start = time.monotonic()
    prog.start()

    def cb(n: int = 1) -> None:
        """``n`` more letters done."""
        done = prog.tasks[0].completed + n
        el = time.monotonic() - start
        prog.update(task, advance=n, rate=f"{done / el:.1f}" if el > 0 else "-")

    return cb, prog.stop


# --- several processes ---------------------------------------------------------------------------
# One event loop tops out near one core (instructor + openai cost ~15 ms of CPU per call), so a
# large batch can be split over worker processes. Worker k takes letters k, k+W, k+2W... and writes
# its results in that order to a shard; the parent interleaves the shards back into input order.


def _worker(k: int, workers: int, paths: list[str], s: Settings, shard: str, concurrency: int, progress) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    provider = Provider(s) if s.provider != "none" else None
    ex = Extractor(s, provider)
    mine = paths[k::workers]

    def done(o: Outcome) -> None:
        with progress.get_lock():
            progress.value += 1

    async def go() -> None:
        with open(shard, "w", encoding="utf-8") as f:
            async for o in in_order(mine, ex.one, concurrency):
                if o.line is None:
                    f.write(json.dumps({"__error__": o.error}) + "\n")
                else:
                    f.write(json.dumps({"__meta__": o.meta, "cached": o.cached}) + "\n")
                    f.write(o.line + "\n")
                done(o)
        if provider is not None:
            await provider.aclose()

    asyncio.run(go())


def run_parallel(paths: list[str], s: Settings, out: Path, csv_path: Path | None, concurrency: int, workers: int,
                 on_progress: Callable[[int], None] | None = None) -> Totals:
    """Extract ``paths`` over ``workers`` processes; writes exactly what ``run`` writes."""
    import multiprocessing as mp
    import shutil

    ctx = mp.get_context("spawn")
    progress = ctx.Value("i", 0)
    remove_stale(out.parent, f".{out.name}.shards-*")  # left by a run killed with -9
    tmpdir = out.parent / f".{out.name}.shards-{os.getpid()}"
    tmpdir.mkdir(parents=True, exist_ok=True)
    shards = [str(tmpdir / f"shard{k}.jsonl") for k in range(workers)]
    procs = [ctx.Process(target=_worker, args=(k, workers, paths, s, shards[k], max(1, concurrency // workers), progress))
             for k in range(workers)]
    try:
        for p in procs:
            p.start()
        _wait(procs, progress, on_progress)
        return _merge(paths, shards, out, csv_path)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        shutil.rmtree(tmpdir, ignore_errors=True)


def _wait(procs: list, progress, on_progress: Callable[[int], None] | None) -> None:
    last = 0
    while True:
        alive = any(p.is_alive() for p in procs)
        if on_progress and progress.value != last:
            on_progress(progress.value - last)
            last = progress.value
        if not alive:
            break
        time.sleep(0.2)
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"worker process failed (exit codes {bad}); nothing written, rerun to resume from the cache")


def _merge(paths: list[str], shards: list[str], out: Path, csv_path: Path | None) -> Totals:
    """Interleave the workers' shards back into input order (worker k had letters k, k+W, ...)."""
    totals = Totals()
    w = RecordWriter(out, csv_path)
    files = [open(sh, encoding="utf-8") for sh in shards]
    try:
        for i, path in enumerate(paths):
            f = files[i % len(files)]
            head = json.loads(f.readline())
            if "__error__" in head:
                totals.fail(head["__error__"])
                continue
            o = Outcome(path, f.readline().rstrip("\n"), head["__meta__"], cached=head["cached"])
            totals.add(o)
            w.write(o.line, o.meta)
    except BaseException:
        w.abort()
        raise
    finally:
        for f in files:
            f.close()
    w.finish(keep=bool(totals.ok or not totals.failed))
    write_errors(out, totals.errors)
    return totals
