"""Access control for the dashboard: a bearer token when bound beyond loopback, CSRF on POST.

The token is generated once, stored 0600 under the state root and shown once by
`pyinspect serve`. Every request then needs it: `Authorization: Bearer <token>`, the
`pyinspect_token` cookie (set by visiting `/?token=<token>` once), or `?token=`.
State-changing requests (POST) also need the `X-CSRF-Token` header or `csrf` form
field, equal to the token's HMAC, which the pages embed.
"""

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from flask import abort, request

COOKIE = "pyinspect_token"


def load_or_create_token(root):
    """The dashboard token under `root` (created 0600 if missing) and whether it is new."""
    path = Path(root) / "web-token"
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def csrf_for(secret):
    """The CSRF value pages embed for POSTs."""
    return hmac.new(secret.encode(), b"pyinspect-csrf", hashlib.sha256).hexdigest()


def presented_token():
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE) or request.args.get("token")


def install(app):
    """Check the token (when one is configured) and CSRF on every request of `app`."""

    @app.before_request
    def _check():
        token = app.config.get("PYINSPECT_TOKEN")
        if token:
            given = presented_token() or ""
            if not hmac.compare_digest(given, token):
                abort(401, "a valid token is required (Authorization: Bearer <token>)")
        if request.method == "POST":
            secret = token or app.config["PYINSPECT_CSRF_SECRET"]
            given = request.headers.get("X-CSRF-Token") or request.form.get("csrf", "")
            if not hmac.compare_digest(given, csrf_for(secret)):
                abort(403, "missing or wrong CSRF token")

    @app.after_request
    def _remember(response):
        token = app.config.get("PYINSPECT_TOKEN")
        if token and request.args.get("token") == token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    @app.context_processor
    def _csrf():
        secret = app.config.get("PYINSPECT_TOKEN") or app.config["PYINSPECT_CSRF_SECRET"]
        return {"csrf_token": csrf_for(secret)}
