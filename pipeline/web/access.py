"""Who may see and do what on the dashboard, and the CSRF token every write action carries.

An ``authorize`` callable takes the request and says who is asking: ``None`` (nobody: 401), a
:class:`Role`, or a ``(name, Role)`` pair whose name goes to the audit list. Mounted in a
service's app, the service's own login decides; standalone, :func:`settings_authorize` checks
a token or a user and password from the settings, required unless the server listens on
127.0.0.1 only.

Write actions are POSTs from the dashboard's forms, each with a token equal to a cookie the
dashboard set (``SameSite=Strict``, HttpOnly): another site can neither read the cookie nor
set it, so it cannot forge the form.
"""

from __future__ import annotations

import base64
import enum
import hmac
import secrets
from collections.abc import Callable

from werkzeug.wrappers import Request

from pipeline.errors import SettingsError
from pipeline.settings import Settings


class Role(enum.IntEnum):
    """What a user may do: look, or also act (revoke, retry, forget, requeue, purge)."""

    VIEWER = 1
    OPERATOR = 2


#: Who is asking: a role, a named role, or None (not logged in).
Caller = Role | tuple[str, Role] | None
#: Says who makes a request.
Authorize = Callable[[Request], Caller]

#: The cookie holding the CSRF token, and the form field that must repeat it.
CSRF_COOKIE = "pipeline_csrf"
CSRF_FIELD = "csrf"


def caller_of(authorize: Authorize, request: Request) -> tuple[str, Role] | None:
    """The name and role ``authorize`` gives ``request`` (a bare role is named "anonymous")."""
    found = authorize(request)
    if found is None:
        return None
    if isinstance(found, tuple):
        return str(found[0]), Role(found[1])
    return "anonymous", Role(found)


def settings_authorize(settings: Settings, host: str) -> Authorize:
    """The standalone dashboard's check: ``PIPELINE_WEB_TOKEN`` (bearer, or basic auth's
    password) or ``PIPELINE_WEB_USER``/``PIPELINE_WEB_PASSWORD``. Without either, only a server
    on 127.0.0.1 may run, open to whoever reaches it. A caller who passes is an operator when
    ``PIPELINE_WEB_WRITES`` is on, else a viewer.

    Raises:
      SettingsError: No credentials are set and ``host`` is not 127.0.0.1.
    """
    role = Role.OPERATOR if settings.web_writes else Role.VIEWER
    token, user, password = settings.web_token, settings.web_user, settings.web_password
    if token is None and user is None:
        if host != "127.0.0.1":
            raise SettingsError(
                "PIPELINE_WEB_TOKEN",
                "",
                f"the dashboard listens on {host}, beyond this machine: set PIPELINE_WEB_TOKEN or "
                "PIPELINE_WEB_USER and PIPELINE_WEB_PASSWORD",
            )
        return lambda request: ("local", role)

    def check(request: Request) -> Caller:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and token is not None and _same(value, token):
            return ("token", role)
        if scheme.lower() == "basic":
            try:
                name, _, given = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if token is not None and _same(given, token):
                return (name or "token", role)
            if user is not None and password is not None and _same(name, user) and _same(given, password):
                return (name, role)
        return None

    return check


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def new_csrf_token() -> str:
    """A fresh token for the CSRF cookie."""
    return secrets.token_urlsafe(32)


def csrf_passes(request: Request) -> bool:
    """Whether a POST carries the token of its CSRF cookie."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = request.form.get(CSRF_FIELD, "")
    return bool(cookie) and _same(given, cookie)
