"""The compiled loop of ``bartops.policy.page.construct_page``: each page's S·K ε-greedy steps in numba.

``construct_page`` runs this loop whenever no step is observed or title-forced (sampling pages for
serving, the simulator and evaluation; replaying logged pages for their propensities).  It makes the
same choices, with the same propensities, as the array loop of ``construct_page`` (which stays for
observed and title-forced steps), bit for bit: the uniforms are drawn beforehand in the order the
array loop draws them (per step: B explore draws, then B uniform draws), greedy ties go to the
earlier candidate, and the arithmetic is the same.  ``tests/unit/test_policy.py`` checks this.

Pages are independent given their uniforms, so many pages run across the cores (``prange``); one
page (a served request) runs in the calling thread.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

EMPTY = -1  # marks an empty slot (no remaining candidate)
# numba's default (workqueue) threading layer must not run two parallel kernels at once: callers in
# several threads of one process (Prefect task runners, Dask threads) take this lock around a call
KERNEL_LOCK = threading.Lock()
PARALLEL_PAGES = 64  # from this many pages on, pages run across the cores


@numba.njit(cache=True, nogil=True)
def _build_one(b, off, choosable, score, item_local, expl_local, n_local, S, K, fill_shelves, eps_head,
               eps_fill, uniforms, forced_col, out_cand, out_prop, out_expl, out_greedy, out_eps):
    """Page ``b``'s steps: heads of every shelf, then the fills of shelves ``0..fill_shelves-1``."""
    lo, hi = off[b], off[b + 1]
    n = hi - lo
    item_used = np.zeros(max(n_local, 1), np.bool_)
    expl_used = np.zeros(max(n_local, 1), np.bool_)
    title = np.full(S, -1, np.int64)
    free = np.zeros(max(n, 1), np.bool_)
    n_steps = S + fill_shelves * (K - 1)
    replay = forced_col.shape[0] > 0
    for step in range(n_steps):
        if step < S:
            s, k, eps = step, 0, eps_head
        else:
            s, k, eps = (step - S) // (K - 1), 1 + (step - S) % (K - 1), eps_fill
        count = 0
        greedy = 0
        best = -np.inf
        for j in range(n):
            c = lo + j
            ok = choosable[c] and not item_used[item_local[c]]
            if k == 0:
                ok = ok and not expl_used[expl_local[c]]
            else:
                ok = ok and expl_local[c] == title[s]
            free[j] = ok
            if ok:
                count += 1
            value = score[c] if ok else -np.inf
            if j == 0:
                best = value
            elif value > best:
                best = value
                greedy = j
        explored = False
        if replay:
            col = forced_col[b, s, k]
        else:
            col = greedy
            if uniforms[step, 0, b] < eps:
                explored = count > 0
                draw = min(np.int64(uniforms[step, 1, b] * count), max(count - 1, 0))
                seen = 0
                col = 0
                for j in range(n):
                    if free[j]:
                        if seen == draw:
                            col = j
                            break
                        seen += 1
            if count == 0:
                col = EMPTY
        out_eps[b, s, k] = eps
        if col == EMPTY:
            out_cand[b, s, k] = EMPTY
            continue
        is_free = free[col]
        is_greedy = is_free and col == greedy
        prop = 0.0
        if is_free:
            prop = (1 - eps) * (1.0 if is_greedy else 0.0) + eps / max(count, 1)
        out_cand[b, s, k] = lo + col
        out_prop[b, s, k] = prop
        out_expl[b, s, k] = explored
        out_greedy[b, s, k] = is_greedy
        item_used[item_local[lo + col]] = True
        if k == 0:
            expl_used[expl_local[lo + col]] = True
            title[s] = expl_local[lo + col]


@numba.njit(cache=True, nogil=True)
def _build_serial(off, choosable, score, item_local, expl_local, n_local, S, K, fill_shelves, eps_head, eps_fill,
                  uniforms, forced_col, out_cand, out_prop, out_expl, out_greedy, out_eps):
    for b in range(len(off) - 1):
        _build_one(b, off, choosable, score, item_local, expl_local, n_local[b], S, K, fill_shelves, eps_head,
                   eps_fill, uniforms, forced_col, out_cand, out_prop, out_expl, out_greedy, out_eps)


@numba.njit(cache=True, parallel=True)
def _build_parallel(off, choosable, score, item_local, expl_local, n_local, S, K, fill_shelves, eps_head,
                    eps_fill, uniforms, forced_col, out_cand, out_prop, out_expl, out_greedy, out_eps):
    for b in numba.prange(len(off) - 1):
        _build_one(b, off, choosable, score, item_local, expl_local, n_local[b], S, K, fill_shelves, eps_head,
                   eps_fill, uniforms, forced_col, out_cand, out_prop, out_expl, out_greedy, out_eps)


def page_local_groups(page: np.ndarray, values: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate, a page-local number of its value (equal values on a page share it), and per page
    how many numbers it uses."""
    n_pages = len(off) - 1
    if len(page) == 0:
        return np.zeros(0, np.int64), np.zeros(n_pages, np.int64)
    _, group = np.unique(page * (1 << 40) + values, return_inverse=True)
    group = group.ravel().astype(np.int64)
    has = np.diff(off) > 0
    starts = off[:-1][has]
    first = np.zeros(n_pages, np.int64)
    first[has] = np.minimum.reduceat(group, starts)  # groups are numbered by (page, value)
    last = np.zeros(n_pages, np.int64)
    last[has] = np.maximum.reduceat(group, starts)
    return group - first[page], np.where(has, last - first + 1, 0)


def run_steps(off: np.ndarray, page: np.ndarray, item_id: np.ndarray, explanation: np.ndarray,
              choosable: np.ndarray, scores: np.ndarray, shelves: int, cards: int, fill_shelves: int,
              epsilon_head: float, epsilon_fill: float, uniforms: np.ndarray | None,
              forced_col: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """(candidate, propensity, explored, greedy, epsilon) arrays (B, S, K) of the pages: sampled with
    ``uniforms`` (steps, 2, B), or replaying ``forced_col`` (B, S, K) page-local columns."""
    B, S, K = len(off) - 1, int(shelves), int(cards)
    item_local, n_items = page_local_groups(page, item_id, off)
    expl_local, n_expl = page_local_groups(page, explanation, off)
    n_local = np.maximum(n_items, n_expl)
    out_cand = np.full((B, S, K), EMPTY, np.int64)
    out_prop = np.zeros((B, S, K))
    out_expl = np.zeros((B, S, K), bool)
    out_greedy = np.zeros((B, S, K), bool)
    out_eps = np.zeros((B, S, K))
    if forced_col is None:
        forced_col = np.zeros((0, S, K), np.int64)
    if uniforms is None:
        uniforms = np.zeros((0, 2, B))
    args = (off.astype(np.int64), np.ascontiguousarray(choosable, np.bool_), np.ascontiguousarray(scores, np.float64),
            item_local, expl_local, n_local, S, K, int(fill_shelves), float(epsilon_head), float(epsilon_fill),
            np.ascontiguousarray(uniforms, np.float64), np.ascontiguousarray(forced_col, np.int64),
            out_cand, out_prop, out_expl, out_greedy, out_eps)
    if B >= PARALLEL_PAGES:
        with KERNEL_LOCK:
            _build_parallel(*args)
    else:
        _build_serial(*args)
    return out_cand, out_prop, out_expl, out_greedy, out_eps
