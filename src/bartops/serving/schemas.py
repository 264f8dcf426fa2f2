"""Request and response models of the home-page service (pydantic; invalid input → 4xx naming the field)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from bartops.context import PLATFORMS, REGIONS

MAX_SHELVES = 12  # absurd page sizes are rejected before any work is done
MAX_CARDS = 20
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"

Platform = Literal[PLATFORMS]  # type: ignore[valid-type]
Region = Literal[REGIONS]  # type: ignore[valid-type]


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
