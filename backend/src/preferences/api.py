"""Preferences and organization defaults, for signed-in users under /api (task mutes are the tasks')."""

from fastapi import APIRouter
from sqlalchemy.orm import Session

from src.auth.deps import CurrentUser, DbSession
from src.errors import Invalid
from src.orgs.service import list_orgs, require_manager, require_member
from src.preferences import service
from src.preferences.catalogue import CATALOGUE, CHOICES
from src.preferences.schemas import (
    ChannelChoices,
    DigestScheduleIO,
    EventKindOut,
    OrgDefaultsIn,
    OrgDefaultsOut,
    OrgPreferencesOut,
    PreferencesIn,
    PreferencesOut,
)
from src.validation import PathId

router = APIRouter(tags=["preferences"])


def catalogue() -> list[EventKindOut]:
    return [
        EventKindOut(
            type=kind.type,
            label=kind.label,
            description=kind.description,
            channels={channel.value: list(CHOICES[channel]) for channel in kind.channels},
            transactional=kind.transactional,
        )
        for kind in CATALOGUE.values()
    ]


def _choices(body: dict[str, ChannelChoices]) -> service.Choices:
    """The choices sent, refusing a channel the event type does not have (422, nothing stored)."""
    choices = {}
    for event_type, channels in body.items():
        sent = channels.sent()
        offered = CATALOGUE[event_type].channels
        refused = sorted(set(sent) - set(offered))
        if refused:
            raise Invalid(
                f"{event_type} has no {', '.join(refused)} preference; it offers: "
                f"{', '.join(offered) or 'none (always delivered)'}"
            )
        choices[event_type] = sent
    return choices


def _preferences_out(session: Session, user: CurrentUser) -> PreferencesOut:
    own = service.user_choices(session, user.id)
    schedule = service.digest_schedule(session, user.id)
    return PreferencesOut(
        catalogue=catalogue(),
        choices=own,
        digest=DigestScheduleIO(frequency=schedule.frequency, hour=schedule.hour, timezone=schedule.timezone),
        organizations=[
            OrgPreferencesOut(
                org_id=org.id,
                name=org.name,
                preferences=service.effective(own, service.org_defaults(session, org.id)),
            )
            for org, _membership in list_orgs(session, user)
        ],
    )


@router.get("/me/preferences")
def my_preferences(user: CurrentUser, session: DbSession) -> PreferencesOut:
    """Your own choices, and what applies in each of your organizations and why."""
    return _preferences_out(session, user)


@router.put("/me/preferences")
def set_my_preferences(body: PreferencesIn, user: CurrentUser, session: DbSession) -> PreferencesOut:
    """Change some choices (the event types and channels sent) and the digest schedule, if sent."""
    choices = _choices(body.preferences)
    service.set_user_choices(session, user.id, choices)
    if body.digest is not None:
        service.set_digest_schedule(session, user.id, **body.digest.model_dump())
    session.commit()
    return _preferences_out(session, user)


def _org_defaults_out(session: Session, org_id: int) -> OrgDefaultsOut:
    defaults = service.effective({}, service.org_defaults(session, org_id))
    return OrgDefaultsOut(org_id=org_id, catalogue=catalogue(), defaults=defaults)


@router.get("/orgs/{org_id}/notification-defaults")
def org_defaults(org_id: PathId, user: CurrentUser, session: DbSession) -> OrgDefaultsOut:
    require_member(session, org_id, user)
    return _org_defaults_out(session, org_id)


@router.put("/orgs/{org_id}/notification-defaults")
def set_org_defaults(
    org_id: PathId, body: OrgDefaultsIn, user: CurrentUser, session: DbSession
) -> OrgDefaultsOut:
    """What members get unless they chose otherwise (owners and admins only)."""
    require_manager(session, org_id, user)
    service.set_org_defaults(session, org_id, _choices(body.defaults))
    session.commit()
    return _org_defaults_out(session, org_id)
