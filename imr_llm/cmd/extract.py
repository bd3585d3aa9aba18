"""`imr extract`, `imr schema`, `imr text`."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..run import outputs, runner
from ..core.load import LetterError, expand_inputs, read_letter
from ..core.models import DecisionRecord
from .common import die, get_settings, notice, start_provider


def extract(
    paths: List[str] = typer.Argument(..., help="letters: .txt/.pdf files, folders (recursive) or globs"),
    out: Path = typer.Option(Path("records.jsonl"), "--out", "-o", help="JSONL output, one record per letter"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="also write one flat row per disputed item"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="PROVIDER:MODEL (openai:gpt-4o-mini, compatible:NAME, llama-cpp:FILE.gguf, none); default IMR_MODEL or none"),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1, max=256),
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=64, help="processes sharing the concurrency (one event loop tops out near one core)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print letters, tokens and estimated cost; call nothing"),
    no_cache: bool = typer.Option(False, "--no-cache", help="ignore and do not fill the cache"),
    local_only: bool = typer.Option(False, "--local-only", help="refuse any provider not on this machine or a private URL"),
    batch_api: bool = typer.Option(False, "--batch-api", help="OpenAI Batch API: half price, up to 24 h; submit, poll, resume, collect"),
    no_wait: bool = typer.Option(False, "--no-wait", help="with --batch-api: submit and exit; rerun the same command to collect"),
    poll: float = typer.Option(30.0, "--poll", help="with --batch-api: seconds between status checks"),
    debug: bool = typer.Option(False, "--debug", help="tracebacks instead of one-line errors"),
) -> None:
    """Extract one grounded decision record per letter."""
    s = get_settings(model, local_only, need_key=not dry_run)
    files, input_errors = letters_in(paths)
    if dry_run:
        return _dry_run(files, s)
    if batch_api and s.provider not in ("openai", "compatible"):
        die("--batch-api needs an OpenAI(-compatible) provider with the Batch API: --model openai:MODEL")
    if batch_api and no_cache:
        die("--batch-api needs the cache (answers are collected there): drop --no-cache")
    refuse_bad_outputs(files, out, csv)
    if batch_api and not _run_batch_api(files, s, poll, no_wait):
        return
    totals = run_files(files, input_errors, s, out, csv, concurrency, workers, use_cache=not no_cache, debug=debug)
    print_summary(totals, s, out, csv)
    if totals.failed:
        raise typer.Exit(1)


def letters_in(paths: list[str]) -> tuple[list[str], list[str]]:
    """The letters the paths name; missing paths and unreadable folders are reported and skipped."""
    found, input_errors = expand_inputs(paths)
    for e in input_errors:
        print(f"error: {e}", file=sys.stderr)
    if not found:
        die(f"no .txt or .pdf letters found in: {' '.join(paths)}")
    return [str(p) for p in found], input_errors


def refuse_bad_outputs(files: list[str], out: Path, csv: Optional[Path]) -> None:
    try:
        outputs.check_outputs(files, out, csv)
    except outputs.OutputError as e:
        die(str(e))


def _dry_run(files: list[str], s) -> None:
    r = runner.dry_run(files, s)
    cost = "n/a (unknown price; set IMR_PRICE_IN/IMR_PRICE_OUT)" if r["est_cost_usd"] is None else f"${r['est_cost_usd']:.4f}"
    print(f"letters: {r['letters']} readable, {r['unreadable']} unreadable\nmodel: {s.label}\n"
          f"input tokens: {r['input_tokens']}\nestimated output tokens: {r['est_output_tokens']}\nestimated cost: {cost}")
    for e in r["errors"]:
        print(f"error: {e}", file=sys.stderr)
    if s.provider == "none":
        notice("no model chosen (--model or IMR_MODEL): a real run would make no LLM calls")


def run_files(files: list[str], input_errors: list[str], s, out: Path, csv: Optional[Path], concurrency: int, workers: int,
              use_cache: bool = True, debug: bool = False) -> runner.Totals:
    """Extract ``files`` into ``out`` (one process or ``workers``) with a progress bar; the totals,
    the paths that could not be read counted as failures. ``imr extract`` and ``imr ingest``."""
    if workers > 1 and not use_cache:
        die("--workers needs the cache (finished letters are kept there): drop --no-cache")
    if workers > 1 and s.provider == "llama-cpp":
        die("--workers > 1 would load the in-process model once per worker; use --workers 1 (llama.cpp already uses every core)")
    if s.provider == "none":
        notice(runner.NO_MODEL_NOTICE)
    provider = start_provider(s, debug) if workers == 1 else None  # with workers each process starts its own
    cb, stop = runner.progress_callback(len(files))
    try:
        totals = runner.extract(files, s, out, csv, concurrency, workers, provider, use_cache, debug, cb)
    except KeyboardInterrupt:
        stop()
        die("interrupted: nothing written; finished letters are cached, rerun the same command to resume", 130)
    except RuntimeError as e:
        stop()
        die(str(e), 1)
    finally:
        stop()
    if input_errors:
        totals.failed += len(input_errors)
        totals.errors[:0] = input_errors
        outputs.write_errors(out, totals.errors)
    return totals


def _run_batch_api(files: list[str], s, poll: float, no_wait: bool) -> bool:
    """Submit what is not answered yet, wait for every pending batch, collect. False = stop here."""
    from ..run import openai_batch
    from ..run.cache import Cache

    cache = Cache(s.data_dir / "cache.sqlite")
    try:
        new = openai_batch.submit(files, s, cache)
        for st in new:
            notice(f"submitted batch {st['batch_id']} with {len(st['requests'])} letters (state in {s.data_dir / 'batches'})")
        if not openai_batch.pending(s):
            notice("every letter already has an answer; nothing to submit")
            return True
        if no_wait:
            notice("not waiting (--no-wait): rerun the same command to poll and collect")
            return False

        def show(bid: str, done: int, total: int, status: str) -> None:
            print(f"batch {bid}: {status}, {done}/{total} requests", file=sys.stderr)

        stats = openai_batch.wait_and_collect(s, cache, poll, show)
        notice(f"collected {stats['answers']} answers from {stats['batches']} batch(es); {stats['failed']} failed "
               f"(those letters are retried live below)")
        for e in stats["errors"][:20]:
            print(f"batch error: {e}", file=sys.stderr)
        return True
    finally:
        cache.close()


def print_summary(t: runner.Totals, s, out: Path, csv: Optional[Path]) -> None:
    con = Console(stderr=True)
    tab = Table(title="imr extract", show_header=False)
    if t.ok or not t.failed:
        tab.add_row("records written", Text(f"{t.ok} -> {out}" + (f" (+ {csv})" if csv else "")))
    else:
        tab.add_row("records written", Text(f"none: every letter failed; {out} left as it was"))
    tab.add_row("failed letters", str(t.failed))
    tab.add_row("flagged for review", str(t.flagged))
    tab.add_row("model", s.label)
    if s.provider != "none":
        u = t.usage
        tab.add_row("LLM calls", f"{u.calls} ({t.cached} letters from cache)")
        tab.add_row("tokens in / out", f"{u.input_tokens} / {u.output_tokens} (retries: {u.retry_tokens})")
        tab.add_row("cost", "n/a (unknown price)" if u.cost_usd is None else f"${u.cost_usd:.4f}")
    con.print(tab)
    for e in t.errors:
        print(f"error: {e}", file=sys.stderr)
    if t.errors:
        print(f"{len(t.errors)} letter(s) failed; listed with reasons in {outputs.errors_path(out)}", file=sys.stderr)


def schema() -> None:
    """Print the JSON Schema of a decision record."""
    print(json.dumps(DecisionRecord.model_json_schema(), indent=2))


def text(path: Path = typer.Argument(..., help="a letter")) -> None:
    """Print the letter text that evidence offsets refer to (PDF: its text layer)."""
    try:
        from ..config import env

        sys.stdout.write(read_letter(path, max_bytes=env().max_bytes).text)
    except LetterError as e:
        die(str(e))
