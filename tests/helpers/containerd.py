"""A standalone containerd (Debian's, from docker.io's dependencies) for a test, in a
network namespace the test made, with nothing of it left afterwards.

Its root, state, config and sockets live in a temp dir `pi-test-ctd-*`; the busybox image
is imported with `ctr images import` (no registry); containers run with `ctr run` under
the cgroup parent `/pi-test-ctd-*` (each in a network namespace of its own). On the host
containerd's runc shim still uses /run/containerd/{runc,fifo,s}: removed again when they
were not there before.

    with Containerd(netns_name) as ctd:
        pid = ctd.run("web", "sleep", "1000", memory=48 << 20)
"""

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

NAMESPACE = "pi-test"
IMAGE = "docker.io/library/pi-busybox:test"
HOST_DIRS = (
    "/run/containerd",
    "/run/containerd/runc",
    f"/run/containerd/runc/{NAMESPACE}",
    "/run/containerd/fifo",
    "/run/containerd/s",
)


def available() -> str | None:
    for path in ("/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2"):
        if not os.path.exists(path):
            return f"{path} missing (scripts/install.sh installs docker.io, which brings it)"
    return None


class Containerd:
    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.tag = uuid.uuid4().hex[:6]
        self.dir = tempfile.mkdtemp(prefix=f"pi-test-ctd-{self.tag}-", dir="/tmp")
        self.cgroup_parent = f"pi-test-ctd-{self.tag}"
        self.sock = os.path.join(self.dir, "c.sock")
        self.proc: subprocess.Popen | None = None
        self.ids: list[str] = []
        self._had = {d for d in HOST_DIRS if os.path.exists(d)}

    def start(self, timeout: float = 30) -> "Containerd":
        conf = os.path.join(self.dir, "config.toml")
        with open(conf, "w") as f:
            f.write(
                "version = 2\n"
                f'root = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                f'[grpc]\n  address = "{self.sock}"\n'
                f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
            )
        log = open(os.path.join(self.dir, "containerd.log"), "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.netns}", "containerd", "--config", conf],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.sock) and self.ctr("version", check=False).returncode == 0:
                self._import()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("containerd did not come up")

    def __enter__(self) -> "Containerd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def ctr(self, *args, check: bool = True, timeout: float = 60):
        proc = subprocess.run(
            ["ctr", "-a", self.sock, "-n", NAMESPACE, *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(map(str, args))}: {proc.stderr}")
        return proc

    def _import(self) -> None:
        from pyinspect.runtime import busybox_image

        from helpers import imagekit

        layer, mtime, version = busybox_image.build_layer()
        cfg = busybox_image.image_config(
            "sha256:" + hashlib.sha256(layer).hexdigest(), mtime, version
        )
        tar = os.path.join(self.dir, "busybox.tar")
        imagekit.docker_legacy(tar, [([layer], ["pi-busybox:test"], cfg)])
        self.ctr("images", "import", tar)

    def run(self, cid: str, *argv: str, memory: int | None = None) -> int:
        """Start a container (its own netns, our cgroup parent); its init's host pid."""
        opts = ["--cgroup", f"/{self.cgroup_parent}/{cid}"]
        if memory:
            opts += ["--memory-limit", str(memory)]
        self.ctr("run", "-d", *opts, IMAGE, cid, *argv)
        self.ids.append(cid)
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == cid:
                return int(parts[1])
        raise AssertionError(f"no task {cid}")

    def info(self, cid: str) -> dict:
        return json.loads(self.ctr("containers", "info", cid).stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for cid in self.ids:
                self.ctr("task", "kill", "-s", "KILL", cid, check=False)
            for cid in self.ids:
                for _ in range(50):
                    if self.ctr("task", "rm", cid, check=False).returncode == 0:
                        break
                    time.sleep(0.1)
                self.ctr("containers", "rm", cid, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):  # shims left behind
            for p in os.listdir("/proc"):
                if not p.isdigit():
                    continue
                with contextlib.suppress(OSError):
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        if self.dir.encode() in f.read():
                            os.kill(int(p), sig)
            time.sleep(0.2)
        with open("/proc/self/mountinfo") as f:
            mounts = [ln.split()[4] for ln in f if self.dir in ln.split()[4]]
        for mnt in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)
        for d in os.listdir("/sys/fs/cgroup"):
            top = os.path.join("/sys/fs/cgroup", d, self.cgroup_parent)
            if os.path.isdir(top):
                for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda x: -len(x[0])):
                    with contextlib.suppress(OSError):
                        os.rmdir(dirpath)
        shutil.rmtree(self.dir, ignore_errors=True)
        if "/run/containerd" not in self._had and os.path.isdir("/run/containerd"):
            # ours: every empty directory the shim made under it (fifo/<id>, runc/<ns>, s)
            for dirpath, _dirs, _files in sorted(
                os.walk("/run/containerd"), key=lambda x: -len(x[0])
            ):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        for d in reversed(HOST_DIRS):
            if d not in self._had:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
