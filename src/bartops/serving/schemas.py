"""Request and response models of the home-page service (pydantic; invalid input → 4xx naming the field).

A page-view ``timestamp`` must lie in the window the batch validation accepts: not later than the
server's clock + ``validation.window.future_skew_seconds`` (300 s) and not earlier than the clock −
``validation.window.max_span_days`` (8 days) nor ``validation.window.not_before``; otherwise the
request is refused naming ``timestamp`` and the allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from bartops.config import WindowRules
from bartops.context import PLATFORMS, REGIONS

MAX_SHELVES = 12  # absurd page sizes are rejected before any work is done
MAX_CARDS = 20
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"

Platform = Literal[PLATFORMS]  # type: ignore[valid-type]
Region = Literal[REGIONS]  # type: ignore[valid-type]


@dataclass(frozen=True)
class TimestampWindow:
    """Accepted page-view timestamps, relative to the server's clock."""

    future_skew: timedelta = timedelta(seconds=300)
    max_age: timedelta = timedelta(days=8)
    not_before: datetime = datetime(2020, 1, 1, tzinfo=timezone.utc)

    @staticmethod
    def from_rules(rules: WindowRules) -> "TimestampWindow":
        """The window of ``params.validation.window``."""
        not_before = _utc(datetime.fromisoformat(str(rules.not_before).replace("Z", "+00:00")))
        return TimestampWindow(timedelta(seconds=float(rules.future_skew_seconds)),
                               timedelta(days=float(rules.max_span_days)), not_before)

    def bounds(self, now: datetime) -> tuple[datetime, datetime]:
        """(earliest, latest) accepted timestamp at ``now``."""
        now = _utc(now)
        return max(now - self.max_age, self.not_before), now + self.future_skew


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


@lru_cache(maxsize=1)
def served_timestamp_window() -> TimestampWindow:
    """The window of the params file the service reads (``$BARTOPS_PARAMS`` or ./params.yaml; defaults without one)."""
    from bartops.config import load_params_or_defaults

    return TimestampWindow.from_rules(load_params_or_defaults().validation.window)


def check_timestamp(ts: datetime, now: datetime, window: TimestampWindow) -> datetime:
    """``ts`` as UTC if it lies in the window at ``now``; else ValueError naming the allowed range."""
    ts = _utc(ts)
    lo, hi = window.bounds(now)
    if not lo <= ts <= hi:
        raise ValueError(f"timestamp {ts.isoformat()} is outside the accepted range "
                         f"[{lo.isoformat(timespec='seconds')}, {hi.isoformat(timespec='seconds')}] (server clock "
                         f"− {window.max_age.total_seconds() / 86400:g} days … + {window.future_skew.total_seconds():g} s; "
                         f"omit it to use the server's clock)")
    return ts


class HomeRequest(BaseModel):
    """A home-page request.  Unknown users get a cold-start page; ``seed`` fixes the page's randomness."""

    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(strict=True, ge=0, le=2**62, description="user id (unknown ids get a cold-start page)")
    platform: Platform
    region: Region
    timestamp: Optional[datetime] = Field(None, description="UTC page-view time; default: now (give one only to replay)")
    shelves: Optional[int] = Field(None, strict=True, ge=1, le=MAX_SHELVES, description="default: the policy's")
    cards_per_shelf: Optional[int] = Field(None, strict=True, ge=1, le=MAX_CARDS, description="default: the policy's")
    seed: Optional[int] = Field(None, strict=True, ge=0, le=2**63 - 1, description="fixes the ε draws (default: random)")

    @field_validator("timestamp")
    @classmethod
    def _timestamp_in_window(cls, v: Optional[datetime], info: ValidationInfo) -> Optional[datetime]:
        """Refuse page-view times the join and the batch validation could not use (context ``now`` for tests)."""
        if v is None:
            return v
        ctx = info.context or {}
        return check_timestamp(v, ctx.get("now") or datetime.now(timezone.utc),
                               ctx.get("window") or served_timestamp_window())


class Card(BaseModel):
    item_id: int
    name: str
    artist: str
    score: float = Field(description="predicted P(stream) at the top slot")
    propensity: float = Field(description="P(this card at this slot | context, cards chosen before it)")
    explored: bool = Field(description="the ε branch chose this card")


class Shelf(BaseModel):
    title: str
    explanation_id: str
    cards: list[Card]


class Epsilon(BaseModel):
    head: float
    fill: float


class HomePageResponse(BaseModel):
    request_id: str
    policy_version: str
    epsilon: Epsilon
    seed: int
    cold_start: bool
    timestamp: datetime
    shelves: list[Shelf]


class FeedbackRequest(BaseModel):
    """Whether the user streamed a card of a served page (and for how long)."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    item_id: int = Field(strict=True, ge=0, le=2**62)
    streamed: bool = Field(strict=True)
    seconds: Optional[float] = Field(None, ge=0, le=86_400)


class FeedbackResponse(BaseModel):
    accepted: bool
    request_id: str
    item_id: int
