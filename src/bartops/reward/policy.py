"""The candidate policy (the BaRT page policy with a reward model as scorer) and policy bundles.

A bundle directory holds ``model/`` (model.ubj + schema.json), ``features/`` (the shared-layer
snapshot), ``policy.json`` ({"version", "shelves", "cards", "epsilon_head", "epsilon_fill"}),
``metrics.json``, ``gate.json`` and ``lineage.json``.  ``write_policy_bundle`` creates one
atomically; ``load_policy_bundle`` turns one back into (PagePolicy, Features).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bartops.config import PolicyParams
from bartops.faults import crash_point
from bartops.features.store import Features, atomic_replace_dir, load_features
from bartops.leftovers import make_temp_dir, recover_leftovers
from bartops.policy.page import CandidateSet, PagePolicy
from bartops.reward.model import Predictor, load_model

REFERENCE_SHELF = 0
REFERENCE_POSITION = 0


class ModelScorer:
    """Scores candidates with a reward model at the reference slot (shelf 0, position 0)."""

    def __init__(self, model: Predictor, features: Features) -> None:
        self.model = model
        self.features = features

    def __call__(self, contexts: pd.DataFrame, candidates: CandidateSet) -> np.ndarray:
        return self.model.predict(self.features, contexts, candidates, REFERENCE_SHELF, REFERENCE_POSITION)


def model_scorer(model: Predictor, features: Features) -> Callable[[pd.DataFrame, CandidateSet], np.ndarray]:
    """A page-policy ``Scorer`` from a reward model and the snapshot it was trained with."""
    return ModelScorer(model, features)


def candidate_policy(model: Predictor, features: Features, policy: PolicyParams,
                     version: str = "candidate") -> PagePolicy:
    """``PagePolicy(model_scorer(model, features), …)`` with the shape and ε of ``policy``."""
    return PagePolicy(model_scorer(model, features), policy.shelves, policy.cards, policy.epsilon_head,
                      policy.epsilon_fill, version=version)


def code_version(root: Path | None = None) -> str:
    """The git commit of the code (read-only), or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_policy_bundle(model_dir: Path, features_dir: Path, policy: PolicyParams, out_dir: Path,
                        version: str, lineage: dict | None = None) -> Path:
    """Assemble a policy bundle in ``out_dir`` atomically (temp dir + rename); returns ``out_dir``.

    Checks that the model loads against this code's feature schema and that the snapshot is
    intact.  ``metrics.json`` is the model's training metrics; ``gate.json`` starts as
    ``{"decision": "pending"}`` until the gate records a decision.
    """
    model_dir, features_dir, out_dir = Path(model_dir), Path(features_dir), Path(out_dir)
    if not version or not str(version).strip():
        raise ValueError("bundle version must be a non-empty string")
    model = load_model(model_dir)  # raises on a missing model or another feature schema
    manifest_path = features_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"no feature snapshot in {features_dir} (manifest.json missing)")
    check_model_matches_features(model, load_features(features_dir))  # verifies every file, too
    manifest = json.loads(manifest_path.read_text())
    pol = {"version": str(version), **asdict(policy)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_leftovers(out_dir.parent)  # what a killed earlier step left beside it
    tmp = make_temp_dir(out_dir)
    try:
        shutil.copytree(model_dir, tmp / "model")
        crash_point(f"write-dir:{out_dir.name}:partial")
        shutil.copytree(features_dir, tmp / "features")
        (tmp / "policy.json").write_text(json.dumps(pol, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(model.metrics, indent=2))
        (tmp / "gate.json").write_text(json.dumps({"decision": "pending", "status": "pending"}, indent=2))  # GateDecision.pending()
        lin = {
            "version": str(version),
            "created": datetime.now(timezone.utc).isoformat(),
            "features_version": manifest.get("version"),
            "feature_schema_hash": model.params.get("feature_schema_hash"),
            "data_version": model.params.get("data_version"),
            "params": {"policy": pol, "reward": model.params, "features": manifest.get("params")},
            "code_version": code_version(),
            **(lineage or {}),
        }
        (tmp / "lineage.json").write_text(json.dumps(lin, indent=2, default=str))
        atomic_replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def check_model_matches_features(model: Any, features: Features) -> None:
    """ValueError if the model's logged-response definition (prior) differs from the snapshot's."""
    trained = (getattr(model, "params", None) or {}).get("response_prior")
    snap = features.params.get("response_prior")
    if trained is not None and snap is not None and float(trained) != float(snap):
        raise ValueError(f"model was trained with features.response_prior={trained} but the feature snapshot "
                         f"uses {snap}: rebuild the features or retrain")


def load_policy_bundle(bundle_dir: Path) -> tuple[PagePolicy, Features]:
    """(candidate PagePolicy, Features) from a bundle directory; clear errors for missing parts."""
    d = Path(bundle_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"policy bundle {d} does not exist")
    for part in ("model", "features", "policy.json"):
        if not (d / part).exists():
            raise FileNotFoundError(f"policy bundle {d} lacks {part}")
    pol = json.loads((d / "policy.json").read_text())
    features = load_features(d / "features")
    model = load_model(d / "model")
    check_model_matches_features(model, features)
    shape = {k: v for k, v in pol.items() if k != "version"}
    missing = sorted({f.name for f in fields(PolicyParams)} - set(shape))
    if missing:
        raise ValueError(f"{d / 'policy.json'} lacks {missing}")
    policy = candidate_policy(model, features, PolicyParams.from_dict(shape), version=str(pol.get("version", d.name)))
    return policy, features
