"""Local image references as pyinspect stores them: `name:tag`, Docker Hub prefixes
dropped (`docker.io/library/alpine:3.19` is `alpine:3.19`). Used by the image store and
by archive loading (names inside docker-save archives)."""

import re

from pyinspect.errors import UsageError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = (
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"
)
_NAME_RE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def parse_reference(ref: str) -> str:
    """'busybox' -> 'busybox:latest'; Docker Hub prefixes dropped; UsageError if malformed."""
    if not isinstance(ref, str) or not ref or ref != ref.strip():
        raise UsageError(f"image reference {ref!r}: empty or padded with spaces")
    if "@" in ref:
        raise UsageError(
            f"image reference {ref!r}: digest references are not supported",
            "use a name:tag or an image id",
        )
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
    for prefix in (
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ):
        if name.startswith(prefix) and "/" in name:
            name = name[len(prefix) :]
            break
    if len(name) > 255 or not _NAME_RE.match(name):
        raise UsageError(
            f"image reference {ref!r}: invalid repository name",
            "lowercase letters, digits and separators . _ - /",
        )
    if not _TAG_RE.match(tag):
        raise UsageError(f"image reference {ref!r}: invalid tag")
    return f"{name}:{tag}"
