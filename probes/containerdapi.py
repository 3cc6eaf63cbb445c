"""containerd's own record of a container, through its API socket.

containerd speaks gRPC; rather than a gRPC stack, pyinspect asks containerd's own client,
`ctr`, which ships with it (`ctr -a SOCKET -n NAMESPACE containers info ID`: image,
labels, runtime, creation time, OCI spec). The sockets are those of every running
`containerd` (its `--address`/`-a`, else the `[grpc] address` of its `--config` file,
else the default), Docker's managed containerd among them.
"""

import json
import os
import shutil
import subprocess
import tomllib

DEFAULT_SOCK = "/run/containerd/containerd.sock"


def _args(pid: str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() != "containerd":
                return None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return None


def _value(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1 :]
    return None


def sockets() -> list[str]:
    """The API socket of every running containerd (each once), and the default one."""
    out: list[str] = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        args = _args(pid)
        if args is None:
            continue
        sock = _value(args, "--address", "-a")
        conf = _value(args, "--config", "-c")
        if sock is None and conf:
            try:
                with open(conf, "rb") as f:
                    sock = (tomllib.load(f).get("grpc") or {}).get("address")
            except (OSError, tomllib.TOMLDecodeError):
                sock = None
        sock = sock or DEFAULT_SOCK
        if sock not in out:
            out.append(sock)
    if os.path.exists(DEFAULT_SOCK) and DEFAULT_SOCK not in out:
        out.append(DEFAULT_SOCK)
    return out


def container_info(sock: str, namespace: str, cid: str, timeout: float = 3.0) -> dict | None:
    """`ctr containers info` of one container as a dict; None when ctr is missing, the
    socket does not answer or containerd does not know the container there."""
    ctr = shutil.which("ctr")
    if not ctr or not os.path.exists(sock):
        return None
    try:
        proc = subprocess.run(
            [ctr, "-a", sock, "-n", namespace, "containers", "info", cid],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None
