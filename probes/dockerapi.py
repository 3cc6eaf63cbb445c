"""The Docker Engine API over its unix socket (http.client on AF_UNIX), and where the
running engines are.

An engine is found by its socket: `$DOCKER_HOST` (unix:// only), /var/run/docker.sock,
and the `-H unix://...` / `--exec-root` / `--data-root` arguments of every running
`dockerd` (so an engine started with its own socket, as the tests do, is found too).
"""

import http.client
import json
import os
import socket
from dataclasses import dataclass, field

DEFAULT_SOCK = "/var/run/docker.sock"
DEFAULT_EXEC_ROOT = "/var/run/docker"
DEFAULT_DATA_ROOT = "/var/lib/docker"


@dataclass
class Engine:
    """One Docker engine: how to reach it and where it keeps its state."""

    sock: str
    exec_root: str = DEFAULT_EXEC_ROOT
    data_root: str = DEFAULT_DATA_ROOT
    pid: int = 0
    netns: int | None = None  # inode of dockerd's network namespace, when running
    extra: dict = field(default_factory=dict)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


class DockerError(Exception):
    """The engine could not be reached or answered an error."""


def get(sock: str, path: str, timeout: float = 2.0):
    """GET `path` from the engine at unix socket `sock`: the decoded JSON body."""
    conn = _UnixConnection(sock, timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise DockerError(f"docker API at {sock}: {exc}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise DockerError(f"docker API at {sock}: GET {path}: {resp.status} {body[:200]!r}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DockerError(f"docker API at {sock}: GET {path}: {exc}") from None


def _opt(args: list[str], *names: str) -> list[str]:
    """Every value of the options `names` in an argv (`-H x`, `--host=x`, `-Hx`)."""
    out = []
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                out.append(args[i + 1])
            elif a.startswith(n + "="):
                out.append(a[len(n) + 1 :])
    return out


def engines(default_sock: str = DEFAULT_SOCK) -> list[Engine]:
    """Every Docker engine this host runs (or whose socket exists), each socket once."""
    found: dict[str, Engine] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "dockerd":
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        hosts = [h[len("unix://") :] for h in _opt(args, "-H", "--host") if h.startswith("unix://")]
        if not _opt(args, "-H", "--host"):
            hosts = [default_sock]
        try:
            netns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            netns = None
        for h in hosts:
            found.setdefault(
                os.path.realpath(h),
                Engine(
                    sock=h,
                    exec_root=(_opt(args, "--exec-root") or [DEFAULT_EXEC_ROOT])[-1],
                    data_root=(_opt(args, "--data-root", "-g", "--graph") or [DEFAULT_DATA_ROOT])[
                        -1
                    ],
                    pid=int(pid),
                    netns=netns,
                ),
            )
    candidates = [default_sock]
    env = os.environ.get("DOCKER_HOST", "")
    if env.startswith("unix://"):
        candidates.insert(0, env[len("unix://") :])
    for sock in candidates:
        real = os.path.realpath(sock)
        if real not in found and os.path.exists(sock):
            found[real] = Engine(sock=sock)
    return list(found.values())
