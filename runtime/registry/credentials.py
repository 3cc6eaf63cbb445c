"""Registry credentials in Docker's config.json: {"auths": {"<registry>": {"auth": b64}}}.

The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (what `docker
login` writes and skopeo reads). Written atomically with mode 0600; keys pyinspect does
not know (credsStore, proxies...) are kept as they are.
"""

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pyinspect.errors import CorruptInputError, UsageError

from ..fsutil import atomic_write
from .reference import registry_key


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    return Path(base) / "config.json"


def _read(path):
    try:
        data = json.loads(path.read_bytes() or b"{}")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CorruptInputError(f"credentials {path}: not readable JSON: {exc}",
                                "fix or remove the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise CorruptInputError(f"credentials {path}: not a Docker config.json "
                                "(no 'auths' object)", "fix or remove the file")
    return data


def get(domain: str):
    """Credentials stored for a registry, or None."""
    path = config_path()
    entry = _read(path).get("auths", {}).get(registry_key(domain))
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise CorruptInputError(f"credentials {path}: entry for {domain} is not an object")
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True) \
                .decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise CorruptInputError(f"credentials {path}: 'auth' for {domain} is not "
                                    "base64 of user:password")
        return Credentials(user, password)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    return None


def store(domain: str, creds: Credentials) -> Path:
    """Save credentials for a registry (mode 0600)."""
    if ":" in creds.username:
        raise UsageError("login: the username may not contain ':'")
    path = config_path()
    data = _read(path)
    auth = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    data.setdefault("auths", {})[registry_key(domain)] = {"auth": auth}
    _write(path, data)
    return path


def remove(domain: str) -> bool:
    """Forget a registry's credentials; False when none were stored."""
    path = config_path()
    data = _read(path)
    key = registry_key(domain)
    if key not in data.get("auths", {}):
        return False
    del data["auths"][key]
    _write(path, data)
    return True


def _write(path, data):
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_write(path, fsync=True) as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(json.dumps(data, indent="\t").encode() + b"\n")
