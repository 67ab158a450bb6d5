"""Public routes behind the links in emails: one-click unsubscribe (RFC 8058), the hosted
unsubscribe and preferences pages, the open pixel and click redirects.

No sign-in: the signed token in the address is the credential. Forms on these pages carry a
second token derived from the same message (`f`), which a page on another site cannot read,
so they cannot be posted cross-site. A one-click POST (`List-Unsubscribe=One-Click`) needs
no page and no form token, as RFC 8058 requires.
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from tidings.errors import BadRequest, NotFound
from tidings.messaging import links
from tidings.messaging import service as messaging
from tidings.messaging import settings as email_settings
from tidings.messaging.models import Message
from tidings.web.pages import Writer, _page

router = APIRouter(include_in_schema=False)

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, private", "Referrer-Policy": "no-referrer"}


def _secret(session: Session, m: Message) -> str:
    return email_settings.get(session, project_id=m.project_id).link_secret


def _form_token(session: Session, m: Message) -> str:
    return links.token(_secret(session, m), "f", m.id)


def _preferences_url(session: Session, m: Message) -> str:
    return links.PATH_PREFERENCES + links.token(_secret(session, m), "p", m.id)


def _check_form(session: Session, m: Message, given: str) -> None:
    if links.message_of(given) != m.id or not links.verify(_secret(session, m), "f", given):
        raise BadRequest(
            "This form has expired. Open the link in the email again.", code="csrf_failed"
        )


def _preferences_page(
    request: Request, session: Session, token: str, kind: str, *, flash: str | None = None
) -> Response:
    m, subs = messaging.preferences(session, token=token, kind=kind)
    response = _page(
        request,
        "email_preferences.html",
        project_name=messaging.project_name(session, project_id=m.project_id),
        subs=subs,
        address=m.to_address,
        action=request.url.path,
        form_token=_form_token(session, m),
        flash=flash,
        topic=m.topic,
    )
    response.headers.update(NO_STORE)
    return response


@router.get("/email/unsubscribe/{token}")
def unsubscribe_page(request: Request, session: Writer, token: str) -> Response:
    """A link a person clicks: a page with one button (scanners that prefetch change nothing)."""
    m = messaging.by_token(session, kind="u", token=token)
    return _page(
        request,
        "email_unsubscribe.html",
        project_name=messaging.project_name(session, project_id=m.project_id),
        address=m.to_address,
        topic=m.topic,
        done=False,
        test=m.sender == "test" or m.customer_id is None,
        form_token=_form_token(session, m),
        preferences=_preferences_url(session, m),
    )


@router.post("/email/unsubscribe/{token}")
async def unsubscribe(request: Request, session: Writer, token: str) -> Response:
    """RFC 8058 one-click (body `List-Unsubscribe=One-Click`), or the page's button."""
    form = await request.form()
    m = messaging.by_token(session, kind="u", token=token)
    if form.get("List-Unsubscribe") == "One-Click":
        messaging.one_click(session, token=token)
        return Response(status_code=200, headers=NO_STORE)
    _check_form(session, m, str(form.get("form_token") or ""))
    messaging.unsubscribe(session, message=m, source="link")
    return _page(
        request,
        "email_unsubscribe.html",
        project_name=messaging.project_name(session, project_id=m.project_id),
        address=m.to_address,
        topic=m.topic,
        done=True,
        test=m.sender == "test" or m.customer_id is None,
        form_token=_form_token(session, m),
        preferences=_preferences_url(session, m),
    )


@router.get("/email/preferences/{token}")
def preferences_page(request: Request, session: Writer, token: str) -> Response:
    """Topics on and off, or unsubscribe from all marketing email."""
    return _preferences_page(request, session, token, "p")


@router.post("/email/preferences/{token}")
async def save_preferences(request: Request, session: Writer, token: str) -> Response:
    form = await request.form()
    m = messaging.by_token(session, kind="p", token=token)
    _check_form(session, m, str(form.get("form_token") or ""))
    _, subs = messaging.preferences(session, token=token)
    if subs is None:
        return _preferences_page(request, session, token, "p", flash="This was a test email.")
    chosen = {t["key"]: form.get(f"topic_{t['key']}") == "on" for t in subs.topics}
    messaging.save_preferences(
        session,
        token=token,
        kind="p",
        topics=chosen,
        unsubscribed_all=form.get("unsubscribe_all") == "on",
    )
    return _preferences_page(request, session, token, "p", flash="Your preferences are saved.")


@router.get("/email/open/{token}.gif")
def open_pixel(session: Writer, token: str) -> Response:
    """The open pixel: always a 1x1 GIF, recording the first open of a genuine link."""
    messaging.opened(session, token=token)
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


@router.get("/email/click/{message_id}/{sig}")
def click(session: Writer, message_id: int, sig: str, url: str = "") -> Response:
    """A tracked link: redirect to a destination that was signed into the sent email only."""
    try:
        target = messaging.clicked(session, message_id=message_id, sig=sig, url=url)
    except NotFound:
        raise NotFound(
            "This link is not valid: it was not in an email from this sender.",
            code="invalid_link",
        ) from None
    return RedirectResponse(target, status_code=302, headers=NO_STORE)
