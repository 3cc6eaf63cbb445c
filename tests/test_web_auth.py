"""The dashboard's access rules through Flask's test client: token, Host, Origin, CSRF.

The same rules over a real socket (uvicorn, the Unix socket, the rebinding run against
a real trace) are in test_web_serve.py and test_web_trace.py.
"""

import pytest

from pyinspect.web import auth
from pyinspect.web.app import create_app

TOKEN = "t0ken-" + "x" * 37  # the length of a real one (token_urlsafe(32))


class Recorder:
    """A tracer factory that records calls (the view must never get this far)."""

    def __init__(self):
        self.calls = []

    def __call__(self, root, container, **kw):
        self.calls.append(container)
        raise AssertionError("a trace was started")


@pytest.fixture
def app(state_root):
    rec = Recorder()
    app = create_app(state_root, token=TOKEN, tracer_factory=rec)
    app.recorder = rec
    return app


def bearer(token=TOKEN, **more):
    return {"Authorization": f"Bearer {token}", **more}


def get_routes(app):
    """Every GET route without arguments (pages and API)."""
    return sorted(
        r.rule
        for r in app.url_map.iter_rules()
        if "GET" in r.methods and not r.arguments and r.endpoint != "static"
    )


def test_every_page_and_api_needs_the_token(app):
    c = app.test_client()
    routes = get_routes(app)
    assert {"/", "/containers", "/traces", "/api/host", "/api/traces", "/metrics"} <= set(routes)
    for rule in [*routes, "/static/style.css", "/api/traces/1/ladder", "/runbooks/x"]:
        r = c.get(rule)
        assert r.status_code == 401, rule
        assert auth.csrf_for(TOKEN).encode() not in r.data, rule
    assert c.get("/api/traces", headers=bearer()).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Bearer nope",
        "Bearer ",
        "Bearer",
        "Basic " + TOKEN,
        "Bearer " + "é" * len(TOKEN),  # non-ASCII, right length: was a 500
        "Bearer " + TOKEN[:-1] + "é",
        "Bearer " + TOKEN + "x",
        "Bearer " + "\x00" * len(TOKEN),
        "Bearer " + "x" * 5000,
    ],
)
def test_malformed_tokens_are_401_never_500(app, header):
    c = app.test_client()
    r = c.get("/api/traces", headers={"Authorization": header.encode().decode("latin-1")})
    assert r.status_code == 401, (header, r.status_code)
    assert r.is_json and "token" in r.json["error"]


@pytest.mark.parametrize("value", ["é" * 10, "%C3%A9", "", "x" * 64, "\u2603" * 64])
def test_malformed_cookie_and_query_tokens_are_401(app, value):
    c = app.test_client()
    c.set_cookie(auth.COOKIE, value.encode().decode("latin-1"))
    assert c.get("/api/traces").status_code == 401
    assert c.get("/api/traces", query_string={"token": value}).status_code == 401


def test_login_url_sets_a_strict_httponly_cookie_and_redirects_clean(app):
    c = app.test_client()
    r = c.get(f"/flows?session=3&token={TOKEN}")
    assert r.status_code == 303
    assert r.headers["Location"] == "/flows?session=3"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert TOKEN not in cookie  # a value derived from it
    assert c.get("/flows?session=3").status_code == 200  # the cookie works
    assert c.get("/api/traces").status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:80",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "",
        "[::1",
        "127.0.0.1:80:80",
        "a b",
        "user@127.0.0.1",
    ],
)
def test_foreign_host_is_403_even_with_the_token(app, host):
    c = app.test_client()
    r = c.get("/traces", headers=bearer(Host=host))
    assert r.status_code == 403
    assert auth.csrf_for(TOKEN).encode() not in r.data  # no CSRF value handed out
    r = c.post(
        "/api/traces",
        json={"container": "web"},
        headers=bearer(Host=host, **{"X-CSRF-Token": auth.csrf_for(TOKEN)}),
    )
    assert r.status_code == 403
    assert app.recorder.calls == []


def test_host_policy_of_a_bound_server():
    p = auth.HostPolicy.for_bind("127.0.0.1", 8900, ["dash.example"])
    assert p.allows("127.0.0.1:8900") and p.allows("localhost:8900") and p.allows("[::1]:8900")
    assert p.allows("dash.example") and p.allows("dash.example:443")
    assert not p.allows("127.0.0.1:8901") and not p.allows("127.0.0.1")
    assert not p.allows("evil.example:8900") and not p.allows("10.0.0.1:8900")
    wild = auth.HostPolicy.for_bind("0.0.0.0", 8900)
    assert wild.allows("10.1.2.3:8900") and wild.allows("[fe80::1]:8900")
    assert not wild.allows("evil.example:8900") and not wild.allows("localhost.evil:8900")
    one = auth.HostPolicy.for_bind("10.1.2.3", 8900)
    assert one.allows("10.1.2.3:8900") and not one.allows("localhost:8900")
    assert not one.allows("10.1.2.4:8900")
    unix = auth.HostPolicy(names=set())
    assert unix.allows("localhost", unix=True) and not unix.allows("evil.example", unix=True)


def test_post_needs_csrf_and_a_same_origin(app):
    c = app.test_client()
    csrf = auth.csrf_for(TOKEN)
    # no CSRF value
    assert c.post("/api/traces", json={}, headers=bearer()).status_code == 403
    # wrong and malformed CSRF values
    for bad in ("0" * 64, "é" * 64, ""):
        h = bearer(**{"X-CSRF-Token": bad.encode().decode("latin-1")})
        assert c.post("/api/traces", json={}, headers=h).status_code == 403
    # a foreign Origin, even with the token and CSRF value
    for origin in ("http://evil.example", "null", "http://localhost:1", "file://"):
        h = bearer(Origin=origin, **{"X-CSRF-Token": csrf})
        r = c.post("/api/traces", json={"container": "web"}, headers=h)
        assert r.status_code == 403, origin
    assert app.recorder.calls == []
    # same origin (or none, a non-browser client): reaches the view (400: no container)
    for extra in ({"Origin": "http://localhost"}, {}):
        h = bearer(**{"X-CSRF-Token": csrf}, **extra)
        r = c.post("/api/traces", json={}, headers=h)
        assert r.status_code == 400 and "container name is required" in r.json["error"]


def test_pages_embed_csrf_only_for_an_authorized_request(app):
    c = app.test_client()
    r = c.get("/traces", headers=bearer())
    assert r.status_code == 200 and auth.csrf_for(TOKEN).encode() in r.data
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


def test_create_app_without_a_token_still_requires_one(state_root):
    app = create_app(state_root)
    token = app.config["PYINSPECT_TOKEN"]
    assert len(token) >= 40
    c = app.test_client()
    assert c.get("/api/traces").status_code == 401
    assert c.get("/api/traces", headers=bearer(token)).status_code == 200


def test_token_file_is_0600_and_kept(state_root):
    token, new = auth.load_or_create_token(state_root)
    assert new and (state_root / "web-token").stat().st_mode & 0o777 == 0o600
    assert auth.load_or_create_token(state_root) == (token, False)
    (state_root / "web-token").write_text("bad token é\n")
    token2, new2 = auth.load_or_create_token(state_root)
    assert new2 and token2 != token and set(token2) <= auth.TOKEN_CHARS
