"""Compiled kernels of the logging policy's card exposures E₀ (``bartops.ope.slate.examination_marginals``).

The estimator is the Rao-Blackwellised Monte Carlo the slate module describes; this module runs it
page by page in compiled loops (numba) instead of dense (pages × candidates) array passes, so a
step costs what its remaining pairs cost: every remaining pair at a head step, only the title's pairs
at a fill step.  Per sampled page:

- heads, s = 0..S−1: every remaining pair c gets κ(s, 0)·P(c | prefix) with the policy's exact
  ε-greedy step probability; the head is drawn from a defensive mixture (every other sample explores
  the heads at ``alternative_epsilon``) and the page's contributions are weighted by the balance
  heuristic 1 / (a + (1 − a)·p'(heads)/p(heads)), a = the share of samples drawn from the policy;
- fills, shelf by shelf: every remaining pair under the shelf's title gets κ(s, k)·P(c | prefix)
  (only pairs of titles the greedy page uses: ``fill_ok``).
- a rare title (one the greedy page does not use) of a needed card: its fills are estimated with the
  title forced onto a uniformly drawn shelf s, drawn from the policy's head distribution restricted to
  it and weighted by that set's exact probability; the fills of s count S·weight·κ·P.

Every page (and every forced task) has its own seed, so draws are independent across pages (the page
bootstrap's variance includes the Monte-Carlo error) and the result does not depend on the threads.
Greedy ties go to the earlier candidate in canonical order, as in ``bartops.policy.page``.
"""

from __future__ import annotations

import numba
import numpy as np

from bartops.policy.page import CandidateSet


def page_layout(candidates: CandidateSet, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per-page index arrays the kernels walk: candidates in score order, the same grouped by
    explanation (segments per page × explanation), and page-local item and explanation numbers."""
    page = candidates.page
    n = len(candidates)
    idx = np.arange(n)
    by_score = np.lexsort((idx, -np.asarray(scores, np.float64), page))
    _, expl_group = np.unique(page * (1 << 40) + candidates.explanation, return_inverse=True)
    _, item_group = np.unique(page * (1 << 40) + candidates.item_id, return_inverse=True)
    expl_group, item_group = expl_group.ravel(), item_group.ravel()
    by_expl = np.lexsort((idx, -np.asarray(scores, np.float64), expl_group))
    n_expl = int(expl_group.max(initial=-1)) + 1
    expl_off = np.searchsorted(expl_group[by_expl], np.arange(n_expl + 1))
    off = candidates.offsets
    first_item = np.full(candidates.n_pages, 0, np.int64)
    first_expl = np.full(candidates.n_pages, 0, np.int64)
    has = np.diff(off) > 0
    first_item[has] = item_group[off[:-1][has]]
    first_expl[has] = expl_group[off[:-1][has]]
    items_per_page = np.bincount(page, minlength=candidates.n_pages)  # an upper bound of distinct items
    return {"off": off.astype(np.int64), "by_score": by_score.astype(np.int64), "by_expl": by_expl.astype(np.int64),
            "expl_off": expl_off.astype(np.int64), "expl_group": expl_group.astype(np.int64),
            "item_local": (item_group - first_item[page]).astype(np.int64),
            "expl_local": (expl_group - first_expl[page]).astype(np.int64), "first_expl": first_expl,
            "width": np.int64(max(int(items_per_page.max(initial=0)), 1))}


@numba.njit(cache=True, nogil=True)
def _free_heads(lo, hi, by_score, choosable, item_used, item_local, expl_used, expl_local, free):
    """The pairs a head step may choose (item not on the page, explanation not yet a title), in score
    order into ``free``; their number (the greedy choice is ``free[0]``)."""
    count = 0
    for t in range(lo, hi):
        c = by_score[t]
        if choosable[c] and not item_used[item_local[c]] and not expl_used[expl_local[c]]:
            free[count] = c
            count += 1
    return count


@numba.njit(cache=True, nogil=True)
def _place_head(pick, s, item_used, item_local, expl_used, expl_local, expl_group, title):
    """The chosen head takes its item off the page and its explanation becomes shelf ``s``'s title."""
    item_used[item_local[pick]] = True
    expl_used[expl_local[pick]] = True
    title[s] = expl_group[pick]


@numba.njit(cache=True, nogil=True)
def _fill_steps(b_lo, s_from, s_to, title, K, eps_fill, kappa, item_used, item_local, by_expl, expl_off,
                choosable, weight_of_shelf, count_ok, acc, free):
    """Fills of shelves s_from..s_to−1 (policy ε): accumulate weight_of_shelf[s]·κ·P of the free pairs
    with ``count_ok`` (candidate flag) and draw each fill."""
    for s in range(s_from, s_to):
        g = title[s]
        if g < 0:
            continue
        for k in range(1, K):
            count = 0
            for t in range(expl_off[g], expl_off[g + 1]):
                c = by_expl[t]
                if choosable[c] and not item_used[item_local[c]]:
                    free[count] = c
                    count += 1
            if count == 0:
                break
            greedy = free[0]
            w = weight_of_shelf[s]
            if w != 0.0:
                base = w * kappa[s, k] * eps_fill / count
                for i in range(count):
                    c = free[i]
                    if count_ok[c]:
                        acc[c - b_lo] += base
                if count_ok[greedy]:
                    acc[greedy - b_lo] += w * kappa[s, k] * (1.0 - eps_fill)
            if np.random.random() < eps_fill:
                pick = free[min(int(np.random.random() * count), count - 1)]
            else:
                pick = greedy
            item_used[item_local[pick]] = True


@numba.njit(cache=True, parallel=True)
def common_exposures(off, by_score, by_expl, expl_off, expl_group, item_local, expl_local, first_expl, width,
                     choosable, fill_ok, kappa, eps_head, eps_fill, alternative_epsilon, n_samples, seeds):
    """(candidates,) mean over ``n_samples`` sampled pages of Σ_steps κ·P(pair at step | prefix): every
    head step, and the fill steps of pairs with ``fill_ok`` (module docs)."""
    S, K = kappa.shape
    out = np.zeros(len(by_score))
    natural = ((n_samples + 1) // 2) / n_samples
    for b in numba.prange(len(off) - 1):
        lo, hi = off[b], off[b + 1]
        if hi == lo:
            continue
        np.random.seed(seeds[b])
        n = hi - lo
        acc = np.zeros(n)
        heads = np.zeros(n)
        item_used = np.zeros(width, np.bool_)
        expl_used = np.zeros(n, np.bool_)
        title = np.full(S, -1, np.int64)
        free = np.empty(n, np.int64)
        shelf_weight = np.ones(S)
        for j in range(n_samples):
            item_used[:] = False
            expl_used[:] = False
            title[:] = -1
            heads[:] = 0.0
            draw_eps = alternative_epsilon if j % 2 == 1 else eps_head
            log_ratio = 0.0
            for s in range(S):
                count = _free_heads(lo, hi, by_score, choosable, item_used, item_local, expl_used, expl_local, free)
                if count == 0:
                    break
                greedy = free[0]
                base = kappa[s, 0] * eps_head / count
                for i in range(count):
                    heads[free[i] - lo] += base
                heads[greedy - lo] += kappa[s, 0] * (1.0 - eps_head)
                if np.random.random() < draw_eps:
                    pick = free[min(int(np.random.random() * count), count - 1)]
                else:
                    pick = greedy
                g = 1.0 if pick == greedy else 0.0
                log_ratio += np.log((1.0 - alternative_epsilon) * g + alternative_epsilon / count) - \
                    np.log((1.0 - eps_head) * g + eps_head / count)
                _place_head(pick, s, item_used, item_local, expl_used, expl_local, expl_group, title)
            w = 1.0 / (natural + (1.0 - natural) * np.exp(log_ratio))
            for i in range(n):
                acc[i] += w * heads[i]
            shelf_weight[:] = w
            _fill_steps(lo, 0, S, title, K, eps_fill, kappa, item_used, item_local, by_expl, expl_off, choosable,
                        shelf_weight, fill_ok, acc, free)
        for i in range(n):
            out[lo + i] = acc[i] / n_samples
    return out


@numba.njit(cache=True, parallel=True)
def forced_exposures(off, by_score, by_expl, expl_off, expl_group, item_local, expl_local, width, choosable,
                     task_page, task_group, kappa, eps_head, eps_fill, n_samples, seeds):
    """(candidates,) fill exposures of the pairs under each task's title (page ``task_page``, explanation
    group ``task_group``), estimated with the title forced onto a uniformly drawn shelf (module docs);
    zero outside the tasks' pairs."""
    S, K = kappa.shape
    out = np.zeros(len(by_score))
    for task in numba.prange(len(task_page)):
        b = task_page[task]
        target = task_group[task]
        lo, hi = off[b], off[b + 1]
        n = hi - lo
        np.random.seed(seeds[task])
        acc = np.zeros(n)
        item_used = np.zeros(width, np.bool_)
        expl_used = np.zeros(n, np.bool_)
        title = np.full(S, -1, np.int64)
        free = np.empty(n, np.int64)
        shelf_weight = np.zeros(S)
        for j in range(n_samples):
            item_used[:] = False
            expl_used[:] = False
            title[:] = -1
            forced_shelf = np.random.randint(0, S)
            weight = 0.0
            for s in range(S):
                count = _free_heads(lo, hi, by_score, choosable, item_used, item_local, expl_used, expl_local, free)
                if count == 0:
                    break
                greedy = free[0]
                if s == forced_shelf:
                    n_set = 0
                    for i in range(count):
                        if expl_group[free[i]] == target:
                            n_set += 1
                    greedy_in = expl_group[greedy] == target
                    mass = (1.0 - eps_head) * (1.0 if greedy_in else 0.0) + eps_head * n_set / count
                    weight = mass if n_set > 0 else 0.0
                    if n_set == 0:
                        break  # nothing to force: this sample contributes nothing
                    if greedy_in and np.random.random() * mass < (1.0 - eps_head):
                        pick = greedy
                    else:
                        r = min(int(np.random.random() * n_set), n_set - 1)
                        pick = -1
                        for i in range(count):
                            if expl_group[free[i]] == target:
                                if r == 0:
                                    pick = free[i]
                                    break
                                r -= 1
                else:
                    if np.random.random() < eps_head:
                        pick = free[min(int(np.random.random() * count), count - 1)]
                    else:
                        pick = greedy
                _place_head(pick, s, item_used, item_local, expl_used, expl_local, expl_group, title)
            if weight == 0.0 or title[forced_shelf] != target:
                continue
            shelf_weight[:] = 0.0
            shelf_weight[forced_shelf] = S * weight
            _fill_steps(lo, 0, forced_shelf + 1, title, K, eps_fill, kappa, item_used, item_local, by_expl,
                        expl_off, choosable, shelf_weight, choosable, acc, free)
        for t in range(expl_off[target], expl_off[target + 1]):
            c = by_expl[t]
            out[c] += acc[c - lo] / n_samples
    return out
