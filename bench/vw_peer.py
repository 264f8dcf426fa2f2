"""Policy quality against a peer: Vowpal Wabbit's contextual-bandit learner on the same simulated logs.

    python -m bench.vw_peer [--sizes 100000 1000000] [--contexts 2000] [--others 3]

One simulation (params.yaml world, ``bench.reward_quality.setup``); for the first 100k and 1M logged
impressions:

- bartops: the shared layer with that size's logged-response table plus the counterfactually
  weighted XGBoost reward model (``train_reward_models``, baselines off), as in reward_quality's
  speed measurement;
- VW: ``--cb_explore_adf --epsilon ε`` (ε = the logging policy's) once with ``--cb_type ips`` and once
  with ``--cb_type dr``, one online pass over the same training rows (the time split's earlier 80 %,
  in the order written), given the same information bartops uses (see ``VW_ARGS`` and the
  formatting functions):

  * shared features: namespace ``u`` = the user id; ``c`` = platform, region, local hour, shelf and
    position (the decision's slot);
  * action features: namespace ``i`` = item id, explanation id and explanation kind; ``f`` = every
    other ``assemble_rows`` column (affinities, embedding products, item statistics, audio, the
    user's logged response to the kind, hour × audio), values exactly as bartops' model sees them
    (leak-free out-of-fold response statistics, as ``training_rows``);
  * interactions ``-q cf -q ci -q ui``: context × numeric features, context × ids (platform × kind,
    slot × item …) and user × ids (per-user taste for items and explanations); learning rate
    ``-l 0.1``, the best of a small sweep at 100k impressions (value/oracle, ips/dr: ``-l 0.5``
    (VW's default) 0.736/0.708, ``-l 0.1`` 0.760/0.771, ``-l 2`` 0.721/0.657; adding ``-q uf``
    0.726/0.701) — VW's own default ``--cb_type mtr`` scored 0.782 at ``-l 0.1``;

  each logged card is one example: the logged card (cost = −reward) and ``--others`` (default 3)
  other pairs drawn uniformly from the pairs the logging policy could have chosen at that very
  step (the remaining pairs, found by replaying the logged page through ``bartops.policy.page``
  with the simulator's candidate table).  Sampling keeps VW's cost linear in ``others`` instead
  of in the ~60 remaining pairs of an average step; with a sampled action set the probability VW
  needs is P(logged | the example's actions) = π / (π + (1 − π)·q), q = others / (|remaining| − 1),
  π the logged propensity, which keeps both IPS and DR cost estimates unbiased for every action in
  the set (passing π itself would inflate the IPS targets of rarely logged pairs by up to 1/q).

Both are then put into the same page construction: ``PagePolicy`` at ε = 0 whose scorer is the
model's predicted P(stream) (bartops) or −VW's predicted cost (VW's partial predictions of the
actions), and scored with ``true_value`` against the oracle on the same fixed sampled contexts.
Wall times: bartops = features + training; VW = example generation (replay, sampling, row assembly,
text) and learning, reported separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import vowpalwabbit

from bartops.context import PLATFORMS, REGIONS
from bartops.features.assemble import CONTEXT_COLUMNS, FEATURE_NAMES, assemble_rows
from bartops.features.candidates import EXPLANATION_KINDS, candidates_for_requests
from bartops.features.logstats import page_folds, response_table
from bartops.features.store import Features
from bartops.policy.page import EMPTY, CandidateSet, PagePolicy, construct_page, logged_slots_to_candidates
from bartops.reward.policy import candidate_policy
from bartops.reward.train import time_split, train_reward_models
from bartops.sim import true_value
from bench.common import save, table
from bench.reward_quality import first_impressions, setup

VW_ARGS = "-b 24 -q cf -q ci -q ui -l 0.1"
COL = {name: j for j, name in enumerate(FEATURE_NAMES)}
PLATFORM_COLS = [COL[f"platform_{p}"] for p in PLATFORMS]
REGION_COLS = [COL[f"region_{r}"] for r in REGIONS]
KIND_COLS = [COL[f"kind_{k}"] for k in EXPLANATION_KINDS]
CONTEXT_FEATURES = {*(f"platform_{p}" for p in PLATFORMS), *(f"region_{r}" for r in REGIONS),
                    "local_hour", "hour_sin", "hour_cos", "shelf", "position"}
NUMERIC = [j for j, name in enumerate(FEATURE_NAMES) if name not in CONTEXT_FEATURES]  # namespace f


# ---------------------------------------------------------------------- action sets
@dataclass(frozen=True)
class ActionSets:
    """Per logged row: sampled other (item, explanation) pairs (-1 padded) and the VW probability."""

    other_item: np.ndarray  # int64 (n, others)
    other_explanation: np.ndarray  # int64 (n, others)
    remaining: np.ndarray  # int64 (n,) pairs the logging policy could choose from at that step
    probability: np.ndarray  # float64 (n,) P(logged | the example's actions)


def sample_action_sets(table: pd.DataFrame, impressions: pd.DataFrame, explanation: np.ndarray, shelves: int,
                       cards: int, others: int, seed: int, chunk: int = 2048) -> ActionSets:
    """Replay the logged pages to find each step's remaining pairs; sample ``others`` of them per row.

    ``table`` is the logging policy's candidate table (user_id, explanation, item_id), ``explanation``
    the logged rows' explanation codes.  Impressions must be whole pages, each page's rows adjacent.
    """
    if others < 1:
        raise ValueError(f"others must be at least 1, got {others}")
    n = len(impressions)
    page_all, request_ids = pd.factorize(impressions["request_id"])
    if n and (np.diff(page_all) < 0).any():
        raise ValueError("impressions must list each page's rows together, pages in order")
    user_of_page = impressions["user_id"].to_numpy(np.int64)[np.searchsorted(page_all, np.arange(len(request_ids)))]
    shelf_all = impressions["shelf"].to_numpy(np.int64)
    pos_all = impressions["position"].to_numpy(np.int64)
    item_all = impressions["item_id"].to_numpy(np.int64)
    out_item = np.full((n, others), EMPTY, np.int64)
    out_expl = np.full((n, others), EMPTY, np.int64)
    remaining = np.zeros(n, np.int64)
    in_support = np.zeros(n, bool)
    rng = np.random.default_rng(seed)
    bounds = np.searchsorted(page_all, np.arange(0, len(request_ids) + chunk, chunk))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if lo == hi:
            continue
        page = page_all[lo:hi] - page_all[lo]
        B = int(page[-1]) + 1
        cands = candidates_for_requests(table, user_of_page[page_all[lo]: page_all[lo] + B])
        widened, forced, row_index = logged_slots_to_candidates(
            cands, page, shelf_all[lo:hi], pos_all[lo:hi], item_all[lo:hi], explanation[lo:hi], shelves, cards)
        off = widened.offsets
        row_at = np.full((B, shelves, cards), EMPTY, np.int64)
        inside = row_index != EMPTY
        row_at[page[inside], shelf_all[lo:hi][inside], pos_all[lo:hi][inside]] = lo + np.nonzero(inside)[0]

        def observe(s, k, free, count, greedy_col, eps):
            b = np.nonzero(forced[:, s, k] != EMPTY)[0]
            if not len(b):
                return
            rows = row_at[b, s, k]
            logged_col = forced[b, s, k] - off[b]
            keys = rng.random((len(b), free.shape[1]))
            keys[~free[b]] = np.inf
            in_support[rows] = np.isfinite(keys[np.arange(len(b)), logged_col])
            keys[np.arange(len(b)), logged_col] = np.inf
            m = min(others, free.shape[1])
            cols = np.argsort(keys, axis=1)[:, :m]
            ok = np.isfinite(np.take_along_axis(keys, cols, axis=1))
            cand = np.where(ok, off[b][:, None] + cols, 0)
            out_item[rows, :m] = np.where(ok, widened.item_id[cand], EMPTY)
            out_expl[rows, :m] = np.where(ok, widened.explanation[cand], EMPTY)
            remaining[rows] = count[b]

        construct_page(widened, np.zeros(len(widened)), shelves, cards, 0.0, 0.0, rng=None, forced=forced,
                       observe=observe)
    if not in_support.all():
        raise ValueError(f"{int((~in_support).sum())} logged cards lie outside the logging candidate table")
    pi = impressions["propensity"].to_numpy(np.float64)
    q = np.where(remaining > 1, (out_item != EMPTY).sum(axis=1) / np.maximum(remaining - 1, 1), 0.0)
    return ActionSets(out_item, out_expl, remaining, pi / (pi + (1 - pi) * q))


# ---------------------------------------------------------------------- VW text
def _join(parts: list[pa.Array]) -> pa.Array:
    return pc.binary_join_element_wise(*parts, " ")


def _numeric_tokens(rows: np.ndarray) -> pa.Array:
    """``f<j>:<value>`` for each NUMERIC column j of the rows (zeros left out), joined per row."""
    parts = []
    for j in NUMERIC:
        v = rows[:, j]
        s = pc.binary_join_element_wise(f"f{j}", pc.cast(pa.array(v, pa.float32()), pa.string()), ":")
        parts.append(pc.if_else(pa.array(v != 0), s, ""))
    return _join(parts)


def shared_lines(rows: np.ndarray, user_id: np.ndarray) -> pa.Array:
    """VW shared lines from assembled rows (one per example): user id, platform, region, hour, slot."""
    platform = np.array(PLATFORMS, dtype=object)[rows[:, PLATFORM_COLS].argmax(axis=1)]
    region = np.array(REGIONS, dtype=object)[rows[:, REGION_COLS].argmax(axis=1)]
    ints = lambda j: pa.array(rows[:, j].astype(np.int64)).cast(pa.string())  # noqa: E731
    return _join([pa.array(np.full(len(rows), "shared |u"), pa.string()),
                  pc.binary_join_element_wise("u", pa.array(np.asarray(user_id, np.int64)).cast(pa.string()), ""),
                  pa.array(np.full(len(rows), "|c"), pa.string()),
                  pa.array(platform, pa.string()), pa.array(region, pa.string()),
                  pc.binary_join_element_wise("h", ints(COL["local_hour"]), ""),
                  pc.binary_join_element_wise("s", ints(COL["shelf"]), ""),
                  pc.binary_join_element_wise("p", ints(COL["position"]), "")])


def action_lines(rows: np.ndarray, item_id: np.ndarray, explanation: np.ndarray,
                 labels: pa.Array | None = None) -> pa.Array:
    """VW action lines: optional label, ``|i`` item/explanation/kind ids, ``|f`` numeric features."""
    kind = rows[:, KIND_COLS].argmax(axis=1)
    n = len(rows)
    ids = [pc.binary_join_element_wise("i", pa.array(np.asarray(item_id, np.int64)).cast(pa.string()), ""),
           pc.binary_join_element_wise("e", pa.array(np.asarray(explanation, np.int64)).cast(pa.string()), ""),
           pc.binary_join_element_wise("k", pa.array(kind).cast(pa.string()), "")]
    head = pa.array(np.full(n, "|i"), pa.string()) if labels is None else \
        pc.binary_join_element_wise(labels, pa.array(np.full(n, "|i"), pa.string()), " ")
    return _join([head, *ids, pa.array(np.full(n, "|f"), pa.string()), _numeric_tokens(rows)])


def cb_labels(cost: np.ndarray, probability: np.ndarray) -> pa.Array:
    """ADF labels ``0:<cost>:<probability>`` of the logged actions."""
    c = pa.array(np.asarray(cost, np.float64)).cast(pa.string())
    p = pa.array(np.asarray(probability, np.float64)).cast(pa.string())
    return pc.binary_join_element_wise("0", c, p, ":")


def example_text(shared: pa.Array, actions: pa.Array, n_actions: np.ndarray) -> str:
    """Multi-line examples: each shared line, its ``n_actions`` action lines, a blank line."""
    n_actions = np.asarray(n_actions, np.int64)
    starts = np.concatenate([[0], np.cumsum(n_actions + 2)])
    total = int(starts[-1])
    index = np.empty(total, np.int64)
    ex_of = np.repeat(np.arange(len(n_actions)), n_actions + 2)
    offset = np.arange(total) - starts[ex_of]
    action_base = np.concatenate([[0], np.cumsum(n_actions)])[ex_of]
    blank = len(shared) + len(actions)
    index[:] = np.where(offset == 0, ex_of,
                        np.where(offset <= n_actions[ex_of], len(shared) + action_base + offset - 1, blank))
    lines = pa.concat_arrays([shared, actions, pa.array([""], pa.string())]).take(pa.array(index))
    return "\n".join(lines.to_pylist()) + "\n"


def write_examples(path: Path, features: Features, impressions: pd.DataFrame, train: np.ndarray, folds: int,
                   sets: ActionSets, chunk: int = 100_000) -> int:
    """Write VW cb examples of the training rows; returns the number of examples.

    Rows are assembled at the logged slot with the leak-free logged-response statistics of
    ``bartops.reward.train.training_rows``: fold k's rows see the training rows of the other folds.
    """
    impressions = impressions.reset_index(drop=True)
    user = impressions["user_id"].to_numpy(np.int64)
    expl = features.explanation_codes(impressions["explanation_id"].to_numpy())
    kind = features.explanations["kind"].map({k: i for i, k in enumerate(EXPLANATION_KINDS)}).to_numpy(np.int64)[expl]
    shelf = impressions["shelf"].to_numpy(np.int64)
    pos = impressions["position"].to_numpy(np.int64)
    reward = impressions["reward"].to_numpy(np.float64)
    fold = page_folds(impressions["request_id"], folds)
    written = 0
    with open(path, "w") as fh:
        for k in range(folds):
            source = train & (fold != k)
            f = features.with_user_kind(response_table(user[source], kind[source], shelf[source], pos[source],
                                                       reward[source]))
            target = np.nonzero(train & (fold == k))[0]
            for lo in range(0, len(target), chunk):
                r = target[lo: lo + chunk]
                has = sets.other_item[r] != EMPTY
                n_act = 1 + has.sum(axis=1)
                ex = np.repeat(np.arange(len(r)), n_act)
                first = np.concatenate([[0], np.cumsum(n_act)[:-1]])
                items = np.concatenate([impressions["item_id"].to_numpy(np.int64)[r][:, None], sets.other_item[r]], 1)
                expls = np.concatenate([expl[r][:, None], sets.other_explanation[r]], 1)
                keep = np.concatenate([np.ones((len(r), 1), bool), has], 1)
                cands = CandidateSet(ex, items[keep], expls[keep], len(r), np.ones(int(n_act.sum()), bool))
                ctx = impressions.loc[r, list(CONTEXT_COLUMNS)].reset_index(drop=True)
                rows = assemble_rows(f, ctx, cands, shelf[r][ex], pos[r][ex])
                labels = np.full(len(ex), "", dtype=object)
                labels[first] = cb_labels(0.0 - reward[r], sets.probability[r]).to_pylist()
                fh.write(example_text(shared_lines(rows[first], user[r]),
                                      action_lines(rows, items[keep], expls[keep], pa.array(labels, pa.string())),
                                      n_act))
                written += len(r)
    return written


# ---------------------------------------------------------------------- VW model and scorer
def train_vw(path: Path, cb_type: str, epsilon: float, extra: str = VW_ARGS) -> vowpalwabbit.Workspace:
    """One online pass of ``--cb_explore_adf`` (ε-greedy) over the examples file."""
    if cb_type not in ("ips", "dr"):
        raise ValueError(f"cb_type must be 'ips' or 'dr', got {cb_type!r}")
    return vowpalwabbit.Workspace(f"--cb_explore_adf --epsilon {epsilon} --cb_type {cb_type} {extra} "
                                  f"-d {path} --quiet")


class VWScorer:
    """Page-policy scorer: −VW's predicted cost of each candidate at the reference slot (0, 0)."""

    def __init__(self, workspace: vowpalwabbit.Workspace, features: Features) -> None:
        self.workspace = workspace
        self.features = features

    def __call__(self, contexts: pd.DataFrame, candidates: CandidateSet) -> np.ndarray:
        out = np.zeros(len(candidates))
        if not len(candidates):
            return out
        rows = assemble_rows(self.features, contexts, candidates, 0, 0)
        off = candidates.offsets
        nonempty = np.nonzero(np.diff(off) > 0)[0]
        shared = shared_lines(rows[off[nonempty]], contexts["user_id"].to_numpy(np.int64)[nonempty]).to_pylist()
        actions = action_lines(rows, candidates.item_id, candidates.explanation).to_pylist()
        ws = self.workspace
        for line, b in zip(shared, nonempty):
            exs = ws.parse([line, *actions[off[b]: off[b + 1]]], vowpalwabbit.LabelType.CONTEXTUAL_BANDIT)
            ws.predict(exs)
            out[off[b]: off[b + 1]] = [-e.get_partial_prediction() for e in exs[1:]]
            ws.finish_example(exs)
        return out


# ---------------------------------------------------------------------- benchmark
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--contexts", type=int, default=2000)
    ap.add_argument("--others", type=int, default=3, help="other remaining pairs per VW example")
    ap.add_argument("--vw-args", default=VW_ARGS, help="VW options besides --cb_explore_adf/--epsilon/--cb_type")
    args = ap.parse_args()
    t_start = time.perf_counter()
    s = setup(max(args.sizes), args.contexts)
    params, world, data = s.params, s.world, s.data
    pol, seed = params.policy, params.seed
    rp = params.reward
    greedy = replace(pol, epsilon_head=0.0, epsilon_fill=0.0)
    only_weighted = replace(params, reward=replace(rp, baselines=()))
    quality, speed = [], []
    for n in args.sizes:
        imp = first_impressions(data.impressions, n)
        t0 = time.perf_counter()
        f = s.snapshot(imp)
        t_feat = time.perf_counter() - t0
        model = train_reward_models(f, imp, only_weighted).model
        t_bartops = time.perf_counter() - t0
        v_bartops, _ = true_value(world, candidate_policy(model, f, greedy), s.contexts, s.candidates)
        print(f"{len(imp):,}: bartops trained in {t_bartops:.0f} s", flush=True)

        t0 = time.perf_counter()
        train = time_split(imp["timestamp"], rp.validation_fraction)
        sets = sample_action_sets(data.candidates, imp, f.explanation_codes(imp["explanation_id"].to_numpy()),
                                  pol["shelves"], pol["cards"], args.others, seed)
        with tempfile.TemporaryDirectory(prefix="vw-peer-") as tmp:
            path = Path(tmp) / "train.vw"
            n_examples = write_examples(path, f, imp, train, rp.response_folds, sets)
            t_examples = time.perf_counter() - t0
            mib = path.stat().st_size / 2**20
            print(f"{len(imp):,}: {n_examples:,} VW examples ({mib:,.0f} MiB) in {t_examples:.0f} s", flush=True)
            row = {"impressions": len(imp), "logging": s.logging_value / s.oracle_value,
                   "bartops xgboost-weighted": v_bartops / s.oracle_value}
            times = {"impressions": len(imp), "bartops features + training s": t_bartops,
                     "  of which features s": t_feat, "VW examples s": t_examples}
            for cb_type in ("ips", "dr"):
                t0 = time.perf_counter()
                ws = train_vw(path, cb_type, pol["epsilon_fill"], args.vw_args)
                times[f"VW-{cb_type} learning s"] = time.perf_counter() - t0
                v, _ = true_value(world, PagePolicy(VWScorer(ws, f), pol["shelves"], pol["cards"], 0.0, 0.0),
                                  s.contexts, s.candidates)
                ws.finish()
                row[f"VW-{cb_type}"] = v / s.oracle_value
                print(f"{len(imp):,}: VW-{cb_type} learned in {times[f'VW-{cb_type} learning s']:.0f} s, "
                      f"value/oracle {row[f'VW-{cb_type}']:.3f}", flush=True)
        quality.append(row)
        speed.append(times)

    print(f"\npolicy quality: true value / oracle ({s.oracle_value:.3f} streams per page) of each greedy "
          f"(ε = 0) page policy on {args.contexts:,} fixed contexts; logging = the ε-greedy logging policy")
    print(table(quality))
    print("\ntraining wall time (s), 2 cores")
    print(table(speed))
    verdict = []
    for row in quality:
        best_vw = max(row["VW-ips"], row["VW-dr"])
        gap = row["bartops xgboost-weighted"] - best_vw
        verdict.append(f"{row['impressions']:,}: bartops {'wins' if gap > 0 else 'does NOT win'} by "
                       f"{gap:+.3f} of the oracle's value over the better VW")
    print("\n" + "\n".join(verdict))
    if any(r["bartops xgboost-weighted"] <= max(r["VW-ips"], r["VW-dr"]) for r in quality):
        print("where VW is ahead: both learners see the same features, so the difference is the model class "
              "(a hashed linear model with interactions vs. depth-4 trees) and the training objective "
              "(VW regresses IPS/DR cost estimates; bartops fits weighted log loss); see the docstring.")
    print(f"\nVW: --cb_explore_adf --epsilon {pol['epsilon_fill']} --cb_type ips|dr {args.vw_args}; "
          f"{args.others} sampled other actions per example; total wall {time.perf_counter() - t_start:.0f} s")
    print(f"saved {save('vw_peer', {'quality': quality, 'speed': speed, 'oracle_value': s.oracle_value, 'logging_value': s.logging_value, 'contexts': args.contexts, 'others': args.others, 'vw_args': args.vw_args, 'vw_version': vowpalwabbit.__version__, 'verdict': verdict})}")


if __name__ == "__main__":
    main()
