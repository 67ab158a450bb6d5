"""A project's email settings and subscription topics.

Owns the `email_settings` and `topics` tables. Both are created on first use, so a new project
sends with sensible defaults: the From of `TIDINGS_MAIL_FROM`, no frequency cap, no quiet
hours, tracking on, and the `broadcasts` and `automations` topics.
"""

from __future__ import annotations

import re
import secrets
from datetime import time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from tidings import clock
from tidings.db import table_of
from tidings.db.upsert import upsert
from tidings.errors import BadRequest, Conflict, NotFound
from tidings.messaging.models import EmailSettings, Subscription, Topic

BUILTIN_TOPICS = {
    "broadcasts": ("Announcements", "News and announcements sent to many customers at once."),
    "automations": ("Product emails", "Emails sent by automations, such as onboarding series."),
}
ALL = "*"  # the subscription row that means "every marketing email"
_TOPIC_KEY = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


def get(session: Session, *, project_id: int) -> EmailSettings:
    """The project's email settings, created with defaults on first use."""
    found = session.get(EmailSettings, project_id)
    if found is not None:
        return found
    # Two first uses may race: the loser's insert does nothing and both read the winner's row.
    upsert(
        session,
        table_of(EmailSettings),
        [
            {
                "project_id": project_id,
                "address": "",
                "cap_count": 0,
                "cap_days": 7,
                "timezone": "UTC",
                "track_opens": True,
                "track_clicks": True,
                "link_secret": secrets.token_urlsafe(32),
                "updated_at": clock.now(),
            }
        ],
        keys=("project_id",),
    )
    found = session.get(EmailSettings, project_id)
    assert found is not None
    return found


def parse_hhmm(value: str, field: str) -> time:
    """ "21:00" as a time, or a clear error naming the field."""
    m = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", value or "")
    if m is None:
        raise BadRequest(f"{field}: expected a time like 21:00, got {value!r}.", code="bad_setting")
    return time(int(m.group(1)), int(m.group(2)))


def zone(name: str, field: str = "timezone") -> ZoneInfo:
    """An IANA time zone, or a clear error."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadRequest(
            f"{field}: unknown time zone {name!r} (use an IANA name like Europe/Paris).",
            code="bad_setting",
        ) from exc


def update(session: Session, *, project_id: int, changes: dict[str, object]) -> EmailSettings:
    """Change some settings; every value is checked before any is applied."""
    s = get(session, project_id=project_id)
    start = changes.get("quiet_start", s.quiet_start)
    end = changes.get("quiet_end", s.quiet_end)
    if (start is None) != (end is None):
        raise BadRequest(
            "quiet_start and quiet_end: give both (quiet hours on) or neither (off).",
            code="bad_setting",
        )
    if (
        start is not None
        and end is not None
        and parse_hhmm(str(start), "quiet_start") == parse_hhmm(str(end), "quiet_end")
    ):
        raise BadRequest("quiet_start and quiet_end must differ.", code="bad_setting")
    if "timezone" in changes:
        zone(str(changes["timezone"]))
    for key, value in changes.items():
        setattr(s, key, value)
    s.updated_at = clock.now()
    session.flush()
    return s


def ensure_topics(session: Session, *, project_id: int) -> list[Topic]:
    """The project's topics, the built-in ones created on first use."""
    topics = list(
        session.scalars(select(Topic).where(Topic.project_id == project_id).order_by(Topic.key))
    )
    have = {t.key for t in topics}
    missing = [k for k in BUILTIN_TOPICS if k not in have]
    if not missing:
        return topics
    now = clock.now()
    upsert(
        session,
        table_of(Topic),
        [
            {
                "project_id": project_id,
                "key": key,
                "name": BUILTIN_TOPICS[key][0],
                "description": BUILTIN_TOPICS[key][1],
                "created_at": now,
            }
            for key in missing
        ],
        keys=("project_id", "key"),
    )
    return list(
        session.scalars(select(Topic).where(Topic.project_id == project_id).order_by(Topic.key))
    )


def topic_or_raise(session: Session, *, project_id: int, key: str) -> Topic:
    """One topic of the project; NotFound otherwise."""
    ensure_topics(session, project_id=project_id)
    t = session.get(Topic, (project_id, key))
    if t is None:
        raise NotFound(f"No subscription topic {key!r} in this project.", code="topic_not_found")
    return t


def create_topic(
    session: Session, *, project_id: int, key: str, name: str, description: str = ""
) -> Topic:
    """A new topic customers can opt out of."""
    if not _TOPIC_KEY.match(key):
        raise BadRequest(
            "key: lower-case letters, digits, '-' and '_' (up to 64), starting with a letter "
            "or digit.",
            code="bad_topic",
        )
    ensure_topics(session, project_id=project_id)
    if session.get(Topic, (project_id, key)) is not None:
        raise Conflict(f"Topic {key!r} already exists.", code="topic_exists")
    t = Topic(
        project_id=project_id, key=key, name=name, description=description, created_at=clock.now()
    )
    session.add(t)
    session.flush()
    return t


def update_topic(
    session: Session,
    *,
    project_id: int,
    key: str,
    name: str | None = None,
    description: str | None = None,
) -> Topic:
    """Rename or describe a topic."""
    t = topic_or_raise(session, project_id=project_id, key=key)
    if name is not None:
        t.name = name
    if description is not None:
        t.description = description
    session.flush()
    return t


def delete_topic(session: Session, *, project_id: int, key: str) -> None:
    """Delete a topic the project defined, with its customers' choices."""
    t = topic_or_raise(session, project_id=project_id, key=key)
    if key in BUILTIN_TOPICS:
        raise Conflict(f"Topic {key!r} is built in and cannot be deleted.", code="builtin_topic")
    session.query(Subscription).filter(
        Subscription.project_id == project_id, Subscription.topic == key
    ).delete()
    session.delete(t)
    session.flush()
