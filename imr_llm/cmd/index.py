"""`imr index RECORDS.jsonl` and `imr ingest LETTERS...`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..config import ConfigError, env
from ..index import Index, IndexProblem
from ..index.rebuild import rebuild
from .common import die, get_settings, notice


def _index(records: Path, rebuild_all: bool, local_only: bool) -> None:
    s = get_settings(None, local_only)
    # the index keeps its own embedder unless IMR_EMBEDDER names one
    spec = env().embedder if "embedder" in env().model_fields_set else None
    try:
        if not records.is_file():
            die(f"{records}: no such file")
        if rebuild_all:
            idx, stats = rebuild(s.data_dir, spec, records)
        else:
            idx = Index(s.data_dir, embedder=spec, create=True, local_only=s.local_only)
            stats = idx.add_file(records)
    except (IndexProblem, ConfigError) as e:
        die(str(e))
    except FileNotFoundError as e:
        die(f"{e.filename}: no such file")
    print(f"indexed {stats['letters']} letters: {stats['chunks']} chunks ({stats['embedded']} embedded, "
          f"{stats['chunks'] - stats['embedded']} unchanged, {stats['deleted']} removed; {stats['segments']} new search segment(s)"
          + (f"; {stats['duplicates']} duplicate file(s) of letters already indexed, listed with them" if stats["duplicates"] else "")
          + f") into {idx.dir} "
          f"[embedder {idx.identity}; {idx.store.count()} chunks in total]")
    idx.close()


def index(
    records: Optional[Path] = typer.Argument(None, help="records.jsonl written by `imr extract`"),
    rebuild: bool = typer.Option(False, "--rebuild", help="build a new index (any embedder/schema) beside the current one and swap it in"),
    upgrade: bool = typer.Option(False, "--upgrade", help="upgrade an index written by an earlier imr-llm in place (no records needed)"),
    local_only: bool = typer.Option(False, "--local-only"),
) -> None:
    """Chunk, embed and index extracted records (re-indexing upserts; nothing is duplicated)."""
    if upgrade:
        return _upgrade(local_only)
    if records is None:
        die("give RECORDS.jsonl (or --upgrade)")
    _index(records, rebuild, local_only)


def _upgrade(local_only: bool) -> None:
    s = get_settings(None, local_only)
    try:
        idx = Index(s.data_dir, embedder=None, create=True, local_only=s.local_only)
        if idx.upgraded:
            idx.write_items()  # the items' columns with the new fields
    except (IndexProblem, ConfigError) as e:
        die(str(e))
    done = idx.upgraded
    idx.close()
    if not done:
        print(f"{idx.dir}: already current")
        return
    for d in done:
        print(f"upgraded {idx.dir}: {d}")
    notice("records extracted by an earlier version lack the newer fields (drug class, partial authorizations, DWC "
           "vocabulary): re-run `imr ingest LETTERS` to fill them")


def ingest(
    paths: List[str] = typer.Argument(..., help="letters: files, folders, globs"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="records file (default DATA_DIR/records.jsonl)"),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    concurrency: int = typer.Option(8, "--concurrency", "-c"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, max=64),
    rebuild: bool = typer.Option(False, "--rebuild"),
    local_only: bool = typer.Option(False, "--local-only"),
) -> None:
    """Extract and index in one go."""
    from .extract import letters_in, print_summary, refuse_bad_outputs, run_files

    s = get_settings(model, local_only)
    out = out or (s.data_dir / "records.jsonl")
    files, input_errors = letters_in(paths)
    refuse_bad_outputs(files, out, None)
    totals = run_files(files, input_errors, s, out, None, concurrency, workers)
    print_summary(totals, s, out, None)
    if totals.failed:
        if not totals.ok:
            raise typer.Exit(1)  # nothing new to index; the earlier records and index stay as they were
        notice("some letters failed (listed above); indexing the ones that succeeded")
    _index(out, rebuild, local_only)
    if totals.failed:
        raise typer.Exit(1)
