"""bartops' IPS and SNIPS against an independent NumPy reference: agreement and speed.

    python -m bench.ope_reference [--sizes 1000000 10000000] [--repeats 3] [--n-boot 1000]

Random logged arrays shaped like the simulator's logs: pages of 48 cards (6 shelves × 8 slots);
each card was the ε-greedy logging policy's greedy choice with probability 1 − ε (propensity
1 − ε + ε/m) or an explored one (ε/m), m remaining choices uniform in 5..300, ε = 0.1; the target
policy agrees with the logged card with a probability that depends on whether it was greedy, and
gives it 1 − ε_t + ε_t/m or ε_t/m (ε_t = 0.05); rewards Bernoulli(0.12).

The estimand is bartops' (``bartops.ope.estimators``): the value per page,
IPS = Σ_rows w·r / #pages, and SNIPS per slot stratum = Σ_slots (n_slot / #pages)·Σ_slot w·r / Σ_slot w,
with w = target / propensity; SNIPS is run with one stratum (bartops' default) and, where memory
allows, with the 48 slots as strata (what ``bartops.ope.pipeline`` uses).  The reference below computes these directly with masks and sums; it
shares no code with bartops.  Reported: the largest absolute and relative difference (the script
exits non-zero above ``REL_TOLERANCE``) and the median wall time of the reference, of bartops'
point estimate (input validation + statistics + group sums + combine, no bootstrap) and of bartops'
``ips``/``snips`` with a 1,000-resample page bootstrap (interval and diagnostics included).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bartops.ope import IPS, SNIPS, check_inputs, ips, snips
from bench.common import save, table, timed

CARDS_PER_PAGE = 48
REL_TOLERANCE = 1e-12


def random_logs(n: int, seed: int = 0, epsilon: float = 0.1, target_epsilon: float = 0.05) -> dict[str, np.ndarray]:
    """Random logged arrays: reward, propensity, target, page, slot (see the module docstring)."""
    rng = np.random.default_rng(seed)
    m = rng.integers(5, 301, n)
    greedy = rng.random(n) < 1 - epsilon
    propensity = np.where(greedy, 1 - epsilon + epsilon / m, epsilon / m)
    target_greedy = rng.random(n) < np.where(greedy, 0.7, 0.02)
    target = np.where(target_greedy, 1 - target_epsilon + target_epsilon / m, target_epsilon / m)
    return {"reward": (rng.random(n) < 0.12).astype(np.float64), "propensity": propensity, "target": target,
            "page": np.arange(n) // CARDS_PER_PAGE, "slot": np.arange(n) % CARDS_PER_PAGE}


# ---------------------------------------------------------------------- the reference
def reference_ips(reward, propensity, target, page) -> float:
    """Σ (target/propensity)·reward over all rows, divided by the number of distinct pages."""
    w = target / propensity
    return float(np.sum(w * reward) / len(np.unique(page)))


def reference_snips(reward, propensity, target, page, slot) -> float:
    """Per slot: (rows in the slot / pages) × Σ w·r / Σ w over the slot's rows; summed over slots."""
    w = target / propensity
    n_pages = len(np.unique(page))
    value = 0.0
    for s in np.unique(slot):
        rows = slot == s
        sw = np.sum(w[rows])
        if sw > 0:
            value += rows.sum() / n_pages * np.sum(w[rows] * reward[rows]) / sw
    return float(value)


# ---------------------------------------------------------------------- bartops
def bartops_point(estimator, logs: dict[str, np.ndarray]) -> float:
    """bartops' point estimate without a bootstrap: validate, statistics, per-page sums, combine."""
    d = check_inputs(logs["reward"], logs["propensity"], logs["target"], logs["page"], logs["slot"])
    return float(estimator.combine(estimator.group_statistics(d).sum(axis=0), d.n_groups))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    rows, worst = [], 0.0
    for n in args.sizes:
        logs = random_logs(n)
        r, p, t, g, s = logs["reward"], logs["propensity"], logs["target"], logs["page"], logs["slot"]
        one = np.zeros(n, np.int64)  # a single stratum: plain self-normalisation over all rows
        cases = {
            "ips": (lambda: reference_ips(r, p, t, g), lambda: bartops_point(IPS(), logs),
                    lambda: ips(r, p, t, groups=g, n_boot=args.n_boot).value),
            "snips": (lambda: reference_snips(r, p, t, g, one), lambda: bartops_point(SNIPS(), {**logs, "slot": one}),
                      lambda: snips(r, p, t, groups=g, n_boot=args.n_boot).value),
        }
        cases[f"snips, {CARDS_PER_PAGE} slot strata"] = (
            lambda: reference_snips(r, p, t, g, s), lambda: bartops_point(SNIPS(), logs),
            lambda: snips(r, p, t, groups=g, strata=s, n_boot=args.n_boot).value)
        for name, (ref_fn, point_fn, boot_fn) in cases.items():
            t_ref, _, ref = timed(ref_fn, args.repeats)
            t_point, _, point = timed(point_fn, args.repeats)
            t_boot, _, boot = timed(boot_fn, args.repeats)
            abs_diff = max(abs(point - ref), abs(boot - ref))
            rel_diff = abs_diff / abs(ref)
            worst = max(worst, rel_diff)
            rows.append({"rows": f"{n:,}", "estimator": name, "reference": ref, "bartops": point,
                         "max abs diff": f"{abs_diff:.1e}", "max rel diff": f"{rel_diff:.1e}",
                         "reference s": t_ref, "bartops point s": t_point,
                         f"bartops + {args.n_boot} bootstrap s": t_boot,
                         "point / reference": t_point / t_ref})
            print(f"{n:,} rows, {name}: rel diff {rel_diff:.1e}, reference {t_ref:.2f} s, bartops {t_point:.2f} s "
                  f"(+ bootstrap {t_boot:.2f} s)", flush=True)
    ok = worst <= REL_TOLERANCE
    print(f"\nbartops IPS/SNIPS vs the NumPy reference (pages of {CARDS_PER_PAGE}; medians of {args.repeats}; 2 cores)")
    print(table(rows))
    print(f"\nlargest relative difference {worst:.1e}: {'within' if ok else 'ABOVE'} the tolerance {REL_TOLERANCE:.0e}")
    print(f"saved {save('ope_reference', {'rows': rows, 'max_rel_diff': worst, 'tolerance': REL_TOLERANCE, 'ok': ok, 'args': vars(args)})}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
