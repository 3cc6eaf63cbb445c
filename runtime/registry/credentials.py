"""Registry credentials in Docker's config.json: {"auths": {"<registry>": {"auth": b64}}}.

The file is `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json` (what `docker
login` writes and skopeo reads). Written atomically with mode 0600; keys pyinspect does
not know (proxies...) are kept as they are. A credential helper named by `credHelpers`
(per registry) or `credsStore` (all) is used as Docker uses it: `docker-credential-<name>
get|store|erase` with the registry on stdin; `auths` then keeps an empty entry.
"""

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pyinspect.errors import CorruptInputError, UnavailableError, UsageError

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
        raise CorruptInputError(
            f"credentials {path}: not readable JSON: {exc}", "fix or remove the file"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise CorruptInputError(
            f"credentials {path}: not a Docker config.json (no 'auths' object)",
            "fix or remove the file",
        )
    return data


def _helper(data, key):
    """The credential helper for registry `key`, or None."""
    helpers = data.get("credHelpers")
    name = helpers.get(key) if isinstance(helpers, dict) else None
    name = name or data.get("credsStore")
    if name is None:
        return None
    if not isinstance(name, str) or not name or "/" in name:
        raise CorruptInputError(f"credentials {config_path()}: bad credential helper name {name!r}")
    return name


def _run_helper(name, action, payload):
    import shutil
    import subprocess

    exe = shutil.which(f"docker-credential-{name}")
    if exe is None:
        raise UnavailableError(
            f"credential helper docker-credential-{name} is not installed",
            f"install it or remove credsStore/credHelpers from {config_path()}",
        )
    try:
        proc = subprocess.run(
            [exe, action], input=payload, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UnavailableError(
            f"credential helper docker-credential-{name} {action}: {exc}"
        ) from None
    return proc


def get(domain: str):
    """Credentials stored for a registry (in config.json or its helper), or None."""
    path = config_path()
    data = _read(path)
    key = registry_key(domain)
    helper = _helper(data, key)
    if helper:
        proc = _run_helper(helper, "get", key)
        if proc.returncode != 0:
            if "credentials not found" in (proc.stdout + proc.stderr).lower():
                return None
            raise UnavailableError(
                f"credential helper docker-credential-{helper} get: "
                f"{(proc.stderr or proc.stdout).strip()[:200]}"
            )
        try:
            out = json.loads(proc.stdout)
            return Credentials(str(out["Username"]), str(out["Secret"]))
        except (ValueError, KeyError, TypeError):
            raise CorruptInputError(
                f"credential helper docker-credential-{helper} get: "
                "not a JSON object with Username and Secret"
            ) from None
    entry = data.get("auths", {}).get(key)
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise CorruptInputError(f"credentials {path}: entry for {domain} is not an object")
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            user, sep, password = (
                base64.b64decode(entry["auth"], validate=True).decode("utf-8").partition(":")
            )
        except (ValueError, UnicodeDecodeError):
            sep = ""
        if not sep:
            raise CorruptInputError(
                f"credentials {path}: 'auth' for {domain} is not base64 of user:password"
            )
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
    key = registry_key(domain)
    helper = _helper(data, key)
    if helper:
        payload = json.dumps(
            {"ServerURL": key, "Username": creds.username, "Secret": creds.password}
        )
        proc = _run_helper(helper, "store", payload)
        if proc.returncode != 0:
            raise UnavailableError(
                f"credential helper docker-credential-{helper} store: "
                f"{(proc.stderr or proc.stdout).strip()[:200]}"
            )
        data.setdefault("auths", {})[key] = {}
        _write(path, data)
        return path
    auth = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    data.setdefault("auths", {})[key] = {"auth": auth}
    _write(path, data)
    return path


def remove(domain: str) -> bool:
    """Forget a registry's credentials; False when none were stored."""
    path = config_path()
    data = _read(path)
    key = registry_key(domain)
    helper = _helper(data, key)
    erased = False
    if helper:
        erased = _run_helper(helper, "erase", key).returncode == 0
    if key not in data.get("auths", {}):
        return erased
    del data["auths"][key]
    _write(path, data)
    return True


def _write(path, data):
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic_write(path, fsync=True) as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(json.dumps(data, indent="\t").encode() + b"\n")
