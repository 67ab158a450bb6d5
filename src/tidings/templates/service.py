"""Template use cases: the default layout, the starter gallery, create, edit, delete.

Owns the `templates` table. Rendering for a customer (with links and the customer's data) is the
messaging package's job; this package only checks and compiles what is written.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tidings import clock
from tidings.errors import BadRequest, Conflict, NotFound
from tidings.templates import render
from tidings.templates.models import Template
from tidings.templates.schemas import StarterOut, TemplateOut
from tidings.templates.starters import DEFAULT, LAYOUT, STARTERS, fill

SAMPLE_CONTEXT: dict[str, Any] = {
    "customer": {
        "id": 1,
        "user_id": "sample",
        "email": "ada@example.com",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "name": "Ada Lovelace",
    },
    "event": {"name": "Sample", "properties": {}},
    "data": {},
    "project": {"name": "Sample project", "address": "1 Sample Street"},
    "unsubscribe_url": "https://example.com/u",
    "preferences_url": "https://example.com/p",
    "survey_url": "https://example.com/s",
    "message": {"id": 1},
}


def parts(t: Template) -> render.Parts:
    """The source parts of a template."""
    return render.Parts(subject=t.subject, preheader=t.preheader, html=t.html, text=t.text)


def check_parts(p: render.Parts) -> None:
    """Refuse parts that do not parse or use unknown filters (naming part, line and column)."""
    if not p.subject.strip():
        raise BadRequest("subject: a template needs a subject.", code="invalid_template")
    if not p.html.strip():
        raise BadRequest("html: a template needs an HTML body.", code="invalid_template")
    render.check("subject", p.subject, html=False, sample=SAMPLE_CONTEXT)
    render.check("preheader", p.preheader, html=False, sample=SAMPLE_CONTEXT)
    render.check("html", p.html, html=True, sample=SAMPLE_CONTEXT)
    render.check("text", p.text, html=False, sample=SAMPLE_CONTEXT)


def to_out(t: Template) -> TemplateOut:
    return TemplateOut(
        id=t.id,
        name=t.name,
        subject=t.subject,
        preheader=t.preheader,
        html=t.html,
        text=t.text,
        is_default=t.is_default,
        starter=t.starter,
        version=t.version,
        created_at=clock.isoformat(t.created_at) or "",
        updated_at=clock.isoformat(t.updated_at) or "",
    )


def starters() -> list[StarterOut]:
    """The gallery of ready-to-use templates."""
    return [
        StarterOut(key=s.key, name=s.name, description=s.description, subject=s.subject)
        for s in STARTERS.values()
    ]


def get(session: Session, *, project_id: int, template_id: int) -> Template | None:
    """One template of the project, or None."""
    t = session.get(Template, template_id)
    return t if t is not None and t.project_id == project_id else None


def get_or_raise(session: Session, *, project_id: int, template_id: int) -> Template:
    """One template of the project; NotFound otherwise."""
    t = get(session, project_id=project_id, template_id=template_id)
    if t is None:
        raise NotFound(f"No template {template_id} in this project.", code="template_not_found")
    return t


def get_default(session: Session, *, project_id: int) -> Template:
    """The project's default template (its layout), created on first use."""
    t = session.scalar(
        select(Template).where(Template.project_id == project_id, Template.is_default.is_(True))
    )
    if t is not None:
        return t
    try:
        # Two first uses may race on PostgreSQL: the loser reads the winner's layout.
        with session.begin_nested():
            return _create_default(session, project_id)
    except IntegrityError:
        found = session.scalar(
            select(Template).where(Template.project_id == project_id, Template.is_default.is_(True))
        )
        if found is None:
            raise
        return found


def _create_default(session: Session, project_id: int) -> Template:
    now = clock.now()
    t = Template(
        project_id=project_id,
        name=_free_name(session, project_id, "Default layout"),
        subject=DEFAULT.subject,
        preheader=DEFAULT.preheader,
        html=fill(LAYOUT, DEFAULT.content),
        text="",
        is_default=True,
        starter="default",
        version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(t)
    session.flush()
    return t


def _free_name(session: Session, project_id: int, name: str) -> str:
    taken = set(
        session.scalars(
            select(Template.name).where(
                Template.project_id == project_id, Template.name.startswith(name)
            )
        )
    )
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name} {n}"
    return candidate


def list_templates(session: Session, *, project_id: int) -> list[Template]:
    """Every template of the project, the default first, then by name."""
    get_default(session, project_id=project_id)
    return list(
        session.scalars(
            select(Template)
            .where(Template.project_id == project_id)
            .order_by(Template.is_default.desc(), Template.name)
        )
    )


def _check_name(session: Session, project_id: int, name: str, template_id: int = 0) -> str:
    name = name.strip()
    if not name:
        raise BadRequest("name: a template needs a name.", code="invalid_template")
    clash = session.scalar(
        select(func.count())
        .select_from(Template)
        .where(Template.project_id == project_id, Template.name == name, Template.id != template_id)
    )
    if clash:
        raise Conflict(f"A template named {name!r} already exists.", code="template_exists")
    return name


def create(
    session: Session,
    *,
    project_id: int,
    name: str,
    subject: str | None = None,
    preheader: str | None = None,
    html: str | None = None,
    text: str | None = None,
    starter: str | None = None,
) -> Template:
    """A new template: what is given, the rest from a starter or the project's default."""
    name = _check_name(session, project_id, name)
    base = get_default(session, project_id=project_id)
    if starter is not None and starter not in STARTERS:
        raise BadRequest(
            f"starter: unknown starter {starter!r}; one of {', '.join(STARTERS)}.",
            code="unknown_starter",
        )
    if starter is not None:
        s = STARTERS[starter]
        start = render.Parts(s.subject, s.preheader, fill(base.html, s.content), "")
    else:
        start = parts(base)
    p = render.Parts(
        subject=start.subject if subject is None else subject,
        preheader=start.preheader if preheader is None else preheader,
        html=start.html if html is None else html,
        text=(start.text if html is None else "") if text is None else text,
    )
    check_parts(p)
    now = clock.now()
    t = Template(
        project_id=project_id,
        name=name,
        subject=p.subject,
        preheader=p.preheader,
        html=p.html,
        text=p.text,
        is_default=False,
        starter=starter,
        version=1,
        created_at=now,
        updated_at=now,
    )
    session.add(t)
    session.flush()
    return t


def update(
    session: Session,
    *,
    project_id: int,
    template_id: int,
    name: str | None = None,
    subject: str | None = None,
    preheader: str | None = None,
    html: str | None = None,
    text: str | None = None,
) -> Template:
    """Edit a template; the new version is checked before anything is saved."""
    t = get_or_raise(session, project_id=project_id, template_id=template_id)
    p = render.Parts(
        subject=t.subject if subject is None else subject,
        preheader=t.preheader if preheader is None else preheader,
        html=t.html if html is None else html,
        text=t.text if text is None else text,
    )
    check_parts(p)
    if name is not None:
        t.name = _check_name(session, project_id, name, template_id)
    if p != parts(t):
        t.subject, t.preheader, t.html, t.text = p.subject, p.preheader, p.html, p.text
        t.version += 1
    t.updated_at = clock.now()
    session.flush()
    return t


def delete(session: Session, *, project_id: int, template_id: int) -> None:
    """Delete a template (the default layout stays: every new email starts from it)."""
    t = get_or_raise(session, project_id=project_id, template_id=template_id)
    if t.is_default:
        raise Conflict(
            "The default template is the layout of every new email; edit it instead.",
            code="default_template",
        )
    session.delete(t)
    session.flush()
