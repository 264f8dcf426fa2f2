"""IPS + SNIPS + DR with a 1,000-resample bootstrap on unpaged logs (every row its own unit).

    python -m bench.ope_rows [--rows 1000000] [--repeats 5] [--n-boot 1000]

Open Bandit Dataset-style logs have no pages: each row is an independent unit.  Above
``MAX_BOOTSTRAP_UNITS`` units the bootstrap resamples random equal blocks of them (block sums of iid
units are iid).  This measures the three estimators on the same resamples (``evaluate_many``) at the
current block count and at 200,000 blocks (the earlier setting), and shows that the intervals agree
to within their own Monte-Carlo noise (the interval ends' spread over bootstrap seeds).
"""

from __future__ import annotations

import argparse

import numpy as np

from bartops.ope import estimators
from bartops.ope.estimators import DR, IPS, SNIPS, evaluate_many
from bartops.ope.validate import check_inputs
from bench.common import save, table, timed


def unpaged_logs(n: int, seed: int = 0):
    """n independent rows: Bernoulli(0.12) rewards, propensities U(0.05, 1), targets U(0, 1), model outputs."""
    rng = np.random.default_rng(seed)
    reward = (rng.random(n) < 0.12).astype(float)
    return check_inputs(reward, rng.uniform(0.05, 1, n), rng.uniform(0, 1, n), None,
                        prediction=rng.uniform(0, 0.3, n), expected=rng.uniform(0, 0.3, n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=5, help="bootstrap seeds for the intervals' own noise")
    args = ap.parse_args()
    data = unpaged_logs(args.rows)
    current = estimators.MAX_BOOTSTRAP_UNITS
    rows = []
    for units in (current, 200_000):
        estimators.MAX_BOOTSTRAP_UNITS = units
        try:
            median, _, out = timed(lambda: evaluate_many([IPS(), SNIPS(), DR()], data, args.n_boot, 0.95, 0),
                                   args.repeats)
            ends = {e: np.array([[v.ci_low, v.ci_high] for v in
                                 (evaluate_many([IPS(), SNIPS(), DR()], data, args.n_boot, 0.95, s)[e]
                                  for s in range(args.seeds))]) for e in ("ips", "snips", "dr")}
        finally:
            estimators.MAX_BOOTSTRAP_UNITS = current
        for e, est in out.items():
            rows.append({"blocks": f"{units:,}", "estimator": e, "value": round(est.value, 5),
                         "95% interval (seed 0)": f"[{est.ci_low:.5f}, {est.ci_high:.5f}]",
                         "mean ends over seeds": f"[{ends[e][:, 0].mean():.5f}, {ends[e][:, 1].mean():.5f}]",
                         "ends' sd over seeds": f"{ends[e].std(axis=0, ddof=1).max():.5f}",
                         "ips+snips+dr s (median)": round(median, 3)})
        print(f"{units:,} blocks: {median:.2f} s", flush=True)
    print(f"\n{args.rows:,} unpaged rows, IPS + SNIPS + DR, {args.n_boot} resamples (medians of {args.repeats}; 2 cores)")
    print(table(rows))
    print(f"saved {save('ope_rows', {'rows': rows, 'args': vars(args)})}")


if __name__ == "__main__":
    main()
