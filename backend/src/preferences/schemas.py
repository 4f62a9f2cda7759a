from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from src.preferences.catalogue import EventType


class ChannelChoices(BaseModel):
    """Only the channels sent change; `null` drops the choice, so the next level applies again."""

    model_config = ConfigDict(extra="forbid")

    email: Literal["immediate", "digest", "off"] | None = None
    in_app: Literal["on", "off"] | None = None

    def sent(self) -> dict[str, str | None]:
        return {channel: getattr(self, channel) for channel in self.model_fields_set}


class DigestScheduleIO(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frequency: Literal["hourly", "daily"] = Field(
        "hourly", description="hourly: every EMAIL_DIGEST_SECONDS; daily: at `hour` in `timezone`"
    )
    hour: int = Field(9, ge=0, le=23)
    timezone: str = Field("UTC", max_length=64, description="an IANA time zone, e.g. Europe/Paris")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA time zone such as Europe/Paris") from None
        return value


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preferences: dict[EventType, ChannelChoices] = Field(default_factory=dict)
    digest: DigestScheduleIO | None = None


class OrgDefaultsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: dict[EventType, ChannelChoices]


class EventKindOut(BaseModel):
    type: str
    label: str
    description: str
    channels: dict[str, list[str]] = Field(description="the channels a preference can set, and their values")
    transactional: bool


class OrgPreferencesOut(BaseModel):
    org_id: int
    name: str
    preferences: dict[str, dict[str, dict[str, str]]] = Field(
        description="event type -> channel -> {value, source}; source: user, organization or default"
    )


class PreferencesOut(BaseModel):
    catalogue: list[EventKindOut]
    choices: dict[str, dict[str, str]] = Field(description="the user's own choices")
    digest: DigestScheduleIO
    organizations: list[OrgPreferencesOut]


class OrgDefaultsOut(BaseModel):
    org_id: int
    catalogue: list[EventKindOut]
    defaults: dict[str, dict[str, dict[str, str]]] = Field(description="source: organization or default")


class UnsubscribeOut(BaseModel):
    detail: str
    email: dict[str, Any] = Field(description="the email choices now in force for the types changed")
