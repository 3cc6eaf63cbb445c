"""HTTP for the OCI Distribution API v2, on requests (a well-kept client with streaming,
redirects that drop credentials across hosts, TLS verification and connection pooling).

- HTTPS first; plain HTTP only for loopback registries (localhost, 127.0.0.0/8, ::1) and
  those listed in `insecure-registries` (TLS is then not verified either, as Docker does).
- Authentication follows the `WWW-Authenticate` challenge of `/v2/`: Basic sends the
  stored credentials; Bearer fetches a token for the repository scope from the realm
  (with the credentials, if any) and retries once.
- Registry errors ({"errors": [{"code", "message"}]}) become one-line PyinspectErrors.
"""

import ipaddress
import re
from urllib.parse import urljoin

from pyinspect.errors import (
    CorruptInputError,
    NotFoundError,
    PyinspectError,
    UnavailableError,
    UsageError,
)

from .credentials import Credentials
from .reference import normalize_domain

MAX_MANIFEST = 4 << 20
_TLS_HINT = (
    "list it under insecure-registries in the root's config.json if it serves "
    "plain HTTP or a certificate you trust anyway"
)
_TIMEOUT = (10, 60)
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


class RegistryUnavailable(UnavailableError):
    """The registry cannot be reached or answered with a server error."""


class RegistryAuthError(PyinspectError):
    """The registry refused the credentials (or wanted some)."""

    exit_code = 1


def is_insecure(domain, insecure_registries=()):
    """Plain HTTP allowed: a loopback registry or one listed (host[:port] or a CIDR)."""
    host = domain.rsplit(":", 1)[0] if not domain.endswith("]") else domain
    host = host.strip("[]")
    if host == "localhost" or domain in insecure_registries:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.is_loopback:
        return True
    for entry in insecure_registries:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def parse_challenge(header):
    """('bearer'|'basic', {param: value}) from a WWW-Authenticate header, or None."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = value.replace('\\"', '"')
    return scheme.lower(), params


def _reason(exc):
    m = re.search(r"\[SSL(?:: [A-Z_]+)?\] ([^(\'\")]+)", str(exc))
    if m:
        return m.group(1).strip()
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if m:
        return m.group(1).strip()
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def _registry_message(resp):
    """'CODE: message' from a registry error body, else the HTTP status line."""
    try:
        errors = resp.json().get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            e = errors[0]
            code = str(e.get("code") or "").lower().replace("_", " ")
            msg = str(e.get("message") or "")
            return f"{code}: {msg}" if code and msg and code not in msg else (msg or code)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {resp.status_code} {resp.reason or ''}".strip()


class BodyReader:
    """A streamed response body as a file with read(n) (content-encoding decoded)."""

    def __init__(self, resp, chunk=1 << 20):
        self.resp = resp
        self.it = resp.iter_content(chunk)
        self.buf = b""

    def read(self, n=1 << 20):
        import requests

        while len(self.buf) < n:
            try:
                chunk = next(self.it, b"")
            except requests.RequestException as exc:
                raise RegistryUnavailable(f"download interrupted: {_reason(exc)}") from None
            if not chunk:
                break
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def close(self):
        self.resp.close()


class RegistryClient:
    """One registry (host[:port]); requests go through `request()` with a scope."""

    def __init__(
        self, domain, credentials: Credentials | None = None, insecure_registries=(), scheme=None
    ):
        """`scheme`: 'https' or 'http' to use only that one (a mirror given as a URL)."""
        import requests

        from .reference import DEFAULT_DOMAIN, DOCKER_HUB_API

        self.domain = normalize_domain(domain)
        self.host = DOCKER_HUB_API if self.domain == DEFAULT_DOMAIN else self.domain
        self.credentials = credentials
        self.insecure = is_insecure(self.domain, tuple(insecure_registries))
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "pyinspect (Docker-compatible registry client)"
        self.base: str | None = None
        self.challenge: tuple[str, dict] | None = None
        self.tokens: dict[str, str] = {}
        self.schemes = (scheme,) if scheme else ("https", "http") if self.insecure else ("https",)

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- connection and auth ----------------------------------------------------------
    def _send(self, method, url, **kw):
        import requests

        kw.setdefault("timeout", _TIMEOUT)
        kw.setdefault("verify", not self.insecure)
        try:
            return self.session.request(method, url, **kw)
        except requests.exceptions.SSLError as exc:
            raise RegistryUnavailable(
                f"registry {self.domain}: TLS failed: {_reason(exc)}", _TLS_HINT
            ) from None
        except requests.RequestException as exc:
            raise RegistryUnavailable(
                f"registry {self.domain}: cannot connect: {_reason(exc)}"
            ) from None

    def ping(self):
        """GET /v2/ once: choose the scheme, remember the auth challenge."""
        if self.base is not None:
            return
        import requests

        if self.insecure:
            import urllib3

            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        resp = None
        for scheme in self.schemes:
            try:
                resp = self.session.get(
                    f"{scheme}://{self.host}/v2/", timeout=_TIMEOUT, verify=not self.insecure
                )
            except requests.exceptions.SSLError as exc:
                if self.insecure and scheme != self.schemes[-1]:
                    continue
                raise RegistryUnavailable(
                    f"registry {self.domain}: TLS failed: {_reason(exc)}", _TLS_HINT
                ) from None
            except requests.RequestException as exc:
                if scheme != self.schemes[-1]:
                    continue
                raise RegistryUnavailable(
                    f"registry {self.domain}: cannot connect: {_reason(exc)}"
                ) from None
            if resp.status_code == 400 and scheme == "https" and self.insecure:
                continue  # a plain-HTTP server answering a TLS hello
            self.base = f"{scheme}://{self.host}"
            break
        if self.base is None or resp is None:
            raise RegistryUnavailable(f"registry {self.domain}: cannot connect")
        if resp.status_code == 401:
            self.challenge = parse_challenge(resp.headers.get("WWW-Authenticate"))
        elif resp.status_code >= 400 and resp.status_code != 404:
            raise RegistryUnavailable(
                f"registry {self.domain}: /v2/ answered {_registry_message(resp)}",
                "is it an OCI distribution (v2) registry?",
            )
        resp.close()

    def _token(self, scope, challenge=None):
        _, params = challenge or self.challenge or ("", {})
        realm = params.get("realm")
        if not realm:
            raise RegistryUnavailable(f"registry {self.domain}: Bearer challenge without realm")
        query = {"service": params.get("service", "")} if params.get("service") else {}
        if scope:
            query["scope"] = scope.split(" ") if " " in scope else scope  # repeated param
        if self.credentials:
            query["account"] = self.credentials.username
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        import requests

        try:
            resp = self.session.get(
                realm, params=query, auth=auth, timeout=_TIMEOUT, verify=not self.insecure
            )
        except requests.RequestException as exc:
            raise RegistryUnavailable(
                f"registry {self.domain}: token service {realm}: {_reason(exc)}"
            ) from None
        if resp.status_code in (401, 403):
            why = "incorrect username or password" if auth else "credentials needed"
            raise RegistryAuthError(
                f"registry {self.domain}: unauthorized: {why}",
                None if auth else f"pyinspect login {self.domain}",
            )
        if resp.status_code != 200:
            raise RegistryUnavailable(
                f"registry {self.domain}: token service answered {_registry_message(resp)}"
            )
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryUnavailable(f"registry {self.domain}: token service sent no token")
        self.tokens[scope] = token
        return token

    def _auth_headers(self, scope):
        if not self.challenge:
            return {}
        scheme = self.challenge[0]
        if scheme == "bearer":
            token = self.tokens.get(scope) or self._token(scope)
            return {"Authorization": f"Bearer {token}"}
        if scheme == "basic" and self.credentials:
            import base64

            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def request(self, method, path_or_url, scope="", headers=None, what="", **kw):
        """Send with auth for `scope`; one retry after a fresh challenge on 401."""
        self.ping()
        url = path_or_url if "://" in path_or_url else f"{self.base}{path_or_url}"
        for attempt in (0, 1):
            h = {**(headers or {}), **self._auth_headers(scope)}
            resp = self._send(method, url, headers=h, **kw)
            if resp.status_code != 401 or attempt:
                break
            challenge = parse_challenge(resp.headers.get("WWW-Authenticate"))
            if challenge is None:
                break
            self.challenge = challenge
            self.tokens.pop(scope, None)
            if challenge[0] == "basic" and not self.credentials:
                break
            data = kw.get("data")
            if data is not None and hasattr(data, "seek"):
                data.seek(0)
            resp.close()
        if resp.status_code == 401:
            resp.close()
            msg = (
                "incorrect username or password" if self.credentials else "authentication required"
            )
            raise RegistryAuthError(
                f"{what or self.domain}: unauthorized: {msg}",
                None if self.credentials else f"pyinspect login {self.domain}",
            )
        return resp

    def login(self):
        """Check the credentials against the registry (as `docker login` does)."""
        self.ping()
        if not self.challenge:
            return
        if self.challenge[0] == "bearer":
            self._token("")
            return
        resp = self.request("GET", "/v2/", what=f"login to {self.domain}")
        resp.close()
        if resp.status_code != 200:
            raise RegistryUnavailable(f"login to {self.domain}: {_registry_message(resp)}")

    # ---- the API ---------------------------------------------------------------------
    def get_json(self, url, what):
        """GET `url` (another API of the registry's owner, no registry auth): its JSON."""
        resp = self._send("GET", url)
        try:
            if resp.status_code != 200:
                raise self.fail(resp, what)
            return resp.json()
        except ValueError:
            raise RegistryUnavailable(f"{what}: the answer is not JSON") from None
        finally:
            resp.close()

    def fail(self, resp, what):
        """The error for a non-success response (closes it)."""
        msg = _registry_message(resp)
        resp.close()
        if resp.status_code == 404:
            return NotFoundError(f"{what}: {msg}")
        if resp.status_code == 403:
            return RegistryAuthError(f"{what}: denied: {msg}")
        if resp.status_code in (400, 405, 413, 415):
            return UsageError(f"{what}: the registry refused it: {msg}")
        return RegistryUnavailable(f"{what}: {msg}")

    def get_manifest(self, repo, ref, accept, what):
        """(raw bytes, Content-Type, Docker-Content-Digest or '') of a manifest or index."""
        scope = f"repository:{repo}:pull"
        resp = self.request(
            "GET",
            f"/v2/{repo}/manifests/{ref}",
            scope=scope,
            headers={"Accept": ", ".join(accept)},
            stream=True,
            what=what,
        )
        if resp.status_code != 200:
            raise self.fail(resp, what)
        reader = BodyReader(resp)
        try:
            raw = reader.read(MAX_MANIFEST + 1)
        finally:
            reader.close()
        if len(raw) > MAX_MANIFEST:
            raise CorruptInputError(f"{what}: manifest larger than {MAX_MANIFEST} bytes")
        ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
        return raw, ctype, resp.headers.get("Docker-Content-Digest", "")

    def open_blob(self, repo, digest, what):
        """A streamed blob body (BodyReader); the caller verifies and closes it."""
        scope = f"repository:{repo}:pull"
        resp = self.request(
            "GET", f"/v2/{repo}/blobs/{digest}", scope=scope, stream=True, what=what
        )
        if resp.status_code != 200:
            raise self.fail(resp, what)
        return BodyReader(resp)

    def blob_exists(self, repo, digest, what):
        resp = self.request(
            "HEAD", f"/v2/{repo}/blobs/{digest}", scope=f"repository:{repo}:pull,push", what=what
        )
        resp.close()
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise self.fail(resp, what)

    def mount_blob(self, repo, digest, from_repo, what):
        """Cross-repository mount of a blob the registry has in `from_repo`: True if done."""
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scope=f"repository:{repo}:pull,push repository:{from_repo}:pull",
            params={"mount": digest, "from": from_repo},
            what=what,
        )
        resp.close()
        if resp.status_code == 201:
            return True
        if resp.status_code == 202:  # not mountable: the registry opened an upload instead
            location = resp.headers.get("Location")
            if location:
                self.request(
                    "DELETE",
                    urljoin(f"{self.base}/", location),
                    scope=f"repository:{repo}:pull,push",
                    what=what,
                ).close()
            return False
        if resp.status_code in (401, 403, 404):
            return False
        raise self.fail(resp, what)

    def upload_blob(self, repo, digest, fileobj, size, what, chunk_size=None, progress=None):
        """Upload a blob: monolithic PUT, or PATCH chunks of chunk_size then PUT."""
        scope = f"repository:{repo}:pull,push"
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, what=what)
        if resp.status_code != 202 or not resp.headers.get("Location"):
            raise self.fail(resp, what)
        location = urljoin(f"{self.base}/", resp.headers["Location"])
        resp.close()
        octet = {"Content-Type": "application/octet-stream"}
        if chunk_size and size > chunk_size:
            sent = 0
            while sent < size:
                data = fileobj.read(min(chunk_size, size - sent))
                if not data:
                    raise CorruptInputError(f"{what}: blob shorter than its size")
                resp = self.request(
                    "PATCH",
                    location,
                    scope=scope,
                    data=data,
                    what=what,
                    headers={
                        **octet,
                        "Content-Length": str(len(data)),
                        "Content-Range": f"{sent}-{sent + len(data) - 1}",
                    },
                )
                if resp.status_code != 202:
                    raise self.fail(resp, what)
                location = urljoin(f"{self.base}/", resp.headers.get("Location", location))
                resp.close()
                sent += len(data)
                if progress:
                    progress(sent)
            resp = self.request(
                "PUT",
                location,
                scope=scope,
                params={"digest": digest},
                headers={"Content-Length": "0"},
                what=what,
            )
        else:
            resp = self.request(
                "PUT",
                location,
                scope=scope,
                params={"digest": digest},
                data=fileobj,
                what=what,
                headers={**octet, "Content-Length": str(size)},
            )
            if progress and resp.status_code == 201:
                progress(size)
        if resp.status_code != 201:
            raise self.fail(resp, what)
        resp.close()

    def put_manifest(self, repo, ref, body, media_type, what):
        """PUT a manifest; returns the digest the registry reports."""
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            scope=f"repository:{repo}:pull,push",
            data=body,
            what=what,
            headers={"Content-Type": media_type},
        )
        if resp.status_code not in (200, 201):
            raise self.fail(resp, what)
        resp.close()
        return resp.headers.get("Docker-Content-Digest", "")
