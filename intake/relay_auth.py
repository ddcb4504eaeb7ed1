"""What the relay reads from a request before it trusts it, and what it writes about the ones it does not take.

Every refused or ignored delivery leaves one line in the relay's log (relay.log under `make server`) with its reason;
never the token, never the request URL (an SNS subscription carries the token in its query string)."""

from __future__ import annotations

import base64
import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

log = logging.getLogger("millrace.relay")


def presented_tokens(request: Request) -> list[str]:
    """Every token the request offers: the Authorization header (below), X-Millrace-Token, ?token=.

    MinIO's webhook target sends its `auth_token` as the whole header when it is two words (`Bearer <t>`,
    `Token <t>`, any `<scheme> <t>`) and as `Bearer <t>` when it is one; older MinIO releases send a lone token as it
    is. So a bare value and the credential after any scheme count, and Basic is decoded to its password (SNS puts
    user:password@ URLs there)."""
    found = []
    fields = request.headers.get("authorization", "").split()
    if len(fields) == 1:
        found.append(fields[0])
    elif len(fields) == 2:
        found.append(fields[1])
        if fields[0].lower() == "basic":
            try:
                found.append(base64.b64decode(fields[1], validate=True).decode().partition(":")[2])
            except ValueError:
                pass
    found += [t for t in (request.headers.get("x-millrace-token"), request.query_params.get("token")) if t]
    return found


def credentials_seen(request: Request) -> str:
    """Which ways of sending a token a request used, for the log line of a refusal: names only, never values."""
    seen = []
    if request.headers.get("authorization"):
        fields = request.headers["authorization"].split()
        # Only a scheme we know is named: a sender that got the format wrong may have put its secret first.
        known = len(fields) == 2 and fields[0].lower() in ("bearer", "token", "basic")
        seen.append(f"Authorization: {fields[0].capitalize()} ..." if known else
                    f"Authorization: {'a bare value' if len(fields) == 1 else 'another form'}")
    seen += [name for name, present in (("X-Millrace-Token", request.headers.get("x-millrace-token")),
                                        ("?token=", request.query_params.get("token"))) if present]
    return ", ".join(seen) or "none"


def _client(request: Request) -> str:
    # Never request.url: an SNS subscription carries the token in its query string.
    return request.client.host if request.client else "?"


def loggable(request: Request, text: str) -> str:
    """One line, bounded, without the token: reasons quote parts of a body, which a sender controls."""
    token = request.app.state.relay.token.decode()
    line = "".join(ch if ch.isprintable() else " " for ch in text.replace(token, "<token>"))
    return line if len(line) <= 500 else line[:500] + "..."


def refused(request: Request, code: int, reason: str, /, headers: dict | None = None, **body: Any) -> JSONResponse:
    """A delivery the relay did not take: one line in its log saying why, then the answer."""
    log.warning("refused delivery from %s: %d %s", _client(request), code, loggable(request, reason))
    return JSONResponse({"detail": reason, **body}, status_code=code, headers=headers)


def ignored(request: Request, message_id: str, reason: str, /, status: str = "ignored", **body: Any) -> JSONResponse:
    """A delivery taken (200, so the sender does not retry) that changes nothing: one line saying why."""
    log.info("ignored delivery %s from %s: %s", loggable(request, message_id or "-"), _client(request),
             loggable(request, reason))
    return JSONResponse({"status": status, "reason": reason, **body}, status_code=200)
