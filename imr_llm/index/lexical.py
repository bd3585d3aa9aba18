"""The files beside the store that queries read without SQL: BM25 (bm25s, Snowball stemmer), the
dense mirror (``dense.npy``: the vectors upserted into Chroma as the store keeps them, at float16
precision, in BM25's row order) and the facet columns of chunks and items. Written to a new folder,
then swapped in."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..core.filters import COLUMNS, write_facets
from .store import Store


def build(store: Store, index_dir: Path) -> None:
    """Rebuild BM25 and the dense mirror from the store; written to a new folder, then swapped in.

    The mirror (``dense.npy``, same row order as BM25) holds the vectors upserted into Chroma, as
    the store keeps them (float16). Local queries use it for exact search: importing chromadb alone costs 0.8-1.4 s per
    cold start here, and masks make filters free. Set IMR_DENSE=chroma to query Chroma's HNSW.
    """
    import logging

    import bm25s
    import Stemmer

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    rows = list(store.all_texts())
    final = index_dir / "bm25"
    tmp = index_dir / f"bm25.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ids = [r[1] for r in rows]
    vecs = list(store.vectors())
    if rows and all(v is not None for v in vecs):
        np.save(tmp / "dense.npy", np.vstack(vecs))
    if rows:
        stemmer = Stemmer.Stemmer("english")
        toks = bm25s.tokenize([r[2] for r in rows], stopwords="en", stemmer=stemmer, show_progress=False)
        bm = bm25s.BM25()
        bm.index(toks, show_progress=False)
        bm.save(str(tmp), show_progress=False)
    (tmp / "ids.json").write_text(json.dumps(ids))
    write_facets(store.chunk_columns(list(COLUMNS)), tmp / "facets.npz")
    store.write_item_facets(tmp / "items.npz")
    old = index_dir / f"bm25.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
