"""In-app notifications: stored in the caller's transaction, published to Redis after commit.

The database is the source of truth. Redis pub/sub is only the fast path to open streams; whatever
it drops is found again by `seq` (see `Notification`).
"""

import json
import logging
from datetime import UTC
from typing import Any

import redis
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Row,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from src import db, outages
from src.auth.models import User
from src.db import SessionLocal, after_commit, insert_ignoring_duplicates, utcnow
from src.errors import NotFound
from src.notifications.models import Notification, NotificationRead, NotificationSequence
from src.orgs.models import Membership
from src.preferences.catalogue import CATALOGUE, EVENT_TYPE_OF_NOTIFICATION, INVITATION_RECEIVED
from src.redis_client import sync_redis
from src.relay import Spaced
from src.text import one_line

log = logging.getLogger("herald.notifications")

CHANNEL = "herald:notifications"
PUBLISH_BATCH = 500
_redis: redis.Redis | None = None


def redis_client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = sync_redis()
    return _redis


_INSERT_NOTIFICATIONS = insert(Notification.__table__).returning(
    Notification.__table__.c.id, sort_by_parameter_order=True
)
_LAST_SEQ = select(NotificationSequence.last_seq).where(NotificationSequence.id == 1)


def last_seq(session: Session) -> int:
    """The highest `seq` given out so far."""
    return session.scalar(_LAST_SEQ) or 0


def _publish(*messages: str) -> None:
    """Messages on the fan-out channel, in one round trip. Best effort: while Redis is down they are
    skipped (the outage is logged once); the database has it all, and streams catch up from it."""
    if not messages or outages.broker.down:
        return
    try:
        pipe = redis_client().pipeline(transaction=False)
        for message in messages:
            pipe.publish(CHANNEL, message)
        pipe.execute()
    except redis.RedisError as exc:
        outages.broker.failed(exc)
    else:
        outages.broker.ok()


def _hint(message: dict[str, Any]) -> None:
    _publish(json.dumps(message))


def _visible_to(user_id: int | BindParameter[int]) -> Any:
    """A user's own notifications and the broadcasts of the organizations they belong to, once
    published: a stream counts what it delivers as unread, so nothing can be read before it. Of an
    organization they left, only the invitations it sent them stay: the rest tells its tasks."""
    member_of = Notification.org_id.in_(select(Membership.org_id).where(Membership.user_id == user_id))
    return and_(
        Notification.seq.is_not(None),
        or_(
            and_(
                Notification.recipient_id == user_id,
                or_(member_of, Notification.type == INVITATION_RECEIVED),
            ),
            and_(Notification.recipient_id.is_(None), member_of),
        ),
    )


def _unread_by(user_id: int | BindParameter[int]) -> Any:
    return ~exists().where(
        NotificationRead.notification_id == Notification.id, NotificationRead.user_id == user_id
    )


def _unread_snapshot_columns() -> tuple[Any, Any]:
    """(unread count, watermark) of the user given as the `user_id` parameter, for statements built
    once: every stream that opens runs one, and building it per call was two thirds of its CPU."""
    user_id, watermark = bindparam("user_id"), _LAST_SEQ.scalar_subquery()
    count = (
        select(func.count())
        .select_from(Notification)
        .where(_visible_to(user_id), _unread_by(user_id), Notification.seq <= watermark)
        .scalar_subquery()
    )
    return count, watermark


_UNREAD_SNAPSHOT = select(*_unread_snapshot_columns())
# What a stream starts from, in one statement: a row per membership of the user (one with no
# organization for a user in none, none for a user who is gone), each with the unread snapshot.
_STREAM_SNAPSHOT = (
    select(Membership.org_id, User.password_hash, *_unread_snapshot_columns())
    .select_from(User)
    .outerjoin(Membership, Membership.user_id == User.id)
    .where(User.id == bindparam("user_id"))
)


def to_payload(notification: Notification | Row[Any], read_at: object = None) -> dict[str, Any]:
    created = notification.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return {
        "id": notification.id,
        "seq": notification.seq,
        "org_id": notification.org_id,
        "type": notification.type,
        "event_type": EVENT_TYPE_OF_NOTIFICATION.get(notification.type, notification.type),
        "title": notification.title,
        "body": notification.body,
        "data": notification.data,
        "broadcast": notification.recipient_id is None,
        "created_at": created,
        "read_at": read_at,
    }


class NotificationService:
    @staticmethod
    def notify(
        session: Session,
        org_id: int,
        user_ids: list[int],
        type: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
    ) -> list[int]:
        """One notification per user, in the caller's transaction, published once it commits; their
        ids. A Core INSERT: as ORM objects they cost a status change a unit-of-work flush at commit."""
        if not user_ids:
            return []
        title, data, now = one_line(title, 300), data or {}, utcnow()
        rows = [
            {"org_id": org_id, "recipient_id": uid, "type": type, "title": title, "body": body, "data": data,
             "created_at": now}
            for uid in user_ids
        ]  # fmt: skip
        result = session.connection().execute(_INSERT_NOTIFICATIONS, rows[0] if len(rows) == 1 else rows)
        after_commit(session, _spaced_publish)
        return list(result.scalars())

    @staticmethod
    def broadcast(
        session: Session,
        org_id: int,
        type: str,
        title: str,
        body: str = "",
        data: dict[str, Any] | None = None,
    ) -> Notification:
        """One notification for every member of the organization, stored once."""
        notification = Notification(
            org_id=org_id,
            recipient_id=None,
            type=type,
            title=one_line(title, 300),
            body=body,
            data=data or {},
        )
        session.add(notification)
        after_commit(session, _spaced_publish)
        return notification

    @staticmethod
    def inbox(
        session: Session,
        user_id: int,
        unread_only: bool,
        limit: int,
        before: int | None,
        event_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest first; `before` is the id of the last notification of the previous page;
        `event_type` one of the catalogue's (`src.preferences.catalogue`)."""
        query = (
            select(Notification, NotificationRead.read_at)
            .outerjoin(
                NotificationRead,
                and_(
                    NotificationRead.notification_id == Notification.id, NotificationRead.user_id == user_id
                ),
            )
            .where(_visible_to(user_id))
        )
        if unread_only:
            query = query.where(NotificationRead.read_at.is_(None))
        if before is not None:
            query = query.where(Notification.id < before)
        if event_type is not None:
            query = query.where(Notification.type == CATALOGUE[event_type].notification_type)
        rows = session.execute(query.order_by(Notification.id.desc()).limit(limit))
        return [to_payload(n, read_at) for n, read_at in rows]

    @staticmethod
    def unread_count(session: Session, user_id: int) -> int:
        return (
            session.scalar(
                select(func.count())
                .select_from(Notification)
                .where(_visible_to(user_id), _unread_by(user_id))
            )
            or 0
        )

    @staticmethod
    def mark_read(session: Session, user_id: int, notification_id: int) -> dict[str, Any]:
        notification = session.scalar(
            select(Notification).where(Notification.id == notification_id, _visible_to(user_id))
        )
        if notification is None:
            raise NotFound("notification not found")
        row = {"notification_id": notification_id, "user_id": user_id, "read_at": utcnow()}
        if insert_ignoring_duplicates(session, NotificationRead.__table__, [row]):
            _announce_unread_after_commit(session, user_id)
        session.commit()
        read_at = session.scalar(
            select(NotificationRead.read_at).where(
                NotificationRead.notification_id == notification_id, NotificationRead.user_id == user_id
            )
        )
        return to_payload(notification, read_at)

    @staticmethod
    def mark_all_read(session: Session, user_id: int) -> int:
        marked = NotificationService.mark_read_where(session, user_id)
        session.commit()
        return marked

    @staticmethod
    def mark_read_where(session: Session, user_id: int, *conditions: ColumnElement[bool]) -> int:
        """Mark the user's unread notifications that meet `conditions` read, in the caller's
        transaction (for one whose question was answered elsewhere, like an invitation)."""
        unread = select(Notification.id).where(_visible_to(user_id), _unread_by(user_id), *conditions)
        ids = list(session.scalars(unread))
        if not ids:
            return 0
        now = utcnow()
        rows = [{"notification_id": i, "user_id": user_id, "read_at": now} for i in ids]
        marked = insert_ignoring_duplicates(session, NotificationRead.__table__, rows)
        _announce_unread_after_commit(session, user_id)
        return marked

    @staticmethod
    def unread_snapshot(session: Session, user_id: int) -> tuple[int, int]:
        """(unread published notifications, highest seq given out), from one consistent snapshot.

        A stream counts every later notification it delivers on top of this, so its count matches
        the API's once delivery catches up.
        """
        unread, last_seq = session.execute(_UNREAD_SNAPSHOT, {"user_id": user_id}).one()
        return unread or 0, last_seq or 0

    @staticmethod
    def stream_snapshot(session: Session, user_id: int) -> tuple[str, frozenset[int], int, int] | None:
        """(the user's password hash, which their tokens are checked against, their organization
        ids, `unread_snapshot()`) from one statement; None if the user no longer exists."""
        rows = session.execute(_STREAM_SNAPSHOT, {"user_id": user_id}).all()
        if not rows:
            return None
        _, password_hash, unread, last_seq = rows[0]
        org_ids = frozenset(org_id for org_id, *_ in rows if org_id is not None)
        return password_hash, org_ids, unread or 0, last_seq or 0

    @staticmethod
    def published_since(
        session: Session, after_seq: int, user_id: int | None = None, limit: int = PUBLISH_BATCH
    ) -> list[tuple[int | None, dict[str, Any]]]:
        """Published notifications after `after_seq` in seq order, as (recipient_id, payload);
        only those `user_id` may see, when given."""
        query = select(Notification).where(Notification.seq > after_seq)
        if user_id is not None:
            query = query.where(_visible_to(user_id))
        rows = session.scalars(query.order_by(Notification.seq).limit(limit))
        return [(n.recipient_id, to_payload(n)) for n in rows]


def _announce_unread_after_commit(session: Session, user_id: int) -> None:
    """Tell the user's streams their unread count changed. They read it from the database: counts
    carried in messages could arrive out of order."""
    after_commit(session, lambda: _hint({"kind": "unread", "user_id": user_id}))


def end_live_streams(user_id: int) -> None:
    """Make every API process close the user's streams: they reconnect with their current
    memberships, so an organization they joined reaches them and one they left no longer does."""
    _hint({"kind": "revoke", "user_id": user_id})


def publish_pending() -> int:
    """Give every unpublished notification its `seq`, in id order, then publish them to Redis.

    Runs on the relay thread after commits and in the beat job, never in a request: the sequence
    row's lock makes publishers take turns, so committed seqs never have a hole, and whoever waits
    for it is not holding a request's connection. If Redis is down, the seqs stand: streams find the
    notifications in the database.

    Core statements on a bare connection: the relay runs this after nearly every change, and the
    ORM's session, entities and statement handling were most of its CPU.
    """
    published = 0
    while True:
        assert db.engine is not None
        with db.engine.begin() as connection:
            base = connection.scalar(_LOCK_SEQUENCE) or 0  # first: the numbering must see what it waited for
            pending = sorted(connection.execute(_NUMBER_PENDING, {"base": base}), key=lambda n: n.seq)
            if pending:
                connection.execute(_ADVANCE_SEQUENCE, {"last_seq": base + len(pending)})
        _publish(
            *(
                json.dumps(
                    {"kind": "notification", "recipient_id": n.recipient_id, "notification": to_payload(n)}
                )
                for n in pending
            )
        )
        published += len(pending)
        if len(pending) < PUBLISH_BATCH:
            return published


_notifications = Notification.__table__
_LOCK_SEQUENCE = _LAST_SEQ.with_for_update()
_NUMBERED = (
    select(_notifications.c.id, func.row_number().over(order_by=_notifications.c.id).label("position"))
    .where(_notifications.c.seq.is_(None))
    .order_by(_notifications.c.id)
    .limit(PUBLISH_BATCH)
    .cte("numbered")
)
# One statement numbers a whole batch, in id order, after the last seq given out.
_NUMBER_PENDING = (
    _notifications.update()
    .where(_notifications.c.id == _NUMBERED.c.id)
    .values(seq=bindparam("base") + _NUMBERED.c.position)
    .returning(*_notifications.c)
)
_ADVANCE_SEQUENCE = (
    update(NotificationSequence.__table__)
    .where(NotificationSequence.__table__.c.id == 1)
    .values(last_seq=bindparam("last_seq"))
)


# Publishing after a quiet spell goes at once; commits that follow within PUBLISH_SPACING_SECONDS are
# numbered and published together by the next run. Each run costs its process ~1 ms of CPU and
# PostgreSQL a transaction on the sequence's lock (three statements), whatever it publishes: at 50
# changes/s a process ran one per change. A notification under a steady load waits at most 50 ms more.
PUBLISH_SPACING_SECONDS = 0.05


def publish_pending_quietly() -> None:
    """After-commit hook: publish now if possible; the beat job retries whatever this could not."""
    try:
        publish_pending()
    except Exception as exc:
        outage = outages.outage_of(exc)
        if outage is None:
            log.warning("notifications not published now (%s); the beat job will", exc)
        else:
            outage.failed(exc)


_spaced_publish = Spaced(publish_pending_quietly, PUBLISH_SPACING_SECONDS)


def publish_tick() -> None:
    """Tell every stream the highest seq given out, so one that missed a message notices the gap."""
    with SessionLocal() as session:
        _hint({"kind": "tick", "seq": last_seq(session)})
