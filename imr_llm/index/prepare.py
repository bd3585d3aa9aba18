"""A record made ready for the index, without touching it: its rows, its chunks (compressed text,
filter values, the texts BM25 and the embedder read). Pure, so the index build can run it in
worker processes; the writer only places the rows and the segment files."""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..core.filters import COLUMNS, row_values
from ..core.models import DecisionRecord
from .chunk import chunks_for

# Chunk rows keep the filter columns only for summary chunks (letter-level values); an item's
# chunks read them from its item row (``chunk_rows`` view), which saves ~3 KB a letter.
SUMMARY_COLUMNS = [c for c in COLUMNS if c != "letter_id"]
# the items table, beyond COLUMNS
ITEM_BASE = {"letter_id": "TEXT", "item": "INTEGER", "cite_id": "TEXT", "request": "TEXT", "drug": "TEXT",
             "guidelines": "TEXT", "denial_reasons": "TEXT"}
ITEM_COLUMNS = {**ITEM_BASE, **{c: t for c, t in COLUMNS.items() if c not in ITEM_BASE}}


def pack(text: str, zdict: bytes) -> bytes:
    """zlib with the index's preset dictionary (level 6: level 9 is 4% smaller and 50% slower)."""
    co = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, zdict)
    return co.compress(text.encode()) + co.flush()


def unpack(data: bytes, zdict: bytes) -> str:
    do = zlib.decompressobj(15, zdict)
    return (do.decompress(data) + do.flush()).decode()


def body(context: str, quote: str) -> str:
    """What a chunk row keeps (compressed): the context line and the letter's exact text."""
    return f"{context}\x00{quote}"


@dataclass
class PChunk:
    id: str
    item: int
    n: int
    body: bytes  # pack(body(context, quote))
    start: int
    end: int
    text: str  # what BM25 reads: context and the letter's words
    embed: str  # what the embedder reads
    facets: tuple  # COLUMNS values, in order


@dataclass
class Prepared:
    letter_id: str
    cite_id: str
    source_path: str
    sha256: str
    data: bytes  # the record's JSON, compressed
    rdigest: str  # of that JSON: an unchanged record is skipped on re-index
    items: list[list]  # ITEM_COLUMNS values per item
    chunks: list[PChunk]
    vectors: np.ndarray | None = field(default=None, repr=False)  # float16, a row per chunk


def prepare(rec: DecisionRecord, zdict: bytes, record_json: str | None = None) -> Prepared:
    js = record_json if record_json is not None else rec.model_dump_json()
    item_rows = [item_row(rec, i) for i in range(len(rec.items))]
    summary = row_values(rec, -1)
    chunks = []
    for c in chunks_for(rec):
        vals = item_rows[c.item] if c.item >= 0 else summary
        chunks.append(PChunk(c.id, c.item, c.n, pack(body(c.context, c.quote), zdict), c.start, c.end,
                             f"{c.context} {c.text}", c.embed_text, tuple(vals.get(k) for k in COLUMNS)))
    return Prepared(rec.letter_id, rec.cite_id, rec.source_path, rec.sha256, pack(js, zdict),
                    hashlib.sha256(js.encode()).hexdigest()[:16], [[r.get(c) for c in ITEM_COLUMNS] for r in item_rows], chunks)


def item_row(rec: DecisionRecord, i: int) -> dict:
    it = rec.items[i]
    return {**row_values(rec, i), "item": i, "cite_id": rec.cite_id, "request": it.request, "drug": it.drug,
            "guidelines": "|" + "|".join(sorted({g.name for g in it.guideline_sources})) + "|",
            "denial_reasons": "|" + "|".join(it.denial_reasons) + "|"}


def summary_values(p: PChunk) -> list:
    """A summary chunk's letter-level filter values for its row (item chunks store none)."""
    d = dict(zip(COLUMNS, p.facets))
    return [d[c] for c in SUMMARY_COLUMNS] if p.item < 0 else [None] * len(SUMMARY_COLUMNS)


# -- worker side of a parallel build: JSON lines in, prepared letters with their vectors out
_W: dict = {}


def worker_init(zdict: bytes, embedder_spec: str, store_path: str) -> None:
    import os
    import sqlite3

    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(v, "1")
    from ..providers import embed as emb

    _W["zdict"] = zdict
    _W["embed"] = emb.make(embedder_spec, True)
    # read-only: letters already indexed unchanged are not embedded again (the writer decides)
    _W["db"] = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=30)


def prepare_lines(batch: list[tuple[str, int, str]]) -> list[Prepared | tuple[str, int, str]]:
    """(path, line number, JSON line) -> prepared letters, with vectors unless the letter is indexed
    unchanged already; a line that is not a record comes back as (path, line number, why)."""
    out: list = []
    for path, n, line in batch:
        try:
            rec = DecisionRecord.model_validate_json(line)
        except Exception as e:
            out.append((path, n, type(e).__name__))
            continue
        out.append(prepare(rec, _W["zdict"]))
    letters = [p for p in out if isinstance(p, Prepared)]
    known = dict(_W["db"].execute(f"SELECT letter_id, rdigest FROM records WHERE letter_id IN ({','.join('?' * len(letters))})",
                                  [p.letter_id for p in letters]).fetchall()) if letters else {}
    embed_prepared([p for p in letters if known.get(p.letter_id) != p.rdigest], _W["embed"])
    for p in letters:
        if p.vectors is not None:
            for c in p.chunks:
                c.embed = ""  # embedded: not sent back
    return out


def embed_prepared(letters: list[Prepared], embedder) -> None:
    texts = [c.embed for p in letters for c in p.chunks]
    if not texts:
        for p in letters:
            p.vectors = np.zeros((0, 0), dtype=np.float16)
        return
    vecs = np.asarray(embedder(texts), dtype=np.float32).astype(np.float16)
    k = 0
    for p in letters:
        p.vectors = vecs[k:k + len(p.chunks)]
        k += len(p.chunks)

