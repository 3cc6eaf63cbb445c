"""Access control for the dashboard: a token always, the Host header, Origin, CSRF.

The server runs as root and can capture any container's traffic, so every request
needs the token, on loopback too (Jupyter's model). `pyinspect serve` prints a login URL
`/?token=<token>`; visiting it sets an HttpOnly SameSite=Strict cookie and redirects to
the same page without the token. The API takes `Authorization: Bearer <token>` (or the
cookie, or `?token=`). Anything else, malformed values included, is a 401.

DNS rebinding: a page of evil.example whose name is re-pointed at 127.0.0.1 reaches the
server with `Host: evil.example`. Requests whose Host is not the bound address (with
its port), `localhost` on loopback, or a name given with `--allow-host` are refused with
403 before anything else runs. POSTs also need an `Origin` (when the browser sends one)
of an allowed host, and the CSRF value (`X-CSRF-Token` header or `csrf` form field: the
token's HMAC), which only the pages embed.
"""

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from flask import Flask, abort, g, redirect, request

COOKIE = "pyinspect_token"
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
UNIX_SERVER = "pyinspect-unix-socket"  # SERVER_NAME of requests that came over --unix-socket


def new_token() -> str:
    return secrets.token_urlsafe(32)


def load_or_create_token(root) -> tuple[str, bool]:
    """The dashboard token under `root` (created 0600 if missing) and whether it is new."""
    path = Path(root) / "web-token"
    if path.exists():
        token = path.read_text().strip()
        if token and set(token) <= TOKEN_CHARS:
            return token, False
        path.unlink()  # damaged: a new one
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def csrf_for(secret: str) -> str:
    """The CSRF value pages embed for POSTs."""
    return hmac.new(secret.encode(), b"pyinspect-csrf", hashlib.sha256).hexdigest()


def cookie_for(secret: str) -> str:
    """The cookie value: derived from the token, not the token itself."""
    return hmac.new(secret.encode(), b"pyinspect-cookie", hashlib.sha256).hexdigest()


def _same(given: str | None, want: str) -> bool:
    """Constant-time equality for any presented value (non-ASCII, any length: False)."""
    if not given or len(given) != len(want):
        return False
    try:
        raw = given.encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(raw, want.encode("ascii"))


@dataclass
class HostPolicy:
    """Which `Host` header values are this server's.

    `port` None accepts any port (a test client); `any_ip` accepts any IP literal (a
    wildcard bind: a rebinding page always arrives with a name, never an address)."""

    addresses: set[str] = field(default_factory=lambda: {"127.0.0.1", "localhost", "::1"})
    names: set[str] = field(default_factory=set)  # --allow-host: "name" or "name:port"
    port: int | None = None
    any_ip: bool = False

    @classmethod
    def for_bind(cls, bind: str, port: int, allow: list[str] | None = None) -> "HostPolicy":
        addresses = {bind}
        any_ip = False
        try:
            ip = ipaddress.ip_address(bind)
            any_ip = ip.is_unspecified
            if ip.is_loopback:
                addresses |= {"localhost", "127.0.0.1", "::1"}
        except ValueError:
            if bind == "localhost":
                addresses |= {"127.0.0.1", "::1"}
        return cls(addresses, {n.lower() for n in allow or []}, port, any_ip)

    def allows(self, host: str, unix: bool = False) -> bool:
        host = (host or "").strip().lower()
        if not host or any(c.isspace() or c in "/@\\" for c in host):
            return False
        if host in self.names:
            return True
        name, port = _split_host(host)
        if name is None:
            return False
        if name in self.names:
            return True
        if unix:  # nothing else reaches a 0600 socket file; curl sends localhost
            return name == "localhost" or name in self.addresses
        if self.port is not None and port != self.port:
            return False
        if name in self.addresses:
            return True
        if self.any_ip:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False


def _split_host(host: str) -> tuple[str | None, int | None]:
    """(name or address, port) of a Host value (port 80 when absent); (None, None) when
    malformed."""
    if host.startswith("["):
        addr, sep, rest = host[1:].partition("]")
        if not sep:
            return None, None
        if not rest:
            return addr, 80
        if not rest.startswith(":"):
            return None, None
        port_text = rest[1:]
    elif host.count(":") == 1:
        addr, port_text = host.split(":")
    elif ":" not in host:
        return host, 80
    else:  # a bare IPv6 address without brackets
        return None, None
    if not addr or not port_text.isdigit() or len(port_text) > 5:
        return None, None
    return addr, int(port_text)


def _origin_host(origin: str) -> str | None:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc


def install(app: Flask) -> None:
    """Host, token, Origin and CSRF checks on every request of `app`."""
    if not app.config.get("PYINSPECT_TOKEN"):
        app.config["PYINSPECT_TOKEN"] = new_token()
    app.config.setdefault("PYINSPECT_HOSTS", HostPolicy())

    @app.before_request
    def _check():
        token = app.config["PYINSPECT_TOKEN"]
        policy: HostPolicy = app.config["PYINSPECT_HOSTS"]
        unix = request.environ.get("SERVER_NAME") == UNIX_SERVER
        host = request.headers.get("Host", "")
        if not policy.allows(host, unix=unix):
            abort(403, f"Host {host[:100]!r} is not this dashboard's (use --allow-host)")
        given = request.args.get("token")
        if given is not None:
            if not _same(given, token):
                abort(401, "wrong token in the URL")
            if request.method == "GET" and not request.path.startswith("/api/"):
                # the login URL: remember the token in a cookie, show a clean URL
                args = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
                target = request.path + ("?" + urlencode(args) if args else "")
                response = redirect(target, 303)
                response.set_cookie(
                    COOKIE, cookie_for(token), httponly=True, samesite="Strict", path="/"
                )
                return response
        elif not _authorized(token):
            abort(
                401,
                "a valid token is required: open the login URL `pyinspect serve` printed"
                " or send Authorization: Bearer <token>",
            )
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("Origin")
            if origin is not None:
                ohost = _origin_host(origin)
                if ohost is None or ohost.lower() != host.strip().lower():
                    abort(403, f"cross-origin request from {origin[:100]!r} refused")
            given_csrf = request.headers.get("X-CSRF-Token") or request.form.get("csrf", "")
            if not _same(given_csrf, csrf_for(token)):
                abort(403, "missing or wrong CSRF token")
        g.pyinspect_authorized = True

    @app.after_request
    def _headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline';"
            " frame-ancestors 'none'",
        )
        return response

    @app.context_processor
    def _csrf():
        # only pages of an authorized request carry it (not a 401/403 page)
        if g.get("pyinspect_authorized"):
            return {"csrf_token": csrf_for(app.config["PYINSPECT_TOKEN"])}
        return {"csrf_token": ""}


def _authorized(token: str) -> bool:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and _same(value.strip(), token)
    return _same(request.cookies.get(COOKIE), cookie_for(token))
