"""BaRT page construction: ε-greedy shelves over a diminishing action space, with exact propensities.

A page is S shelves × K cards.  The choices are made in a fixed order:

1. shelf heads ``(s, 0)`` for ``s = 0..S-1``: among the remaining (item, explanation) pairs whose
   explanation is not yet a shelf title and whose item is not yet on the page;
2. fills ``(s, k)`` for each shelf ``s`` and ``k = 1..K-1``: among remaining pairs with shelf ``s``'s
   explanation and an item not yet on the page.

Each choice is the highest-scoring remaining pair with probability ``1 - ε`` and a uniformly random
remaining pair with probability ``ε``, so its propensity is ``(1-ε)·[greedy] + ε/|remaining|``.
Candidates are held in canonical order (page, explanation code, item id) and ties go to the earlier
candidate, so the greedy choice, and hence every propensity, is exact and reproducible.

The same core loop samples pages (``build_pages``) and replays logged pages to recompute the
probability of each logged choice given the logged prefix (``logged_choice_probabilities``).
The loop runs compiled, page by page (``bartops.policy.compiled``: about 25 µs for a 6 × 8 page from
~300 candidates, and many pages across the cores); observed or title-forced steps (the Monte-Carlo
marginals of ``bartops.ope.slate``) run the array form below, in which each step is one vectorised
operation over all pages.  Both make the same choices bit for bit (a unit test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import pandas as pd

from bartops.policy.compiled import EMPTY, run_steps


@dataclass(frozen=True)
class CandidateSet:
    """Candidate (item, explanation) pairs of a batch of pages, in CSR form.

    ``page[i]`` is the row of the context table that candidate ``i`` belongs to; rows are sorted
    by (page, explanation, item) and unique.  ``choosable`` is False for pairs that only take part
    in replaying logs (a logged card outside the policy's support).
    """

    page: np.ndarray  # int64, (M,)
    item_id: np.ndarray  # int64, (M,)
    explanation: np.ndarray  # int64 explanation codes, (M,)
    n_pages: int
    choosable: np.ndarray = field(default=None)  # bool, (M,)

    @staticmethod
    def from_arrays(
        page: np.ndarray,
        item_id: np.ndarray,
        explanation: np.ndarray,
        n_pages: int,
        choosable: np.ndarray | None = None,
    ) -> "CandidateSet":
        """Sort into canonical order and drop duplicate pairs (a choosable copy wins)."""
        page = np.asarray(page, dtype=np.int64)
        item_id = np.asarray(item_id, dtype=np.int64)
        explanation = np.asarray(explanation, dtype=np.int64)
        if not (len(page) == len(item_id) == len(explanation)):
            raise ValueError("candidate arrays page, item_id and explanation differ in length")
        if len(page) and (page.min() < 0 or page.max() >= n_pages):
            raise ValueError(f"candidate page index outside [0, {n_pages})")
        ch = np.ones(len(page), bool) if choosable is None else np.asarray(choosable, bool)
        order = np.lexsort((~ch, item_id, explanation, page))
        page, item_id, explanation, ch = page[order], item_id[order], explanation[order], ch[order]
        keep = np.ones(len(page), bool)
        keep[1:] = (
            (page[1:] != page[:-1]) | (explanation[1:] != explanation[:-1]) | (item_id[1:] != item_id[:-1])
        )
        return CandidateSet(page[keep], item_id[keep], explanation[keep], int(n_pages), ch[keep])

    def __len__(self) -> int:
        return len(self.page)

    @property
    def offsets(self) -> np.ndarray:
        return np.searchsorted(self.page, np.arange(self.n_pages + 1))

    def subset(self, pages: np.ndarray) -> "CandidateSet":
        """Candidates of the given pages (renumbered 0..len(pages)-1, order kept)."""
        pages = np.asarray(pages, dtype=np.int64)
        off = self.offsets
        lengths = off[pages + 1] - off[pages]
        idx = np.concatenate([np.arange(off[p], off[p + 1]) for p in pages]) if len(pages) else np.zeros(0, int)
        new_page = np.repeat(np.arange(len(pages)), lengths)
        return CandidateSet(new_page, self.item_id[idx], self.explanation[idx], len(pages), self.choosable[idx])


class Scorer(Protocol):
    """Maps (context, item, explanation) to a score; higher is better."""

    def __call__(self, contexts: pd.DataFrame, candidates: CandidateSet) -> np.ndarray: ...


@dataclass(frozen=True)
class PagePolicy:
    """The BaRT page policy: a scorer plus page shape and exploration rates."""

    scorer: Callable[[pd.DataFrame, CandidateSet], np.ndarray]
    shelves: int = 6
    cards: int = 8
    epsilon_head: float = 0.1
    epsilon_fill: float = 0.1
    version: str = "unversioned"

    def __post_init__(self) -> None:
        check_shape_and_epsilon(self.shelves, self.cards, self.epsilon_head, self.epsilon_fill)


def check_shape_and_epsilon(shelves: int, cards: int, epsilon_head: float, epsilon_fill: float) -> None:
    """Raise ValueError naming the parameter that is out of range."""
    if int(shelves) != shelves or shelves < 1:
        raise ValueError(f"shelves must be a positive integer, got {shelves!r}")
    if int(cards) != cards or cards < 1:
        raise ValueError(f"cards must be a positive integer, got {cards!r}")
    for name, eps in (("epsilon_head", epsilon_head), ("epsilon_fill", epsilon_fill)):
        if not (0.0 <= float(eps) <= 1.0) or np.isnan(eps):
            raise ValueError(f"{name} must lie in [0, 1], got {eps!r}")


@dataclass(frozen=True)
class Pages:
    """Built pages: per slot (page, shelf, position) the candidate index into the CandidateSet."""

    candidate: np.ndarray  # int64 (B, S, K), EMPTY where no card
    propensity: np.ndarray  # float64 (B, S, K), probability of the choice given the prefix
    explored: np.ndarray  # bool (B, S, K), the ε branch was drawn
    greedy: np.ndarray  # bool (B, S, K), the card is the greedy choice at its step
    epsilon: np.ndarray  # float64 (B, S, K), ε in force for that slot

    @property
    def filled(self) -> np.ndarray:
        return self.candidate != EMPTY

    def page_propensity(self) -> np.ndarray:
        """Product of the card propensities of each page (B,)."""
        return np.where(self.filled, self.propensity, 1.0).prod(axis=(1, 2))


def _padded(candidates: CandidateSet, scores: np.ndarray, max_width: int | None = None):
    """Dense (B, N) views of a candidate set with group ids for items and explanations."""
    off = candidates.offsets
    lengths = np.diff(off)
    width = int(max(lengths.max(initial=0), 1)) if max_width is None else max_width
    B = candidates.n_pages
    pos = np.arange(len(candidates)) - off[candidates.page]
    flat = candidates.page * width + pos
    # group ids: the same item (or explanation) on the same page shares a group
    _, item_group = np.unique(candidates.page * (1 << 40) + candidates.item_id, return_inverse=True)
    _, expl_group = np.unique(candidates.page * (1 << 40) + candidates.explanation, return_inverse=True)
    n_item_groups = int(item_group.max(initial=-1)) + 2  # last group is the padding sink
    n_expl_groups = int(expl_group.max(initial=-1)) + 2

    def dense(values, fill, dtype):
        out = np.full(B * width, fill, dtype=dtype)
        out[flat] = values
        return out.reshape(B, width)

    valid = dense(True, False, bool)
    return dict(
        width=width,
        index=dense(np.arange(len(candidates)), EMPTY, np.int64),
        valid=valid,
        choosable=dense(candidates.choosable, False, bool),
        score=dense(np.asarray(scores, np.float64), -np.inf, np.float64),
        item_group=dense(item_group, n_item_groups - 1, np.int64),
        expl_group=dense(expl_group, n_expl_groups - 1, np.int64),
        explanation=dense(candidates.explanation, EMPTY, np.int64),
        n_item_groups=n_item_groups,
        n_expl_groups=n_expl_groups,
    )


@dataclass
class TitleForcing:
    """Importance sampling of rare shelf titles: at head step ``shelf`` each page draws its head only
    among pairs with explanation ``explanation[b]``, from the policy's own step distribution
    restricted to them; ``weight[b]`` receives P(policy's head has that explanation | prefix), the
    likelihood ratio of the forced draw (0 where no such pair remains; that page's draw is then free)."""

    shelf: int | np.ndarray  # the forced shelf, for all pages or per page (B,)
    explanation: np.ndarray  # (B,) explanation codes
    weight: np.ndarray  # (B,) float64, written at the forced step (1 before it)


def construct_page(
    candidates: CandidateSet,
    scores: np.ndarray,
    shelves: int,
    cards: int,
    epsilon_head: float,
    epsilon_fill: float,
    rng: np.random.Generator | None,
    forced: np.ndarray | None = None,
    observe: Callable[[int, int, np.ndarray, np.ndarray, np.ndarray, float], None] | None = None,
    force_title: TitleForcing | None = None,
    last_shelf: int | None = None,
) -> Pages:
    """The one page-construction loop.  ``forced`` (B, S, K) of candidate indices replays logs.

    Compiled (``bartops.policy.compiled.run_steps``) unless ``observe`` or ``force_title`` is given.

    ``observe(s, k, free, count, greedy_col, eps)``, if given, sees each step's dense (B, N) mask of
    remaining pairs, their count and the greedy column before the choice (used for marginals).
    ``force_title`` draws one shelf's title by importance sampling (see ``TitleForcing``);
    ``last_shelf`` stops after that shelf's fills (later slots stay empty).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(candidates),):
        raise ValueError(f"scores has shape {scores.shape}, expected ({len(candidates)},)")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    fill_shelves = shelves if last_shelf is None else min(shelves, last_shelf + 1)
    if observe is None and force_title is None:  # the compiled loop: same choices, bit for bit
        off = candidates.offsets
        forced_col = uniforms = None
        if forced is None:
            uniforms = rng.random((shelves + fill_shelves * (cards - 1), 2, candidates.n_pages))
        else:
            forced = np.asarray(forced, np.int64)
            if forced.shape != (candidates.n_pages, shelves, cards):
                raise ValueError(f"forced has shape {forced.shape}, expected {(candidates.n_pages, shelves, cards)}")
            forced_col = np.where(forced >= 0, forced - off[:-1, None, None], EMPTY)
            width = np.diff(off)[:, None, None]
            if ((forced >= 0) & ((forced_col < 0) | (forced_col >= width))).any():
                raise ValueError("forced names a candidate of another page (or beyond the candidate set)")
        return Pages(*run_steps(off, candidates.page, candidates.item_id, candidates.explanation,
                                candidates.choosable, scores, shelves, cards, fill_shelves, epsilon_head,
                                epsilon_fill, uniforms, forced_col))
    d = _padded(candidates, scores)
    B, S, K = candidates.n_pages, shelves, cards
    rows = np.arange(B)
    item_used = np.zeros(d["n_item_groups"], bool)
    expl_used = np.zeros(d["n_expl_groups"], bool)
    title = np.full((B, S), d["n_expl_groups"] - 1, np.int64)  # padding sink: matches nothing valid
    out_cand = np.full((B, S, K), EMPTY, np.int64)
    out_prop = np.zeros((B, S, K))
    out_expl = np.zeros((B, S, K), bool)
    out_greedy = np.zeros((B, S, K), bool)
    out_eps = np.zeros((B, S, K))
    if forced is not None:
        # translate forced candidate indices into dense column positions
        col_of = np.full(len(candidates) + 1, EMPTY, np.int64)
        col_of[d["index"][d["valid"]]] = np.nonzero(d["valid"])[1]
        forced_col = np.where(forced >= 0, col_of[np.where(forced >= 0, forced, len(candidates))], EMPTY)

    steps = [(s, 0) for s in range(S)] + [(s, k) for s in range(fill_shelves) for k in range(1, K)]
    for s, k in steps:
        eps = epsilon_head if k == 0 else epsilon_fill
        free = d["choosable"] & ~item_used[d["item_group"]]
        if k == 0:
            free &= ~expl_used[d["expl_group"]]
        else:
            free &= d["expl_group"] == title[:, s : s + 1]
        count = free.sum(axis=1)
        greedy_col = np.where(free, d["score"], -np.inf).argmax(axis=1)
        has = count > 0
        if observe is not None:
            observe(s, k, free, count, greedy_col, eps)
        if forced is None:
            explore = rng.random(B) < eps
            uniform = rng.random(B)
            col = greedy_col.copy()
            if explore.any():  # the k-th remaining pair, k uniform over the count, for exploring pages
                e = np.nonzero(explore)[0]
                draw = np.minimum((uniform[e] * count[e]).astype(np.int64), np.maximum(count[e] - 1, 0))
                col[e] = (free[e].cumsum(axis=1) > draw[:, None]).argmax(axis=1)
            col[~has] = EMPTY
            explored = explore & has
            if force_title is not None and k == 0:
                at = np.broadcast_to(np.asarray(force_title.shelf) == s, (B,))
                if at.any():
                    col = _forced_title_choice(force_title, at, d["explanation"], free, count, greedy_col, eps, rng,
                                               col)
        else:
            col = forced_col[:, s, k]
            explored = np.zeros(B, bool)
        placed = col != EMPTY
        safe_col = np.where(placed, col, 0)
        is_free = placed & free[rows, safe_col]
        is_greedy = is_free & (safe_col == greedy_col)
        prop = np.where(is_free, (1 - eps) * is_greedy + eps / np.maximum(count, 1), 0.0)
        out_cand[:, s, k] = np.where(placed, d["index"][rows, safe_col], EMPTY)
        out_prop[:, s, k] = np.where(placed, prop, 0.0)
        out_expl[:, s, k] = explored
        out_greedy[:, s, k] = is_greedy
        out_eps[:, s, k] = eps
        # the chosen card takes its item off the page's remaining pairs
        item_used[d["item_group"][rows[placed], col[placed]]] = True
        if k == 0:
            g = d["expl_group"][rows[placed], col[placed]]
            expl_used[g] = True
            title[rows[placed], s] = g
    return Pages(out_cand, out_prop, out_expl, out_greedy, out_eps)


def _forced_title_choice(force: TitleForcing, at: np.ndarray, explanation: np.ndarray, free: np.ndarray,
                         count: np.ndarray, greedy_col: np.ndarray, eps: float, rng: np.random.Generator,
                         col: np.ndarray) -> np.ndarray:
    """Head choice of the pages ``at`` restricted to pairs with the forced explanation, drawn from the
    ε-greedy step distribution conditioned on that set; writes the set's probability into ``force.weight``."""
    rows = np.arange(len(count))
    in_set = free & (explanation == force.explanation[:, None])
    n_set = in_set.sum(axis=1)
    greedy_in = (count > 0) & in_set[rows, greedy_col]
    mass = (1 - eps) * greedy_in + eps * n_set / np.maximum(count, 1)
    force.weight[at] = np.where(n_set > 0, mass, 0.0)[at]
    ok = (n_set > 0) & at
    take_greedy = greedy_in & (rng.random(len(count)) * np.maximum(mass, 1e-300) < (1 - eps))
    draw = np.minimum((rng.random(len(count)) * n_set).astype(np.int64), np.maximum(n_set - 1, 0))
    uniform_col = (in_set.cumsum(axis=1) > draw[:, None]).argmax(axis=1)
    forced_col = np.where(take_greedy, greedy_col, uniform_col)
    return np.where(ok, forced_col, col)


def build_pages(
    policy: PagePolicy,
    contexts: pd.DataFrame,
    candidates: CandidateSet,
    rng: np.random.Generator,
    scores: np.ndarray | None = None,
) -> Pages:
    """Sample one page per context row with the policy (scores computed unless given)."""
    if candidates.n_pages != len(contexts):
        raise ValueError(f"candidates describe {candidates.n_pages} pages but contexts has {len(contexts)} rows")
    if scores is None:
        scores = policy.scorer(contexts, candidates)
    return construct_page(
        candidates, scores, policy.shelves, policy.cards, policy.epsilon_head, policy.epsilon_fill, rng
    )


def logged_slots_to_candidates(
    candidates: CandidateSet,
    page: np.ndarray,
    shelf: np.ndarray,
    position: np.ndarray,
    item_id: np.ndarray,
    explanation: np.ndarray,
    shelves: int,
    cards: int,
) -> tuple[CandidateSet, np.ndarray, np.ndarray]:
    """Map logged cards to candidate indices, adding unchoosable pairs for cards outside the support.

    Returns the widened candidate set, the forced (B, S, K) candidate array, and for each logged
    row its candidate index.  Cards logged beyond the policy's page shape are ignored (index -1).
    """
    page = np.asarray(page, np.int64)
    shelf = np.asarray(shelf, np.int64)
    position = np.asarray(position, np.int64)
    item_id = np.asarray(item_id, np.int64)
    explanation = np.asarray(explanation, np.int64)
    widened = CandidateSet.from_arrays(
        np.concatenate([candidates.page, page]),
        np.concatenate([candidates.item_id, item_id]),
        np.concatenate([candidates.explanation, explanation]),
        candidates.n_pages,
        np.concatenate([candidates.choosable, np.zeros(len(page), bool)]),
    )
    idx = locate_cards(widened, page, explanation, item_id)
    inside = (shelf < shelves) & (position < cards) & (shelf >= 0) & (position >= 0)
    forced = np.full((candidates.n_pages, shelves, cards), EMPTY, np.int64)
    forced[page[inside], shelf[inside], position[inside]] = idx[inside]
    return widened, forced, np.where(inside, idx, EMPTY)


def logged_choice_probabilities(
    policy: PagePolicy,
    contexts: pd.DataFrame,
    candidates: CandidateSet,
    page: np.ndarray,
    shelf: np.ndarray,
    position: np.ndarray,
    item_id: np.ndarray,
    explanation: np.ndarray,
) -> np.ndarray:
    """P(policy makes each logged choice | context, the logged cards chosen before it).

    One value per logged row; 0 where the policy could not have made that choice (outside its
    support, or a slot beyond its page shape).
    """
    widened, forced, row_index = logged_slots_to_candidates(
        candidates, page, shelf, position, item_id, explanation, policy.shelves, policy.cards
    )
    scores = np.full(len(widened), -np.inf)
    ch = widened.choosable
    if ch.any():
        sub = CandidateSet(widened.page[ch], widened.item_id[ch], widened.explanation[ch], widened.n_pages, widened.choosable[ch])
        scores[ch] = policy.scorer(contexts, sub)
    replay = construct_page(
        widened, np.where(ch, scores, -1e300), policy.shelves, policy.cards,
        policy.epsilon_head, policy.epsilon_fill, rng=None, forced=forced,
    )
    inside = row_index != EMPTY
    out = np.zeros(len(row_index))
    out[inside] = replay.propensity[
        np.asarray(page)[inside], np.asarray(shelf)[inside], np.asarray(position)[inside]
    ]
    return out


def locate_cards(cands: CandidateSet, page: np.ndarray, explanation: np.ndarray, item_id: np.ndarray) -> np.ndarray:
    """Index of each (page, explanation, item) query in the candidate set, -1 where absent."""
    index = pd.MultiIndex.from_arrays([cands.page, cands.explanation, cands.item_id])
    return index.get_indexer(pd.MultiIndex.from_arrays([page, explanation, item_id]))
