"""The runner's outputs: checked before any work, written to temporaries, renamed over the target
only when a run ends with a record (an interrupted or wholly failed run never replaces earlier results)."""
from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

from ..core.models import CSV_COLUMNS
from ..procs import remove_stale


class OutputError(Exception):
    """An output path that would lose data or cannot be written; one line."""


class AtomicWriter:
    """Write to ``.NAME.tmp-PID`` beside ``path`` and rename over ``path`` on ``commit``; nothing changes before."""

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


class RecordWriter:
    """The JSONL records (and CSV rows) of a run in input order, letter ids unique within the output
    (the same file name in two folders gets ``id~sha8``)."""

    def __init__(self, out: Path | None, csv_path: Path | None):
        self.jw = AtomicWriter(out) if out else None
        self.cw = AtomicWriter(csv_path) if csv_path else None
        self.rows = csv.DictWriter(self.cw.f, fieldnames=CSV_COLUMNS) if self.cw else None
        if self.rows:
            self.rows.writeheader()
        self.seen: dict[str, int] = {}

    def write(self, line: str, meta: dict) -> None:
        rid = meta["letter_id"]
        n = self.seen.get(rid, 0)
        self.seen[rid] = n + 1
        rows = meta["csv"]
        if n:
            new = f"{rid}~{meta['sha256'][:8]}"
            rec = json.loads(line)
            rec["letter_id"] = new
            line = json.dumps(rec, separators=(",", ":"), ensure_ascii=False)
            rows = [{**r, "letter_id": new} for r in rows]
        if self.jw:
            self.jw.f.write(line + "\n")
        if self.rows:
            self.rows.writerows(rows)

    def finish(self, keep: bool) -> None:
        """Rename the outputs into place (``keep``) or throw them away."""
        for w in (self.jw, self.cw):
            if w:
                w.commit() if keep else w.abort()

    def abort(self) -> None:
        self.finish(False)


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


def check_outputs(inputs: list[str], *outputs: Path | None) -> None:
    """Refuse, before any work, an output that would destroy something: an input letter, a folder,
    a FIFO or device, the same path twice, or a folder that cannot be written. ``OutputError``."""
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
