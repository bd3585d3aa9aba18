"""Batch extraction: concurrency, cache, resumability, atomic ordered output, progress, costs.

Records are written in input order through a bounded reorder window, so memory stays flat and a
re-run produces byte-identical output. Output goes to a temporary file renamed over the target
only when the run ends: an interrupted run never leaves a half-written or duplicated file, and the
cache (one committed row per finished letter) makes the re-run resume without repeating LLM calls.
"""
from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from . import __version__
from .cache import Cache, key
from .config import Settings, redact
from .extract import (PROMPT_VERSION, UNKNOWN_PROMPT_VERSION, FreeItems, LLMExtraction, analyse, assemble, build_messages,
                      free_items_model, response_model, unknown_layout_messages)
from .llm import CURRENT, LLMError, Provider, Tally, cost
from .load import LetterError, read_bytes, read_letter
from .procs import remove_stale
from .models import CSV_COLUMNS, SCHEMA_VERSION, DecisionRecord, Usage, csv_rows, output_line

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
    ok: int = 0
    failed: int = 0
    cached: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retry_tokens: int = 0
    cost_usd: float | None = 0.0
    flagged: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, o: Outcome) -> None:
        if o.line is None:
            self.failed += 1
            self.errors.append(o.error or f"{o.path}: unknown error")
            return
        self.ok += 1
        m = o.meta
        if o.cached:
            self.cached += 1
        else:
            self.calls += m["calls"]
            self.input_tokens += m["in"]
            self.output_tokens += m["out"]
            self.retry_tokens += m["retry"]
            if self.cost_usd is not None:
                self.cost_usd = None if m["cost"] is None and m["calls"] else self.cost_usd + (m["cost"] or 0.0)
        self.flagged += int(m["flagged"])


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the package's source: a finished record is only reused by the code that made it
    (the LLM answer cache is keyed separately, by text, model, prompt and schema version)."""
    h = hashlib.sha256(__version__.encode())
    root = Path(__file__).parent
    for f in sorted(root.rglob("*.py")):
        if "bench" not in f.parts and "cmd" not in f.parts:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


class Extractor:
    def __init__(self, s: Settings, provider: Provider | None = None, use_cache: bool = True):
        self.s = s
        self.provider = provider
        self.cache = Cache(s.data_dir / "cache.sqlite") if use_cache else None
        self.prompt = PROMPT_VERSION if s.provider != "none" else "-"

    async def one(self, path: str) -> Outcome:
        deadline = (self.s.env.letter_deadline if self.s.env else 300.0) if self.provider is not None else None
        try:
            if deadline:  # wall clock for the whole letter, every retry included: a server that never answers ends here
                return await asyncio.wait_for(self._one(path), deadline)
            return await self._one(path)
        except asyncio.TimeoutError:
            return Outcome(path, error=f"{path}: no answer from the model within {deadline:g} s (IMR_LETTER_DEADLINE; every retry included)")
        except LetterError as e:
            return Outcome(path, error=redact(str(e)))
        except LLMError as e:
            return Outcome(path, error=redact(f"{path}: model failed after retries: {e}"))
        except Exception as e:  # never let one letter stop the batch
            return Outcome(path, error=redact(f"{path}: internal error {type(e).__name__}: {str(e)[:200]} (rerun with --debug)"))

    async def _free_items(self, letter, usage: Usage):
        """An IMR letter in a layout the parser does not know: the model lists its items and
        decisions (grounded afterwards, in ``assemble``)."""
        usage.prompt_version = UNKNOWN_PROMPT_VERSION
        lkey = key("llm-free", letter.text_sha256, self.s.label, UNKNOWN_PROMPT_VERSION, SCHEMA_VERSION)
        got = self.cache.get(lkey) if self.cache else None
        if got:
            return FreeItems.model_validate(got["output"]), Usage.model_validate(got["usage"])
        tally = Tally()
        tok = CURRENT.set(tally)
        try:
            out = await self.provider.extract(unknown_layout_messages(letter), free_items_model())
        finally:
            CURRENT.reset(tok)
        usage.calls, usage.input_tokens, usage.output_tokens = tally.calls, tally.input_tokens, tally.output_tokens
        usage.retry_tokens, usage.cost_usd = tally.retry_tokens, cost(self.s, tally.input_tokens, tally.output_tokens)
        if self.cache:
            self.cache.put(lkey, "llm", {"output": out.model_dump(mode="json"), "usage": usage.model_dump()})
        return out, usage

    async def _one(self, path: str) -> Outcome:
        # The record key needs only the file's bytes: an unchanged letter is answered from the cache
        # without decoding, normalising or (for a PDF) extracting its text again.
        data = read_bytes(path, self.s.env.max_bytes if self.s.env else None)
        rkey = key("record", hashlib.sha256(data).hexdigest(), str(Path(path)), self.s.label, self.prompt,
                   SCHEMA_VERSION, code_fingerprint())
        if self.cache and (hit := self.cache.get(rkey)):
            return Outcome(path, hit["line"], hit["meta"], cached=True)
        letter = read_letter(path, data)
        lay = analyse(letter)
        llm_out, usage, flags, free = None, Usage(provider=self.s.provider, model=self.s.model), [], None
        if self.provider is not None and "unknown_layout" in lay.features:
            free, usage = await self._free_items(letter, usage)
        elif self.provider is not None:
            usage.prompt_version = PROMPT_VERSION
            lkey = key("llm", letter.text_sha256, self.s.label, PROMPT_VERSION, SCHEMA_VERSION)
            got = self.cache.get(lkey) if self.cache else None
            if got:  # answered before (e.g. a run killed before its record was cached)
                llm_out = LLMExtraction.model_validate(got["output"])
                usage = Usage.model_validate(got["usage"])
            else:
                msgs, truncated = build_messages(lay, self.s.model)
                if truncated:
                    flags.append("llm_input_truncated: rationales were shortened to fit the token budget")
                tally = Tally()
                tok = CURRENT.set(tally)
                try:
                    llm_out = await self.provider.extract(msgs, response_model(len(lay.items)))
                finally:
                    CURRENT.reset(tok)
                usage.calls, usage.input_tokens, usage.output_tokens = tally.calls, tally.input_tokens, tally.output_tokens
                usage.retry_tokens = tally.retry_tokens
                usage.cost_usd = cost(self.s, tally.input_tokens, tally.output_tokens)
                if self.cache:
                    self.cache.put(lkey, "llm", {"output": llm_out.model_dump(mode="json"), "usage": usage.model_dump()})
        rec = assemble(letter, lay, llm_out, usage, flags, free=free)
        line, meta = summarize(rec)
        if self.cache:
            self.cache.put(rkey, "record", {"line": line, "meta": meta})
        return Outcome(path, line, meta, _record=rec)


class AtomicWriter:
    """Write to ``path.tmp-PID`` and rename over ``path`` on ``commit``; nothing changes before."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        remove_stale(path.parent, f".{path.name}.tmp-*")  # left by a killed run
        self.f = open(self.tmp, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)


def _dedupe_id(line: str, meta: dict, seen: dict[str, int]) -> tuple[str, list[dict]]:
    """Keep letter ids unique in one output (the same file name in two folders)."""
    rid = meta["letter_id"]
    n = seen.get(rid, 0)
    seen[rid] = n + 1
    if not n:
        return line, meta["csv"]
    new = f"{rid}~{meta['sha256'][:8]}"
    rec = json.loads(line)
    rec["letter_id"] = new
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False), [{**r, "letter_id": new} for r in meta["csv"]]


async def run(paths: list[str], ex: Extractor, out: Path | None, csv_path: Path | None, concurrency: int,
              on_done: Callable[[Outcome], None] | None = None) -> Totals:
    totals = Totals()
    jw = AtomicWriter(out) if out else None
    cw = AtomicWriter(csv_path) if csv_path else None
    cwriter = csv.DictWriter(cw.f, fieldnames=CSV_COLUMNS) if cw else None
    if cwriter:
        cwriter.writeheader()
    sem = asyncio.Semaphore(max(1, concurrency))

    async def guarded(p: str) -> Outcome:
        async with sem:
            return await ex.one(p)

    window: deque[asyncio.Task] = deque()
    limit = max(16, concurrency * 4)
    seen_ids: dict[str, int] = {}

    def emit(o: Outcome) -> None:
        totals.add(o)
        if o.line is not None:
            line, rows = _dedupe_id(o.line, o.meta, seen_ids)
            if jw:
                jw.f.write(line + "\n")
            if cwriter:
                cwriter.writerows(rows)
        if on_done:
            on_done(o)

    try:
        for p in paths:
            window.append(asyncio.create_task(guarded(p)))
            while len(window) >= limit:
                emit(await window.popleft())
        while window:
            emit(await window.popleft())
    except BaseException:
        for t in window:
            t.cancel()
        for w in (jw, cw):
            if w:
                w.abort()
        raise
    finally:
        if ex.provider is not None:
            await ex.provider.aclose()
    for w in (jw, cw):
        if w:
            # a run that produced no record never replaces earlier results
            w.commit() if totals.ok or not totals.failed else w.abort()
    if out:
        write_errors(out, totals.errors)
    return totals


def check_outputs(inputs: list[str], *outputs: Path | None) -> None:
    """Refuse, before any work, an output that would destroy something: an input letter, a folder,
    a FIFO or device, the same path twice, or a folder that cannot be written. ``OutputError``."""
    import stat

    seen: dict[Path, Path] = {}
    ins = {Path(p).resolve() for p in inputs}
    for o in (x for x in outputs if x is not None):
        for path in (o, errors_path(o)) if o is outputs[0] else (o,):
            r = path.resolve()
            if r in ins:
                raise OutputError(f"{path}: is one of the input letters; choose another output path")
            if r in seen:
                raise OutputError(f"{path}: the same file as {seen[r]}; give each output its own path")
            seen[r] = path
            if path.exists() or path.is_symlink():
                mode = path.stat().st_mode if path.exists() else 0
                if not stat.S_ISREG(mode):
                    kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device" if (
                        stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "not a regular file"
                    raise OutputError(f"{path}: is {kind}; the output must be a regular file (or a new path)")
            parent = r.parent
            while not parent.exists():
                parent = parent.parent
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: folder {parent} is not writable")


class OutputError(Exception):
    """An output path that would lose data or cannot be written; one line."""


def errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.jsonl")


def write_errors(out: Path, errors: list[str]) -> None:
    """Failed letters with their reasons beside the output (removed when a run has none)."""
    p = errors_path(out)
    if not errors:
        p.unlink(missing_ok=True)
        return
    w = AtomicWriter(p)
    for e in errors:
        path, _, reason = e.partition(": ")
        w.f.write(json.dumps({"source_path": path, "error": reason}) + "\n")
    w.commit()


def dry_run(paths: Iterable[str], s: Settings) -> dict:
    """Letters, input tokens and estimated cost, without calling any model."""
    from . import tokens

    n_ok, n_fail, tin, tout, errors = 0, 0, 0, 0, []
    for p in paths:
        try:
            letter = read_letter(p)
            lay = analyse(letter)
        except LetterError as e:
            n_fail += 1
            errors.append(str(e))
            continue
        msgs, _ = build_messages(lay, s.model)
        n_ok += 1
        tin += sum(tokens.count(m["content"], s.model) for m in msgs) + 900  # + tool schema
        tout += 120 + 90 * len(lay.items)  # measured typical answer size
    return {"letters": n_ok, "unreadable": n_fail, "input_tokens": tin, "est_output_tokens": tout,
            "est_cost_usd": cost(s, tin, tout), "errors": errors}


def progress_callback(total: int):
    """A rich progress bar (rate and ETA) on stderr; returns (callback, stop)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    prog = Progress(TextColumn("extracting"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]} letters/s"), TimeRemainingColumn(), console=console,
                    disable=not console.is_terminal)
    task = prog.add_task("x", total=total, rate="-")
    start = time.monotonic()
    prog.start()

    def cb(o: Outcome) -> None:
        done = prog.tasks[0].completed + 1
        el = time.monotonic() - start
        prog.update(task, advance=1, rate=f"{done / el:.1f}" if el > 0 else "-")

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
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(p: str) -> Outcome:
            async with sem:
                return await ex.one(p)

        window: deque[asyncio.Task] = deque()
        with open(shard, "w", encoding="utf-8") as f:
            def emit(o: Outcome) -> None:
                if o.line is None:
                    f.write(json.dumps({"__error__": o.error}) + "\n")
                else:
                    f.write(json.dumps({"__meta__": o.meta, "cached": o.cached}) + "\n")
                    f.write(o.line + "\n")
                done(o)

            for p in mine:
                window.append(asyncio.create_task(one(p)))
                while len(window) >= max(16, concurrency * 4):
                    emit(await window.popleft())
            while window:
                emit(await window.popleft())
        if provider is not None:
            await provider.aclose()

    asyncio.run(go())


def run_parallel(paths: list[str], s: Settings, out: Path, csv_path: Path | None, concurrency: int, workers: int,
                 on_progress: Callable[[int], None] | None = None) -> Totals:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    progress = ctx.Value("i", 0)
    import shutil

    remove_stale(out.parent, f".{out.name}.shards-*")  # left by a run killed with -9
    tmpdir = out.parent / f".{out.name}.shards-{os.getpid()}"
    tmpdir.mkdir(parents=True, exist_ok=True)
    shards = [str(tmpdir / f"shard{k}.jsonl") for k in range(workers)]
    procs = [ctx.Process(target=_worker, args=(k, workers, paths, s, shards[k], max(1, concurrency // workers), progress))
             for k in range(workers)]
    totals = Totals()
    try:
        for p in procs:
            p.start()
        last = 0
        while any(p.is_alive() for p in procs):
            time.sleep(0.2)
            if on_progress and progress.value != last:
                on_progress(progress.value - last)
                last = progress.value
        if on_progress and progress.value != last:
            on_progress(progress.value - last)
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"worker process failed (exit codes {bad}); nothing written, rerun to resume from the cache")
        jw = AtomicWriter(out)
        cw = AtomicWriter(csv_path) if csv_path else None
        cwriter = csv.DictWriter(cw.f, fieldnames=CSV_COLUMNS) if cw else None
        if cwriter:
            cwriter.writeheader()
        files = [open(sh, encoding="utf-8") for sh in shards]
        seen_ids: dict[str, int] = {}
        for i, path in enumerate(paths):
            f = files[i % workers]
            head = json.loads(f.readline())
            if "__error__" in head:
                totals.failed += 1
                totals.errors.append(head["__error__"])
                continue
            o = Outcome(path, f.readline().rstrip("\n"), head["__meta__"], cached=head["cached"])
            totals.add(o)
            line, rows = _dedupe_id(o.line, o.meta, seen_ids)
            jw.f.write(line + "\n")
            if cwriter:
                cwriter.writerows(rows)
        for f in files:
            f.close()
        for w in (jw, cw):
            if w:
                w.commit() if totals.ok or not totals.failed else w.abort()
        write_errors(out, totals.errors)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return totals
