"""Exact top-n BM25 over a segment's term columns (bm25s's CSC matrix), without adding up every
posting of every query term.

bm25s scores a query by adding each term's whole posting list into a score per passage. At 250,000
passages a segment, words such as "request" or "treatment" are in nearly every passage, so one
question added ~600,000 postings per segment (68 ms p95 over 16 segments), most of them worth
almost nothing ("request" scores at most 1e-6). Max-score pruning (Turtle & Flood 1995) gives the
same top n: score the short lists fully; once the best possible score of the terms left is below
the n-th best partial score, no passage outside the candidates can reach the top n, and the long
lists are only looked up for the candidates (each list's passages are sorted, so a binary search).
"""
from __future__ import annotations

import numpy as np

CHECK_FROM = 16_384  # a list shorter than this is cheaper to add up than to decide about
LOOKUP = 16  # a binary search for one candidate costs about this many postings added up
PROBE_MAX = 65_536  # passages of the shortest lists kept to bound the n-th best score from below
SLACK = 1e-5  # relative: partial sums are float32, added in another order than a bound's sum


def term_max(data: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """The highest score of each term column (0 for an empty one)."""
    out = np.zeros(len(indptr) - 1, dtype=np.float32)
    nonempty = np.flatnonzero(np.diff(indptr) > 0)
    if len(nonempty):
        out[nonempty] = np.maximum.reduceat(np.asarray(data), np.asarray(indptr[:-1])[nonempty])
    return out


def top_n(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, num_docs: int, terms: np.ndarray,
          weights: np.ndarray, ub: np.ndarray, n: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, positions) of the best ``n`` passages with a score above 0, best first (ties by
    position); ``terms`` are column numbers, ``weights`` how often each is in the query, ``ub``
    each term's highest score, ``mask`` the passages allowed. Equal to scoring every passage (to
    float32 rounding: bm25s adds the words up in another order)."""
    ptr = np.asarray(indptr)
    starts, ends = ptr[terms], ptr[terms + 1]
    order = np.argsort(ends - starts, kind="stable")
    starts, ends, weights = starts[order], ends[order], weights[order]
    ub = ub[order].astype(np.float64) * weights
    # the most the terms from j on can add, a little over (never prune on a rounding)
    rest_ub = np.concatenate([np.cumsum(ub[::-1])[::-1], [0.0]]) * (1 + SLACK)
    scores = np.zeros(num_docs, dtype=np.float32)
    # candidates: every passage that can still reach the top n (None: any passage can); the allowed
    # positions are made only where they are used (a broad filter at 250k passages: 0.3 ms a segment)
    few = mask is not None and int(np.count_nonzero(mask)) * LOOKUP < ends[0] - starts[0]
    cand = np.flatnonzero(mask).astype(indices.dtype) if few else None
    probe: list[np.ndarray] = []
    for j in range(len(starts)):
        s, e = int(starts[j]), int(ends[j])
        if cand is None and probe and e - s >= CHECK_FROM:
            theta = _nth_best(scores, probe, mask, n) * (1 - SLACK)
            if 0 < theta and rest_ub[j] < theta:  # nobody else can reach the n-th best any more
                cand = _allowed(np.flatnonzero(scores >= theta - rest_ub[j]).astype(indices.dtype), mask)
        if cand is None or len(cand) * LOOKUP >= e - s:  # add the whole list up (scores outside cand are unused)
            w = data[s:e] if weights[j] == 1 else data[s:e] * weights[j]
            scores[indices[s:e]] += w  # a list names a passage once: no np.add.at needed (2x faster)
            if cand is None and e > s and (not probe or _allowed(probe[0], mask).size < n) \
                    and sum(len(p) for p in probe) + e - s <= PROBE_MAX:
                probe.append(np.asarray(indices[s:e]))  # the shortest list, more only while it has fewer than n
        elif len(cand):  # only the candidates, by binary search in the sorted list
            col = indices[s:e]
            at = np.searchsorted(col, cand)
            inside = at < e - s
            hit = np.zeros(len(cand), dtype=bool)
            hit[inside] = np.asarray(col[at[inside]]) == cand[inside]
            scores[cand[hit]] += np.asarray(data[s:e][at[hit]]) * weights[j]
    if cand is None:
        theta = _nth_best(scores, probe, mask, n) if probe else 0.0
        if mask is not None and not theta:
            cand = np.flatnonzero(mask).astype(indices.dtype)
        else:  # every passage of the top n scores at least theta
            cand = _allowed(np.flatnonzero(scores >= theta) if theta else np.flatnonzero(scores), mask)
    pos = cand[scores[cand] > 0]
    if len(pos) > n:  # everything tied with the n-th best, so ties go by position
        sc = scores[pos]
        pos = pos[sc >= np.partition(sc, len(sc) - n)[len(sc) - n]]
    best = np.lexsort((pos, -scores[pos]))[:n]
    return scores[pos][best], pos[best].astype(np.int64)


def _nth_best(scores: np.ndarray, probe: list[np.ndarray], mask: np.ndarray | None, n: int) -> float:
    """The n-th best partial score among the passages of ``probe`` (a subset, so never above the
    n-th best of all: a safe bound); 0 when they are fewer than n."""
    if len(probe) == 1:
        pos = probe[0]
    else:  # each list is sorted and has a passage once; across lists, keep each once
        pos = np.sort(np.concatenate(probe), kind="stable")
        pos = pos[np.concatenate([[True], pos[1:] != pos[:-1]])]
    if mask is not None:
        pos = pos[mask[pos]]
    if len(pos) < n:
        return 0.0
    sc = scores[pos]
    return float(np.partition(sc, len(sc) - n)[len(sc) - n])


def _allowed(pos: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return pos if mask is None else pos[mask[pos]]
