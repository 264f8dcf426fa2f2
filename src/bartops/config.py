"""The one typed configuration: ``params.yaml`` read once into ``Params``, a root of typed sections.

Every step takes ``Params`` (or the one section it needs); each section's code defaults equal
``params.yaml`` (``tests/unit/test_params_defaults.py``), so a library call without the file behaves as
the pipeline does.  ``load_params`` validates the whole file before any step runs: an unknown key, a
missing section or a value out of range is a ``ValueError`` naming the key (``reward.clip``), what was
found and what is allowed.  DVC reads the same file for its stages' ``params:``.
"""

from __future__ import annotations

import difflib
import math
import os
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import pandas as pd
import yaml

from bartops.context import GENRES, MOODS

PARAMS_ENV = "BARTOPS_PARAMS"
BASELINES = ("xgboost-unweighted", "logistic", "popularity")  # reward.baselines: comparison models
ESTIMATORS = ("ips", "snips", "dr")  # gate.estimator
BACKENDS = ("local", "dask")  # scale.backend


def params_path(path: str | Path | None = None) -> Path:
    """The params file: the argument, else $BARTOPS_PARAMS, else ./params.yaml."""
    return Path(path or os.environ.get(PARAMS_ENV) or "params.yaml")


def read_params_file(path: str | Path | None = None) -> dict[str, Any]:
    """The parsed YAML mapping of the params file (not yet validated); raises naming the file."""
    p = params_path(path)
    if not p.exists():
        raise FileNotFoundError(f"params file {p} not found (set {PARAMS_ENV} or run from the project root)")
    with open(p, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"params file {p} must hold a mapping, got {type(data).__name__}")
    return data


class ParamsError(ValueError):
    """The params file is invalid; the message names the file, the key and the fix."""


def load_params(path: str | Path | None = None) -> "Params":
    """``Params`` of the params file (see ``params_path``), validated; ``ParamsError`` names the file and the key."""
    p = params_path(path)
    try:
        return Params.from_mapping(read_params_file(p))
    except ValueError as exc:
        raise ParamsError(f"{p}: {exc}") from exc


def load_params_or_defaults(path: str | Path | None = None) -> "Params":
    """``load_params`` when the params file exists, else the defaults (a service or a tool run outside a
    project); a file that exists but is invalid still raises."""
    return load_params(path) if params_path(path).exists() else Params()


def reject_unknown(cls: type, values: Mapping[str, Any], section: str) -> None:
    """Raise a ``ValueError`` naming the keys of ``values`` that are not fields of the dataclass ``cls``
    (``section``: where they were found, e.g. ``"gate"``), with the closest known key as the fix."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        hints = [f"'{k}' (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(k, known, n=1)) else f"'{k}'"
                 for k in unknown]
        raise ValueError(f"unknown key(s) {', '.join(hints)} in '{section}:'; known keys: {sorted(known)}")


def _mapping(values: Any, section: str) -> Mapping[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ValueError(f"'{section}:' must be a mapping of keys to values, got {values!r}")
    return values


def _construct(cls: type, values: Mapping[str, Any], section: str) -> Any:
    try:
        return cls(**values)
    except TypeError as exc:  # a value of the wrong type that the checks compare or convert
        raise ValueError(f"'{section}:' holds a value of the wrong type ({exc}); values: {dict(values)!r}") from exc


def build_section(cls: type, values: Mapping[str, Any] | None, section: str) -> Any:
    """The dataclass ``cls`` from a mapping (missing keys take the defaults; nested sections recursively);
    unknown keys and values out of range raise ``ValueError`` naming ``section.key``."""
    values = _mapping(values, section)
    reject_unknown(cls, values, section)
    hints = typing.get_type_hints(cls)
    kwargs = {k: build_section(hints[k], v, f"{section}.{k}") if is_dataclass(hints[k]) else v
              for k, v in values.items()}
    return _construct(cls, kwargs, section)


def _positive_int(section: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ValueError(f"{section}.{name} must be a positive integer, got {value!r}")


def _rate(section: str, name: str, value: Any, low: float = 0.0, high: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not low <= value <= high:
        raise ValueError(f"{section}.{name} must lie in [{low}, {high}], got {value!r}")


class Section:
    """A typed section of ``params.yaml``: ``from_dict`` builds it from its mapping (``build_section``)."""

    section: ClassVar[str]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Any:
        return build_section(cls, values, cls.section)


@dataclass(frozen=True)
class Paths:
    """``params.yaml`` → ``paths:``: where every step reads and writes (relative to the project root)."""

    data: Path = Path("data")  # raw data, versioned by data.dvc
    incoming: Path = Path("data/incoming")  # new batches land here before validation
    impressions: Path = Path("build/impressions")  # validated impression batches (the training data)
    build: Path = Path("build")  # stage outputs (features, models, reports)
    quarantine: Path = Path("quarantine")  # rejected batches, whole and unchanged, beside their reports
    registry: Path = Path("registry")  # the file-based model registry
    serving_logs: Path = Path("serving-logs")  # impression and feedback files written by the service

    @staticmethod
    def from_dict(values: Mapping[str, Any] | None) -> "Paths":
        """The ``paths:`` section (missing keys take the defaults above); unknown keys raise naming them."""
        values = _mapping(values, "paths")
        reject_unknown(Paths, values, "paths")
        bad = sorted(k for k, v in values.items() if not isinstance(v, (str, os.PathLike)) or not str(v))
        if bad:
            raise ValueError(f"paths {bad} must be non-empty folder names")
        return Paths(**{k: Path(v) for k, v in values.items()})


@dataclass(frozen=True)
class SimParams(Section):
    """Sizes and effect strengths of the simulated world (``params.yaml`` → ``sim:``)."""

    section: ClassVar[str] = "sim"

    impressions: int = 200_000
    users: int = 4000
    artists: int = 400
    items: int = 6000
    genres: int = 12
    moods: int = 6
    history_plays_per_user: int = 60
    window_days: int = 7
    window_end: str = "2026-11-01T00:00:00Z"
    position_decay_shelf: float = 0.35
    position_decay_card: float = 0.25
    base_logit: float = -2.6
    taste_weight: float = 1.6
    popularity_weight: float = 0.35
    explanation_weight: float = 1.0
    context_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("impressions", "users", "artists", "items", "genres", "moods", "window_days"):
            _positive_int("sim", name, getattr(self, name))
        if self.history_plays_per_user < 1:
            raise ValueError(f"sim.history_plays_per_user must be at least 1, got {self.history_plays_per_user!r}")
        if self.genres > len(GENRES):
            raise ValueError(f"sim.genres must be at most {len(GENRES)}, got {self.genres}")
        if self.moods > len(MOODS):
            raise ValueError(f"sim.moods must be at most {len(MOODS)}, got {self.moods}")
        if self.artists > self.items:
            raise ValueError(f"sim.artists ({self.artists}) must not exceed sim.items ({self.items})")
        for name in ("position_decay_shelf", "position_decay_card"):
            if getattr(self, name) < 0:
                raise ValueError(f"sim.{name} must be non-negative, got {getattr(self, name)!r}")

    @property
    def window(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        end = pd.Timestamp(self.window_end)
        end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
        return end - pd.Timedelta(days=self.window_days), end


@dataclass(frozen=True)
class PolicyParams(Section):
    """``params.yaml`` → ``policy:``: the page's shape and the ε-greedy exploration of the logging policy."""

    section: ClassVar[str] = "policy"

    shelves: int = 6
    cards: int = 8  # per shelf
    epsilon_head: float = 0.1  # chance that a shelf's title is explored (uniform among the user's explanations)
    epsilon_fill: float = 0.1  # chance that a card is explored (uniform among the explanation's items)

    def __post_init__(self) -> None:
        _positive_int("policy", "shelves", self.shelves)
        _positive_int("policy", "cards", self.cards)
        _rate("policy", "epsilon_head", self.epsilon_head)
        _rate("policy", "epsilon_fill", self.epsilon_fill)


@dataclass(frozen=True)
class OpsParams(Section):
    """``params.yaml`` → ``ops:``: the embedded default's local services (``bartops up`` / ``bartops down``)."""

    section: ClassVar[str] = "ops"

    host: str = "127.0.0.1"
    prefect_port: int = 4200
    service_port: int = 3000
    dashboard_port: int = 8050
    run_dir: Path = Path("build/run")  # pid files and logs of the background services

    def __post_init__(self) -> None:
        for name in ("prefect_port", "service_port", "dashboard_port"):
            v = getattr(self, name)
            _positive_int("ops", name, v)
            if v > 65535:
                raise ValueError(f"ops.{name} must be a TCP port (1-65535), got {v!r}")
        if not str(self.host):
            raise ValueError("ops.host must not be empty")
        object.__setattr__(self, "run_dir", Path(self.run_dir))


@dataclass(frozen=True)
class WindowRules:
    """``validation.window``: accepted impression timestamps of a batch."""

    max_span_days: float = 8.0  # every timestamp within this span ending at the batch's latest one
    future_skew_seconds: float = 300.0  # later than now + this is "in the future"
    not_before: str = "2020-01-01T00:00:00Z"

    def __post_init__(self) -> None:
        for name in ("max_span_days", "future_skew_seconds"):
            if not isinstance(getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ValueError(f"validation.window.{name} must be a positive number, got {getattr(self, name)!r}")
        try:
            pd.Timestamp(str(self.not_before))
        except ValueError as exc:
            raise ValueError(f"validation.window.not_before must be an ISO time like 2020-01-01T00:00:00Z, "
                             f"got {self.not_before!r}") from exc


@dataclass(frozen=True)
class StreamRateRules:
    """``validation.stream_rate``: the drift check of a batch's stream rate against the accepted history."""

    reference: float | None = None  # optional fixed reference rate for the very first batch (None: no check)
    reference_rows: int = 100_000  # ... and the cards it was measured on
    min_reference_pages: int = 50  # accepted page views a version needs before its own history is the reference
    rel_tolerance: float = 0.5  # allowed relative drift before binomial noise
    alpha: float = 1e-6  # binomial noise allowance, two-sided false-alarm rate

    def __post_init__(self) -> None:
        if self.reference is not None:
            _rate("validation.stream_rate", "reference", self.reference)
        _positive_int("validation.stream_rate", "reference_rows", self.reference_rows)
        _positive_int("validation.stream_rate", "min_reference_pages", self.min_reference_pages)
        if not isinstance(self.rel_tolerance, (int, float)) or self.rel_tolerance < 0:
            raise ValueError(f"validation.stream_rate.rel_tolerance must be non-negative, got {self.rel_tolerance!r}")
        _rate("validation.stream_rate", "alpha", self.alpha, 0.0, 0.5)


@dataclass(frozen=True)
class RowSplitRules:
    """``validation.row_split``: split off the pages whose rows fail only row-level checks."""

    enabled: bool = True
    max_share: float = 0.01  # ... when they are at most this share of the batch

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"validation.row_split.enabled must be true or false, got {self.enabled!r}")
        _rate("validation.row_split", "max_share", self.max_share)


@dataclass(frozen=True)
class ValidationParams(Section):
    """``params.yaml`` → ``validation:``: the rules every incoming batch is checked against."""

    section: ClassVar[str] = "validation"

    window: WindowRules = field(default_factory=WindowRules)
    explored_share_alpha: float = 1e-6  # false-alarm rate of the explored-vs-ε check
    stream_rate: StreamRateRules = field(default_factory=StreamRateRules)
    row_split: RowSplitRules = field(default_factory=RowSplitRules)
    remove_accepted_source: bool = False  # delete an accepted batch from the incoming folder
    examples: int = 3  # example rows per failed expectation in reports

    def __post_init__(self) -> None:
        _rate("validation", "explored_share_alpha", self.explored_share_alpha, 0.0, 0.5)
        if not isinstance(self.remove_accepted_source, bool):
            raise ValueError(f"validation.remove_accepted_source must be true or false, "
                             f"got {self.remove_accepted_source!r}")
        _positive_int("validation", "examples", self.examples)


@dataclass(frozen=True)
class ServingConfig(Section):
    """Limits, log rotation and attribution settings of the service and the join step."""

    section: ClassVar[str] = "serving"

    log_dir: str = "serving-logs"
    log_rotate_rows: int = 20_000  # rows per log file before it is closed (flushed + fsynced)
    log_rotate_seconds: float = 15.0  # ... or once the file is this old, even when idle
    max_body_bytes: int = 8192  # larger request bodies get a 413
    attribution_window_seconds: float = 1800.0  # a stream counts if reported this soon after the page
    workers: int = 2  # BentoML API worker processes
    registry_poll_seconds: float = 1.0  # how often a service serving the registry looks for a new production
    max_in_flight: int = 4  # at most this many /home + /feedback requests held per worker; more get 503
    shed_target_ms: float = 50.0  # ... fewer while (held + 1) x the time a request costs now exceeds this
    retry_after_seconds: int = 1  # the Retry-After of that 503
    retire_joined: str = "archive"  # joined log files: archive (move to <log_dir>/archive/) | delete | keep

    def __post_init__(self) -> None:
        if self.retire_joined not in ("archive", "delete", "keep"):
            raise ValueError(f"serving.retire_joined must be archive, delete or keep, got {self.retire_joined!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("log_dir", "retire_joined") and not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"serving.{f.name} must be a positive number, got {v!r}")
            if f.name in ("max_in_flight", "retry_after_seconds") and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"serving.{f.name} must be a positive integer, got {v!r}")
        if not str(self.log_dir):
            raise ValueError("serving.log_dir must not be empty")


@dataclass(frozen=True)
class CandidateParams:
    """How many explanations of each kind a user gets and how many items each explanation holds."""

    top_artists: int = 3
    top_genres: int = 2
    top_moods: int = 2
    items_per_artist: int = 20
    items_per_genre: int = 45
    items_per_mood: int = 35
    items_per_region: int = 45
    items_new: int = 45
    new_release_days: int = 120


@dataclass(frozen=True)
class FeatureParams(Section):
    """``params.yaml`` → ``features:``."""

    section: ClassVar[str] = "features"

    half_life_days: float = 365.0
    embedding_dim: int = 8
    clusters: int = 24
    similar_items: int = 10
    response_prior: float = 2.0  # prior strength (expected streams) of the user × kind lift
    now: str | None = None  # cut-off for "new releases"; None = the day after the last play
    candidates: CandidateParams = field(default_factory=CandidateParams)

    def __post_init__(self) -> None:
        if not self.half_life_days > 0:
            raise ValueError(f"features.half_life_days must be positive, got {self.half_life_days!r}")
        if not self.response_prior > 0:
            raise ValueError(f"features.response_prior must be positive, got {self.response_prior!r}")
        for name in ("embedding_dim", "clusters", "similar_items"):
            _positive_int("features", name, getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "candidates"}
        out["candidates"] = {f.name: getattr(self.candidates, f.name) for f in fields(CandidateParams)}
        return out


@dataclass(frozen=True)
class RewardParams:
    """``params.yaml`` → ``reward:``."""

    weighting: str = "ips"  # "ips" (1/propensity) or "none"
    clip: float | None = 3.0  # largest sample weight; None = no clipping
    normalize: bool = True  # scale weights to mean 1
    validation_fraction: float = 0.2  # the latest share of page views, by time
    num_boost_round: int = 300
    xgboost: dict = field(default_factory=lambda: {
        "max_depth": 4, "eta": 0.02, "min_child_weight": 200, "subsample": 1.0, "lambda": 1.0,
    })
    baselines: tuple[str, ...] = BASELINES
    logistic_C: float = 1.0
    popularity_prior: float = 20.0
    ece_bins: int = 10
    response_folds: int = 5  # out-of-fold folds (by page view) of the logged-response features
    stack: str = "logistic"  # "logistic": trees fitted on top of a logistic regression's log-odds (base_margin)
    stack_rows: int = 200_000  # training rows (a seeded sample) the stacked logistic regression is fitted on
    baseline_rows: int | None = 1_000_000  # the comparison baselines fit on a seeded sample of at most this many rows

    def __post_init__(self) -> None:
        if self.weighting not in ("ips", "none"):
            raise ValueError(f"reward.weighting must be 'ips' or 'none', got {self.weighting!r}")
        if self.clip is not None and not self.clip >= 1:
            raise ValueError(f"reward.clip must be at least 1 (or null), got {self.clip!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"reward.validation_fraction must lie in (0, 1), got {self.validation_fraction!r}")
        if int(self.num_boost_round) != self.num_boost_round or self.num_boost_round < 1:
            raise ValueError(f"reward.num_boost_round must be a positive integer, got {self.num_boost_round!r}")
        if int(self.response_folds) != self.response_folds or self.response_folds < 2:
            raise ValueError(f"reward.response_folds must be an integer of at least 2, got {self.response_folds!r}")
        if self.stack not in ("logistic", "none"):
            raise ValueError(f"reward.stack must be 'logistic' or 'none', got {self.stack!r}")
        if int(self.stack_rows) != self.stack_rows or self.stack_rows < 100:
            raise ValueError(f"reward.stack_rows must be an integer of at least 100, got {self.stack_rows!r}")
        if self.baseline_rows is not None and (int(self.baseline_rows) != self.baseline_rows
                                               or self.baseline_rows < 100):
            raise ValueError(f"reward.baseline_rows must be an integer of at least 100 (or null), "
                             f"got {self.baseline_rows!r}")
        bad = sorted(set(self.baselines) - set(BASELINES))
        if bad:
            raise ValueError(f"unknown reward.baselines {bad}; choose from {list(BASELINES)}")

    @staticmethod
    def from_dict(values: Mapping[str, Any] | None) -> "RewardParams":
        values = dict(_mapping(values, "reward"))
        reject_unknown(RewardParams, values, "reward")
        if "xgboost" in values:
            values["xgboost"] = {**RewardParams().xgboost, **(values["xgboost"] or {})}
        if "baselines" in values:
            values["baselines"] = tuple(values["baselines"] or ())
        return _construct(RewardParams, values, "reward")

    def booster_params(self, seed: int) -> dict[str, Any]:
        return {"objective": "binary:logistic", "eval_metric": "logloss", "tree_method": "hist",
                "nthread": os.cpu_count() or 1, "seed": int(seed), **self.xgboost}


DR_INTERVALS = ("capped", "joined")


@dataclass(frozen=True)
class OPEConfig(Section):
    """``params.yaml`` → ``ope:``."""

    section: ClassVar[str] = "ope"

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    marginal_samples: int = 100  # Monte-Carlo pages for the logging policy's exposures E₀
    target_samples: int = 4  # sampled pages per context for a stochastic target (1 if greedy)
    clip: float | None = None  # optional weight cap of IPS and SNIPS
    dr_clip: float | None = 100.0  # weight cap of DR's correction term (see module docs)
    dr_interval: str = "capped"  # "capped": the capped DR's interval; "joined": ∪ the uncapped DR's (wider)
    folds: int = 2
    max_pages: int | None = None  # evaluate on a random subset of this many pages (None = all)
    holdout_only: bool = True  # evaluate a bundle only on logs after its training cut (validation_from)

    def __post_init__(self) -> None:
        for name in ("n_boot", "marginal_samples", "target_samples", "folds"):
            _positive_int("ope", name, getattr(self, name))
        if self.max_pages is not None and int(self.max_pages) < 1:
            raise ValueError(f"ope.max_pages must be positive or null, got {self.max_pages!r}")
        if self.dr_interval not in DR_INTERVALS:
            raise ValueError(f"ope.dr_interval must be one of {', '.join(DR_INTERVALS)}, got {self.dr_interval!r}")


@dataclass(frozen=True)
class GateParams(Section):
    """``params.yaml`` → ``gate:``: the promotion rules."""

    section: ClassVar[str] = "gate"

    estimator: str = "dr"
    margin: float = 0.0
    min_ess: float = 100.0
    max_ece: float = 0.05
    explanation_tolerance: float = 0.25
    min_support_share: float = 0.5
    require_validation: bool = True
    human_approval: bool = False
    approval_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"gate.estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        for name in ("min_ess", "max_ece", "explanation_tolerance", "approval_timeout_s", "min_support_share"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"gate.{name} must be non-negative, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ScaleSettings(Section):
    """``params.yaml`` → ``scale:`` (after the environment override)."""

    section: ClassVar[str] = "scale"

    backend: str = "local"
    scheduler: str | None = None  # None with backend dask = a LocalCluster
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "4GiB"  # per worker (LocalCluster only)
    partition_rows: int = 250_000  # target rows per page-aligned partition of the impression log

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"scale.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.scheduler is not None and "://" not in str(self.scheduler):
            raise ValueError(f"scale.scheduler must be an address like 'tcp://host:8786', got {self.scheduler!r}")
        for name in ("workers", "threads_per_worker", "partition_rows"):
            _positive_int("scale", name, getattr(self, name))

    @property
    def dask(self) -> bool:
        return self.backend == "dask"


@dataclass(frozen=True)
class Params:
    """The whole of ``params.yaml``: one typed section per step (``load_params`` reads it)."""

    seed: int = 7  # the simulator's and every seeded step's random seed
    sim: SimParams = field(default_factory=SimParams)
    policy: PolicyParams = field(default_factory=PolicyParams)
    paths: Paths = field(default_factory=Paths)
    ops: OpsParams = field(default_factory=OpsParams)
    validation: ValidationParams = field(default_factory=ValidationParams)
    serving: ServingConfig = field(default_factory=ServingConfig)
    features: FeatureParams = field(default_factory=FeatureParams)
    reward: RewardParams = field(default_factory=RewardParams)
    ope: OPEConfig = field(default_factory=OPEConfig)
    gate: GateParams = field(default_factory=GateParams)
    scale: ScaleSettings = field(default_factory=ScaleSettings)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @staticmethod
    def from_mapping(values: Mapping[str, Any] | None) -> "Params":
        """``Params`` from a parsed params file (missing sections and keys take the defaults).
        ``serving.log_dir`` is ``paths.serving_logs`` unless given."""
        values = _mapping(values, "params")
        reject_unknown(Params, values, "params.yaml")
        parsed: dict[str, Any] = {}
        for f in fields(Params):
            if f.name == "seed":
                if "seed" in values:
                    parsed["seed"] = values["seed"]
                continue
            section = SECTION_TYPES[f.name]
            raw = dict(_mapping(values.get(f.name), f.name))
            if f.name == "serving" and "log_dir" not in raw:
                raw["log_dir"] = str(parsed["paths"].serving_logs)
            parsed[f.name] = section.from_dict(raw)
        return Params(**parsed)


SECTION_TYPES: dict[str, Any] = {name: kind for name, kind in typing.get_type_hints(Params).items() if name != "seed"}
