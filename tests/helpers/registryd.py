"""A real registry for the tests: Debian's docker-registry (Distribution 2.x) on 127.0.0.1.

`Registry(tmp)` writes a config with filesystem storage under tmp and an htpasswd file
made by `htpasswd -Bbn` (bcrypt, as the Docker tutorial makes it), starts the server on
a free loopback port, waits for /v2/ and stops it on close().
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

USER, PASSWORD = "pm-admin", "pm-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, tmp, auth=True, token=None, netns=None, ip="127.0.0.1", tls=None):
        """netns: a conftest.Netns to serve in (then `ip` is an address of it, port 5000);
        tls: (certificate path, key path) to serve HTTPS."""
        self.dir = Path(tmp)
        self.data = self.dir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = 5000 if netns else free_port()
        self.host = f"{ip}:{self.port}"
        self.netns = netns
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.data}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: {self.host}",
        ]
        if tls:
            lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if token:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {token['realm']}",
                f"    service: {token['service']}",
                f"    issuer: {token['issuer']}",
                f"    rootcertbundle: {token['cert']}",
            ]
        elif auth:
            ht = subprocess.run(
                ["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True
            ).stdout
            (self.dir / "htpasswd").write_text(ht)
            lines += [
                "auth:",
                "  htpasswd:",
                "    realm: pm-realm",
                f"    path: {self.dir / 'htpasswd'}",
            ]
        (self.dir / "config.yml").write_text("\n".join(lines) + "\n")
        self.log = open(self.dir / "registry.log", "wb")
        argv = ["docker-registry", "serve", str(self.dir / "config.yml")]
        if netns:
            argv = ["nsenter", f"--net={netns.path}", *argv]
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        scheme = "https" if tls else "http"
        deadline = time.monotonic() + 20
        while True:
            if netns:
                code = netns.run(
                    "curl",
                    "-sk",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    f"{scheme}://{self.host}/v2/",
                    check=False,
                ).stdout
                if code in ("200", "401"):
                    break
            else:
                try:
                    r = requests.get(f"{scheme}://{self.host}/v2/", timeout=2, verify=False)
                    if r.status_code in (200, 401):
                        break
                except requests.ConnectionError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(
                    f"docker-registry did not start: "
                    f"{(self.dir / 'registry.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)

    def blob_path(self, digest):
        hexd = digest.split(":", 1)[1]
        return self.data / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def store_snapshot(root):
    """{relative path: (mode, size, sha256 or link)} of an image store, for 'unchanged'."""
    import hashlib

    out = {}
    base = Path(root) / "images"
    for dirpath, dirnames, files in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        if rel_dir == "tmp" or rel_dir.startswith("tmp/"):
            dirnames[:] = []
            continue
        for n in dirnames + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, base)
            if rel == "tmp" or rel == "lock":
                continue
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = (st.st_mode, st.st_size, hashlib.sha256(f.read()).hexdigest())
            else:
                out[rel] = (st.st_mode,)
    return out
