"""Image settings from `<root>/config.json`: insecure registries, mirrors, extraction limits.

    {"insecure-registries": ["registry.lan:5000", "10.0.0.0/8"],
     "registry-mirrors": ["https://mirror.lan", "http://127.0.0.1:5000"],
     "image-limits": {"max-bytes": 68719476736, "max-ratio": 100,
                      "ratio-floor-bytes": 268435456, "min-free-bytes": 536870912}}

Mirrors serve Docker Hub's images (as Docker's registry-mirrors): tried in order before
docker.io itself, with the scheme their URL names. Every key is optional; the limits'
defaults are sized for real images (tens of GB, layers that compress a few times) and
refuse the bombs an archive or registry can send.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from pyinspect.errors import UsageError

CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class ExtractLimits:
    """Limits on what one load or pull may write (checked while streaming)."""

    max_bytes: int = 64 << 30  # decompressed layer tars, and extracted file sizes
    max_ratio: int = 100  # written bytes per byte of input (archive or blobs)
    ratio_floor_bytes: int = 256 << 20  # below this much the ratio is not checked
    min_free_bytes: int = 512 << 20  # what must stay free on the store's filesystem


@dataclass(frozen=True)
class ImageSettings:
    insecure_registries: tuple = ()
    registry_mirrors: tuple = ()  # (scheme, host[:port]) pairs
    limits: ExtractLimits = field(default_factory=ExtractLimits)


_LIMIT_KEYS = {
    "max-bytes": "max_bytes",
    "max-ratio": "max_ratio",
    "ratio-floor-bytes": "ratio_floor_bytes",
    "min-free-bytes": "min_free_bytes",
}


def load_settings(root: str | Path) -> ImageSettings:
    """The settings in `<root>/config.json` (defaults when the file or a key is missing)."""
    path = Path(root) / CONFIG_NAME
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return ImageSettings()
    except (OSError, ValueError) as exc:
        raise UsageError(f"config {path}: not readable JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"config {path}: not a JSON object")
    insecure = raw.get("insecure-registries", [])
    if not isinstance(insecure, list) or not all(isinstance(x, str) and x for x in insecure):
        raise UsageError(f"config {path}: 'insecure-registries' is not a list of strings")
    mirrors = raw.get("registry-mirrors", [])
    if not isinstance(mirrors, list) or not all(isinstance(x, str) for x in mirrors):
        raise UsageError(f"config {path}: 'registry-mirrors' is not a list of URLs")
    parsed = []
    for url in mirrors:
        scheme, sep, rest = url.partition("://")
        host = rest.rstrip("/")
        if not sep or scheme not in ("http", "https") or not host or "/" in host:
            raise UsageError(f"config {path}: registry mirror {url!r} is not http(s)://host[:port]")
        parsed.append((scheme, host))
    lim = raw.get("image-limits", {})
    if not isinstance(lim, dict):
        raise UsageError(f"config {path}: 'image-limits' is not an object")
    values = {}
    for key, value in lim.items():
        if key not in _LIMIT_KEYS:
            raise UsageError(
                f"config {path}: unknown image limit {key!r}", f"known: {', '.join(_LIMIT_KEYS)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"config {path}: image limit {key!r} is not a whole number >= 0")
        values[_LIMIT_KEYS[key]] = value
    return ImageSettings(
        insecure_registries=tuple(insecure),
        registry_mirrors=tuple(parsed),
        limits=ExtractLimits(**values),
    )
