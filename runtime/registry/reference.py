"""Image references as Docker reads them: [host[:port]/]path[:tag][@sha256:digest]."""

import re
from dataclasses import dataclass

from pyinspect.errors import UsageError

DEFAULT_DOMAIN = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])"
    r"(?::[0-9]{1,5})?$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Reference:
    """A fully qualified reference; `tag` is 'latest' when neither tag nor digest is given."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def familiar(self) -> str:
        """The name as Docker shows it: busybox, user/app, host:5000/app."""
        if self.domain == DEFAULT_DOMAIN:
            return (
                self.path[len("library/") :]
                if self.path.startswith("library/") and self.path.count("/") == 1
                else self.path
            )
        return f"{self.domain}/{self.path}"

    @property
    def tagged(self) -> str:
        """familiar:tag, the form the image store keys tags by ('' for digest-only)."""
        return f"{self.familiar}:{self.tag}" if self.tag else ""

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def target(self) -> str:
        """What the manifest endpoint takes: the digest if pinned, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        s = self.familiar
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def registry_key(domain: str) -> str:
    """The config.json `auths` key Docker uses for a registry."""
    domain = normalize_domain(domain)
    return DOCKER_HUB_AUTH_KEY if domain == DEFAULT_DOMAIN else domain


def normalize_domain(domain: str) -> str:
    """'index.docker.io', 'https://index.docker.io/v1/' -> 'docker.io'; checks the syntax."""
    d = domain.strip()
    for prefix in ("https://", "http://"):
        d = d.removeprefix(prefix)
    d = d.split("/", 1)[0]
    if d in ("index.docker.io", "registry-1.docker.io", "docker.io"):
        return DEFAULT_DOMAIN
    if not d or not _DOMAIN.match(d):
        raise UsageError(f"registry {domain!r}: not a host[:port]")
    return d


def parse(ref: str) -> Reference:
    """Parse NAME[:TAG][@DIGEST] with Docker's defaults; UsageError naming what is wrong."""
    if not isinstance(ref, str) or not ref or ref != ref.strip():
        raise UsageError(f"image reference {ref!r}: empty or padded with spaces")
    rest, digest = ref, ""
    if "@" in ref:
        rest, digest = ref.split("@", 1)
        if not _DIGEST.match(digest):
            raise UsageError(f"image reference {ref!r}: digest is not sha256:<64 hex digits>")
    tag = ""
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise UsageError(f"image reference {ref!r}: invalid tag {tag!r}")
    first, _, remainder = rest.partition("/")
    if remainder and (
        "." in first or ":" in first or first == "localhost" or first.startswith("[")
    ):
        domain, path = normalize_domain(first), remainder
    else:
        domain, path = DEFAULT_DOMAIN, rest
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if len(path) > 255 or not all(_COMPONENT.match(c) for c in path.split("/")):
        raise UsageError(
            f"image reference {ref!r}: invalid repository name",
            "lowercase letters, digits and separators . _ - /",
        )
    if not tag and not digest:
        tag = "latest"
    return Reference(domain=domain, path=path, tag=tag, digest=digest)
