"""Who may read and who may act through the console.

* Reads (GET of the JSON API) need the admin token (`Authorization: Bearer <token>`), except from a
  loopback peer that also names a loopback host: a page on another site cannot read our answers
  (no CORS headers are sent), and the Host check stops a DNS-rebinding page that resolves its own
  name to 127.0.0.1.
* Writes need the token always, loopback included, and only ever in a header: a browser adds no
  header of ours to a request another origin's page makes, so a cross-site form or fetch carries no
  token and gets 401 (no cookie is ever accepted). A write whose Origin header names another origin
  is refused with 403 before the token is even looked at.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.requests import Request

from cachetap.store.admin_token import token_matches

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address.lower() in LOOPBACK_NAMES


def host_name(host_header: str) -> str:
    """The name of a Host header without its port ("[::1]:8643" -> "::1")."""
    return urlsplit(f"//{host_header}").hostname or ""


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def same_origin(request: Request) -> bool:
    """No Origin header (curl, the CLI) or one naming this very host and port."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == request.headers.get("host", "").lower()


class Guard:
    """Judges every /api/ request before anything else reads it (body included); `token` is a
    callable so that a token made after start is picked up."""

    def __init__(self, token) -> None:
        self.token = token

    def refusal(self, request: Request) -> tuple[int, str] | None:
        """(status, reason) to refuse `request` with, or None to let it through."""
        if request.method in ("GET", "HEAD"):
            client = request.client.host if request.client else None
            if is_loopback(client) and is_loopback(host_name(request.headers.get("host", ""))):
                return None
            if token_matches(bearer(request), self.token()):
                return None
            return 401, ("send the admin token: Authorization: Bearer <token> "
                         "(`cachetap config show --secrets` prints it)")
        if not same_origin(request):
            return 403, "cross-origin request refused"
        if not token_matches(bearer(request), self.token()):
            return 401, ("actions need the admin token, even on loopback: Authorization: Bearer <token> "
                         "(`cachetap config show --secrets` prints it)")
        return None
