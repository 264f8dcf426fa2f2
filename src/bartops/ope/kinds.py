"""Per explanation kind: streams per shown card of the candidate against production, with intervals.

The gate's ``explanations`` rule asks whether some kind of shelf title ("Because you listened to …",
"Popular in …") loses much of its quality under the candidate.  Each policy's figure for kind k is a
ratio of page sums, V_k = Σ_pages streams_k / Σ_pages cards_k (streams estimated as the policy's
estimator builds them: on-policy rewards for the logging policy, DM + weighted correction for a target),
and the candidate's relative change is L_k = V_k(candidate) / V_k(production) − 1.

Its interval comes from the same page bootstrap as every other estimate (``bootstrap_sums`` on the
same units and seed, pages resampled jointly for both policies and all kinds, so the figures are
paired).  With K kinds the intervals are Bonferroni-adjusted (two-sided level 1 − (1 − level)/K each),
so "some kind's upper bound lies below −tolerance" happens with probability at most (1 − level)/2
when no kind truly loses more than the tolerance: the rule's false-rejection rate (2.5 % at 95 %).

A kind is *unmeasured* when the logs cannot speak for it: production shows no card of it, the logs
hold no stream of it, or some resample has no card of it (the ratio is undefined there).  An
unmeasured kind is reported as such, never as a loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bartops.ope.estimators import bootstrap_sums, bootstrap_units


@dataclass(frozen=True)
class KindPageSums:
    """One policy's per-page sums by kind, pages in the logs' (sorted request-id) order."""

    streams: np.ndarray  # (pages, kinds) estimated streams of the policy's cards of each kind
    cards: np.ndarray  # (pages, kinds) the policy's cards of each kind (expected count per page)

    def __post_init__(self) -> None:
        if self.streams.shape != self.cards.shape or self.streams.ndim != 2:
            raise ValueError(f"streams {self.streams.shape} and cards {self.cards.shape} must be equal (pages, kinds)")


@dataclass(frozen=True)
class KindLift:
    """Candidate against production for one explanation kind (streams per shown card)."""

    kind: str
    candidate: float  # candidate's streams per card of the kind
    production: float
    lift: float  # candidate / production − 1 (nan when unmeasured)
    ci_low: float
    ci_high: float
    level: float  # the (Bonferroni-adjusted) two-sided level of this interval
    measured: bool
    reason: str  # why unmeasured ("" when measured)

    def to_dict(self) -> dict:
        return asdict(self)


def kind_page_sums(page: np.ndarray, kind: np.ndarray, values: np.ndarray, n_pages: int, n_kinds: int) -> np.ndarray:
    """(n_pages, n_kinds) sums of ``values`` by page and kind code."""
    key = np.asarray(page, np.int64) * n_kinds + np.asarray(kind, np.int64)
    return np.bincount(key, weights=np.asarray(values, np.float64), minlength=n_pages * n_kinds).reshape(n_pages, n_kinds)


def logging_kind_sums(page: np.ndarray, kind: np.ndarray, reward: np.ndarray, n_pages: int, n_kinds: int
                      ) -> KindPageSums:
    """The logging policy on its own logs (on-policy): logged streams and cards of each kind per page."""
    return KindPageSums(kind_page_sums(page, kind, reward, n_pages, n_kinds),
                        kind_page_sums(page, kind, np.ones(len(page)), n_pages, n_kinds))


def target_kind_sums(row_page: np.ndarray, row_kind: np.ndarray, correction: np.ndarray, card_page: np.ndarray,
                     card_kind: np.ndarray, card_prediction: np.ndarray | None, samples: int, n_pages: int,
                     n_kinds: int) -> KindPageSums:
    """A target's streams of each kind per page, as its estimator builds them: the direct method over
    its sampled cards (``card_prediction`` q̂, averaged over ``samples`` pages; None = no DM) plus the
    weighted corrections of the logged rows of that kind; and its expected cards of each kind."""
    streams = kind_page_sums(row_page, row_kind, correction, n_pages, n_kinds)
    if card_prediction is not None:
        streams = streams + kind_page_sums(card_page, card_kind, np.asarray(card_prediction) / samples, n_pages,
                                           n_kinds)
    return KindPageSums(streams, kind_page_sums(card_page, card_kind, np.full(len(card_page), 1.0 / samples),
                                                n_pages, n_kinds))


def per_kind_table(sums: dict[str, KindPageSums], kinds: list[str], logged_cards: np.ndarray
                   ) -> dict[str, dict[str, float]]:
    """kind → {policy: streams per shown card, policy_cards_per_page: cards per page} for every kind
    the logs or some policy shows (``logged_cards``: logged rows of each kind)."""
    totals = {name: (s.streams.sum(axis=0), s.cards.sum(axis=0), len(s.cards)) for name, s in sums.items()}
    out = {}
    for k, kind in enumerate(kinds):
        if logged_cards[k] <= 0 and all(c[k] <= 0 for _, c, _ in totals.values()):
            continue
        row = {}
        for name, (streams, cards, pages) in totals.items():
            row[name] = float(streams[k] / cards[k]) if cards[k] > 0 else 0.0
            row[f"{name}_cards_per_page"] = float(cards[k] / pages)
        out[kind] = row
    return out


def kind_lifts(candidate: KindPageSums, production: KindPageSums, kinds: list[str], observed_streams: np.ndarray,
               n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, KindLift]:
    """Per kind, the candidate's relative change of streams per card with a Bonferroni-adjusted
    percentile interval (module docs).  ``observed_streams`` (kinds,): logged streams of each kind."""
    if candidate.streams.shape != production.streams.shape or candidate.streams.shape[1] != len(kinds):
        raise ValueError(f"per-kind sums must share one (pages, kinds={len(kinds)}) shape: "
                         f"{candidate.streams.shape} vs {production.streams.shape}")
    K = len(kinds)
    sums = np.hstack([candidate.streams, candidate.cards, production.streams, production.cards])
    total = sums.sum(axis=0)
    boot = bootstrap_sums(bootstrap_units(sums, seed), n_boot, seed) if len(sums) else np.zeros((0, 4 * K))
    adjusted = 1 - (1 - level) / max(K, 1)
    alpha = (1 - adjusted) / 2
    out = {}
    for k, name in enumerate(kinds):
        cs, cc, ps, pc = total[k], total[K + k], total[2 * K + k], total[3 * K + k]
        bcs, bcc, bps, bpc = boot[:, k], boot[:, K + k], boot[:, 2 * K + k], boot[:, 3 * K + k]
        reason = ("production shows no card of this kind" if pc <= 0 else
                  "the candidate shows no card of this kind" if cc <= 0 else
                  "the logs hold no stream of this kind" if observed_streams[k] <= 0 else
                  "some resamples hold no card of this kind" if ((bcc <= 0) | (bpc <= 0) | (bps <= 0)).any() else
                  "production's streams per card of this kind are not positive" if ps <= 0 else "")
        c_val = cs / cc if cc > 0 else float("nan")
        p_val = ps / pc if pc > 0 else float("nan")
        if reason:
            out[name] = KindLift(name, float(c_val), float(p_val), float("nan"), float("nan"), float("nan"),
                                 adjusted, False, reason)
            continue
        ratio = (bcs / bcc) / (bps / bpc) - 1
        lo, hi = np.quantile(ratio, [alpha, 1 - alpha])
        out[name] = KindLift(name, float(c_val), float(p_val), float(c_val / p_val - 1), float(lo), float(hi),
                             adjusted, True, "")
    return out
