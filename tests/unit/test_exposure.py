"""The compiled logging exposures E₀ (``bartops.ope.exposure`` via ``examination_marginals``) against
brute force: the mean over many built pages of κ(slot) where the card was shown."""

from __future__ import annotations

import numpy as np

from bartops.features.candidates import candidates_for_requests
from bartops.ope.slate import examination_marginals
from bartops.policy.page import build_pages
from bartops.sim.simulate import logging_policy


def test_exposures_equal_the_mean_examination_of_built_pages(small_sim):
    """Four contexts of the small world, ε = 0.3 (rare titles and deep fills are exercised).  Brute force:
    12,000 pages built per context by ``build_pages``; per card X = κ(slot) if shown, else 0, so
    Ê = mean X with standard error sd(X)/√12,000.  The kernel runs 40 independent times with 500 samples
    each: its mean and its standard error from the runs' spread.  Over the M cards with E > 0.005, each
    z = (E_kernel − Ê)/√(se_kernel² + se²) must stay under Student's t quantile (39 df) at
    1 − 10⁻⁵/(2M) (Bonferroni; the t tails are heavier than z's: false alarm ≤ 1e-5 for the test), and
    the mean z (a shared bias) within 5/√M."""
    from scipy.stats import t as student_t

    w = small_sim.world
    log = logging_policy(w, small_sim.history, 6, 8, 0.3, 0.3)
    contexts = small_sim.impressions.drop_duplicates("request_id").head(4)[
        ["user_id", "platform", "region", "timestamp"]].reset_index(drop=True)
    cands = candidates_for_requests(small_sim.candidates, contexts["user_id"].to_numpy())
    kappa = w.examination(np.arange(6)[:, None], np.arange(8)[None, :])
    runs = np.stack([examination_marginals(log, contexts, cands, kappa, n_samples=500, seed=seed)
                     for seed in range(40)])
    assert np.isfinite(runs).all() and (runs > 0).all(), "every candidate can be shown by exploration"
    kernel, kernel_se = runs.mean(axis=0), runs.std(axis=0, ddof=1) / np.sqrt(len(runs))

    reps = 12_000
    rep_ctx = contexts.loc[np.tile(np.arange(len(contexts)), reps)].reset_index(drop=True)
    rep_cands = candidates_for_requests(small_sim.candidates, rep_ctx["user_id"].to_numpy())
    pages = build_pages(log, rep_ctx, rep_cands, np.random.default_rng(2))
    b, s, k = np.nonzero(pages.filled)
    shown = pages.candidate[b, s, k]
    # map replicated candidates back to the original contexts' candidates (same canonical order per page)
    off, rep_off = cands.offsets, rep_cands.offsets
    original = off[b % len(contexts)] + (shown - rep_off[b])
    sums = np.bincount(original, weights=kappa[s, k], minlength=len(cands))
    squares = np.bincount(original, weights=kappa[s, k] ** 2, minlength=len(cands))
    mean = sums / reps
    se = np.sqrt(np.maximum(squares / reps - mean ** 2, 0.0) / reps)
    use = mean > 0.005
    z = (kernel[use] - mean[use]) / np.sqrt(se[use] ** 2 + kernel_se[use] ** 2)
    m = int(use.sum())
    bound = student_t.ppf(1 - 1e-5 / (2 * m), df=len(runs) - 1)
    assert m > 100, f"too few cards to compare: {m}"
    assert np.abs(z).max() < bound, f"largest |z| {np.abs(z).max():.2f} over {m} cards exceeds {bound:.2f}"
    assert abs(z.mean()) < 5 / np.sqrt(m), f"mean z {z.mean():+.3f} over {m} cards: a shared bias"
    print(f"{m} cards: max |z| {np.abs(z).max():.2f} (bound {bound:.2f}), mean z {z.mean():+.3f}")
