"""Custom Great Expectations expectations for bandit logs (imports GX: load lazily).

* ``expect_column_values_to_be_known_to_catalog`` — every value appears in a catalog table
  (parquet path + column), e.g. impressions' item_id in items.parquet; a referential check whose
  catalog is read once per file version, not written into the suite.
* ``expect_page_slots_to_be_contiguous`` — within a page (request_id) the shelves are 0..S'-1 and
  within each shelf the positions are 0..k-1, each slot once: the page construction fills slots
  in order, so a gap or a repeat means lost or duplicated cards.  A row fails when its page does.
* ``expect_explored_share_to_match_epsilon`` — the explored flags are independent Bernoulli(ε_i)
  draws, so their count has mean Σε_i and variance Σε_i(1−ε_i); the check passes when the observed
  count lies within ``z`` standard deviations (``z`` derived from a false-alarm rate).
* ``expect_column_values_to_not_be_in_store`` — the value (impression_id, request_id) is not in
  an already accepted batch of the store (``store_path``, less the batch's own files ``store_exclude``).
* ``expect_rewards_to_agree_with_store`` — (impression_id, reward): an impression already accepted
  with another reward is a contradiction (the same card, two outcomes).
* ``expect_explored_to_match_propensity`` — (explored, propensity, epsilon) possible under the
  ε-greedy page policy (``checks.explored_matches_propensity``).
* ``expect_single_choice_only_where_possible`` — (request_id, shelf, position, propensity, epsilon):
  a propensity that says one choice was left only where one can have been (``checks.single_choice_possible``).
* ``expect_column_values_to_be_constant_within_page`` — (request_id, column): every card of a page
  holds the same user_id / timestamp / platform / region / policy_version (``checks.constant_within_page``).
* ``expect_stream_seconds_only_when_streamed`` — (reward, stream_seconds): no stream duration on a
  card whose reward is 0.
* ``expect_column_values_to_not_be_empty_text`` — no present value is ``""`` (an id that names nothing).
* ``expect_column_value_lengths_to_be_at_most`` — text no longer than ``max_value`` characters; reports
  the longest length and a few rows (row, length, first characters), never the whole value.

The pandas implementations are vectorised (numpy / pandas group-by on integer codes).
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional, Tuple, Union

import numpy as np
import pandas as pd
from great_expectations.core.metric_domain_types import MetricDomainTypes
from great_expectations.core.suite_parameters import SuiteParameterDict
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import (
    BatchExpectation,
    ColumnMapExpectation,
    MulticolumnMapExpectation,
)
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    MulticolumnMapMetricProvider,
)
from great_expectations.expectations.metrics.map_metric_provider.column_condition_partial import (
    column_condition_partial,
)
from great_expectations.expectations.metrics.map_metric_provider.multicolumn_condition_partial import (
    multicolumn_condition_partial,
)
from great_expectations.expectations.metrics.metric_provider import metric_value
from great_expectations.expectations.metrics.table_metric_provider import TableMetricProvider

from bartops.validation.checks import (
    already_accepted,
    constant_within_page,
    contradicts_store,
    dtype_kind_matches,
    empty_values,
    explored_matches_propensity,
    explored_share_stats,
    known_to_catalog,
    long_values,
    page_slots_contiguous,
    single_choice_possible,
    stream_seconds_only_when_streamed,
)


# ---------------------------------------------------------------------------- metrics
class ColumnValuesKnownToCatalog(ColumnMapMetricProvider):
    condition_metric_name = "column_values.bartops_known_to_catalog"
    condition_value_keys = ("catalog_path", "catalog_column")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, catalog_path, catalog_column, **kwargs):
        return known_to_catalog(column, catalog_path, catalog_column)


class PageSlotsContiguous(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.bartops_page_slots_contiguous"
    condition_domain_keys = ("batch_id", "table", "column_list", "row_condition", "condition_parser",
                             "ignore_row_if")

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        req, shelf, pos = column_list.columns
        ok = page_slots_contiguous(column_list[req], column_list[shelf], column_list[pos])
        return pd.Series(ok, index=column_list.index)


class ColumnValuesNotInStore(ColumnMapMetricProvider):
    condition_metric_name = "column_values.bartops_not_in_store"
    condition_value_keys = ("store_path", "store_exclude", "store_column")

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column, store_path, store_exclude, store_column, **kwargs):
        return pd.Series(~already_accepted(column, store_path, store_exclude, store_column), index=column.index)


_MULTI_KEYS = ("batch_id", "table", "column_list", "row_condition", "condition_parser", "ignore_row_if")


class RewardsAgreeWithStore(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.bartops_rewards_agree_with_store"
    condition_domain_keys = _MULTI_KEYS
    condition_value_keys = ("store_path", "store_exclude")

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, store_path, store_exclude, **kwargs):
        ids, reward = column_list.columns
        bad = contradicts_store(column_list[ids], column_list[reward], store_path, store_exclude)
        return pd.Series(~bad, index=column_list.index)


class ExploredMatchesPropensity(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.bartops_explored_matches_propensity"
    condition_domain_keys = _MULTI_KEYS

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        x, p, e = column_list.columns
        ok = explored_matches_propensity(column_list[x], column_list[p], column_list[e])
        return pd.Series(ok, index=column_list.index)


class SingleChoicePossible(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.bartops_single_choice_possible"
    condition_domain_keys = _MULTI_KEYS

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        ok = single_choice_possible(*(column_list[c] for c in column_list.columns))
        return pd.Series(ok, index=column_list.index)


class ConstantWithinPage(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.bartops_constant_within_page"
    condition_domain_keys = _MULTI_KEYS

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        req, col = column_list.columns
        return pd.Series(constant_within_page(column_list[req], column_list[col]), index=column_list.index)


class StreamSecondsOnlyWhenStreamed(MulticolumnMapMetricProvider):
    condition_metric_name = "multicolumn_values.bartops_stream_seconds_only_when_streamed"
    condition_domain_keys = _MULTI_KEYS

    @multicolumn_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_list, **kwargs):
        reward, seconds = column_list.columns
        ok = stream_seconds_only_when_streamed(column_list[reward], column_list[seconds])
        return pd.Series(ok, index=column_list.index)


class ColumnLongValues(TableMetricProvider):
    metric_name = "table.bartops_long_values"
    value_keys = ("column", "max_value")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(domain_kwargs=metric_domain_kwargs,
                                                       domain_type=MetricDomainTypes.TABLE)
        col = metric_value_kwargs["column"]
        if col not in df.columns:
            return {"max_length": 0, "over": 0, "rows": len(df), "examples": []}
        return long_values(df[col], int(metric_value_kwargs["max_value"]))


class ColumnEmptyValues(TableMetricProvider):
    metric_name = "table.bartops_empty_values"
    value_keys = ("column",)

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(domain_kwargs=metric_domain_kwargs,
                                                       domain_type=MetricDomainTypes.TABLE)
        col = metric_value_kwargs["column"]
        if col not in df.columns:
            return {"empty": 0, "rows": len(df), "examples": []}
        return empty_values(df[col])


class ExploredShareStats(TableMetricProvider):
    metric_name = "table.bartops_explored_share"
    value_keys = ("explored_column", "epsilon_column")

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(domain_kwargs=metric_domain_kwargs,
                                                       domain_type=MetricDomainTypes.TABLE)
        return explored_share_stats(df[metric_value_kwargs["explored_column"]],
                                    df[metric_value_kwargs["epsilon_column"]])


class ColumnDtypeName(TableMetricProvider):
    metric_name = "table.bartops_column_dtype"
    value_keys = ("column",)

    @metric_value(engine=PandasExecutionEngine)
    def _pandas(cls, execution_engine, metric_domain_kwargs, metric_value_kwargs, metrics, runtime_configuration):
        df, _, _ = execution_engine.get_compute_domain(domain_kwargs=metric_domain_kwargs,
                                                       domain_type=MetricDomainTypes.TABLE)
        col = metric_value_kwargs["column"]
        return df[col].dtype if col in df.columns else None


# ---------------------------------------------------------------------------- expectations
class ExpectColumnToHaveSchemaKind(BatchExpectation):
    """Expect the column's dtype to hold the schema kind: string, int64, float64, bool or utc (tz-aware UTC).

    GX's type-list expectation compares exact dtype objects, which cannot say "any text dtype" or
    "timezone-aware UTC timestamps"; this asks pandas.
    """

    column: str
    kind: str

    metric_dependencies = ("table.bartops_column_dtype",)
    domain_keys: ClassVar[Tuple[str, ...]] = ("row_condition", "condition_parser")
    success_keys = ("column", "kind")
    args_keys = ("column", "kind")

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None,
                  execution_engine: Any = None) -> dict:
        dtype = metrics["table.bartops_column_dtype"]
        kind = self._get_success_kwargs()["kind"]
        ok = dtype is not None and dtype_kind_matches(dtype, kind)
        return {"success": bool(ok), "result": {"observed_value": None if dtype is None else str(dtype),
                                                "details": {"expected_kind": kind}}}


class ExpectColumnValuesToBeKnownToCatalog(ColumnMapExpectation):
    """Expect every value of the column to appear in ``catalog_column`` of the parquet ``catalog_path``."""

    catalog_path: Union[str, SuiteParameterDict]
    catalog_column: Union[str, SuiteParameterDict]

    map_metric = "column_values.bartops_known_to_catalog"
    success_keys = ("mostly", "catalog_path", "catalog_column")
    args_keys = ("column", "catalog_path", "catalog_column")


class ExpectPageSlotsToBeContiguous(MulticolumnMapExpectation):
    """Expect each page's slots (column_list = request, shelf, position) to be contiguous from 0."""

    map_metric = "multicolumn_values.bartops_page_slots_contiguous"
    success_keys = ("mostly",)
    args_keys = ("column_list",)


class ExpectExploredShareToMatchEpsilon(BatchExpectation):
    """Expect the count of explored cards within ``z`` binomial standard deviations of Σε."""

    explored_column: str = "explored"
    epsilon_column: str = "epsilon"
    z: Union[float, SuiteParameterDict] = 5.0

    metric_dependencies = ("table.bartops_explored_share",)
    domain_keys: ClassVar[Tuple[str, ...]] = ("row_condition", "condition_parser")
    success_keys = ("explored_column", "epsilon_column", "z")
    args_keys = ("explored_column", "epsilon_column", "z")

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None,
                  execution_engine: Any = None) -> dict:
        s = metrics["table.bartops_explored_share"]
        z = float(self._get_success_kwargs()["z"])
        sd = float(np.sqrt(s["variance"]))
        deviation = s["observed"] - s["expected"]
        tolerance = z * sd
        rows = max(s["rows"], 1)
        return {
            "success": bool(abs(deviation) <= tolerance + 1e-9),
            "result": {"observed_value": s["observed"] / rows,
                       "details": {"explored": s["observed"], "expected_explored": round(s["expected"], 3),
                                   "expected_share": s["expected"] / rows, "sd": sd, "z": z,
                                   "deviation_sd": deviation / sd if sd > 0 else (0.0 if deviation == 0 else float("inf")),
                                   "tolerance": tolerance, "rows": s["rows"]}},
        }


class ExpectColumnValuesToNotBeInStore(ColumnMapExpectation):
    """Expect no value of the column (impression_id or request_id) in an already accepted batch."""

    store_path: Union[str, SuiteParameterDict]
    store_exclude: Union[str, SuiteParameterDict] = ""
    store_column: str

    map_metric = "column_values.bartops_not_in_store"
    success_keys = ("mostly", "store_path", "store_exclude", "store_column")
    args_keys = ("column", "store_path", "store_exclude", "store_column")


class ExpectRewardsToAgreeWithStore(MulticolumnMapExpectation):
    """Expect no impression (column_list = impression_id, reward) accepted before with another reward."""

    store_path: Union[str, SuiteParameterDict]
    store_exclude: Union[str, SuiteParameterDict] = ""

    map_metric = "multicolumn_values.bartops_rewards_agree_with_store"
    success_keys = ("mostly", "store_path", "store_exclude")
    args_keys = ("column_list", "store_path", "store_exclude")


class ColumnListRule(MulticolumnMapExpectation):
    """A row rule over ``column_list`` with only ``mostly`` to tune (abstract: a subclass names its
    ``map_metric``)."""

    success_keys = ("mostly",)
    args_keys = ("column_list",)


class ExpectExploredToMatchPropensity(ColumnListRule):
    """Expect (explored, propensity, epsilon) that the ε-greedy page policy can log."""

    map_metric = "multicolumn_values.bartops_explored_matches_propensity"


class ExpectSingleChoiceOnlyWherePossible(ColumnListRule):
    """Expect p = 1 under ε > 0 (one choice left) only at a shelf's last card or the last shelf's head."""

    map_metric = "multicolumn_values.bartops_single_choice_possible"


class ExpectColumnValuesToBeConstantWithinPage(ColumnListRule):
    """Expect one value of the second column per page (column_list = request_id, column)."""

    map_metric = "multicolumn_values.bartops_constant_within_page"


class ExpectStreamSecondsOnlyWhenStreamed(ColumnListRule):
    """Expect no stream duration on a card that was not streamed (column_list = reward, stream_seconds)."""

    map_metric = "multicolumn_values.bartops_stream_seconds_only_when_streamed"


class ExpectColumnValueLengthsToBeAtMost(BatchExpectation):
    """Expect every text value of the column to have at most ``max_value`` characters."""

    column: str
    max_value: Union[int, SuiteParameterDict]

    metric_dependencies = ("table.bartops_long_values",)
    domain_keys: ClassVar[Tuple[str, ...]] = ("row_condition", "condition_parser")
    success_keys = ("column", "max_value")
    args_keys = ("column", "max_value")

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None,
                  execution_engine: Any = None) -> dict:
        s = metrics["table.bartops_long_values"]
        return {"success": s["over"] == 0,
                "result": {"observed_value": s["max_length"],
                           "details": {"longest": s["max_length"], "rows_over": s["over"], "rows": s["rows"]},
                           "partial_unexpected_list": s["examples"]}}


class ExpectColumnValuesToNotBeEmptyText(BatchExpectation):
    """Expect no present value of the column to be the empty string."""

    column: str

    metric_dependencies = ("table.bartops_empty_values",)
    domain_keys: ClassVar[Tuple[str, ...]] = ("row_condition", "condition_parser")
    success_keys = ("column",)
    args_keys = ("column",)

    def _validate(self, metrics: Dict, runtime_configuration: Optional[dict] = None,
                  execution_engine: Any = None) -> dict:
        s = metrics["table.bartops_empty_values"]
        return {"success": s["empty"] == 0,
                "result": {"observed_value": s["empty"], "details": {"empty": s["empty"], "rows": s["rows"]},
                           "partial_unexpected_list": s["examples"]}}


CUSTOM = (ExpectColumnToHaveSchemaKind, ExpectColumnValuesToBeKnownToCatalog, ExpectPageSlotsToBeContiguous,
          ExpectExploredShareToMatchEpsilon, ExpectColumnValuesToNotBeInStore, ExpectRewardsToAgreeWithStore,
          ExpectExploredToMatchPropensity, ExpectSingleChoiceOnlyWherePossible, ExpectColumnValueLengthsToBeAtMost,
          ExpectColumnValuesToBeConstantWithinPage, ExpectStreamSecondsOnlyWhenStreamed, ExpectColumnValuesToNotBeEmptyText)
