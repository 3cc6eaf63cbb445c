"""A real Docker engine (Debian's docker.io) for a test, inside a network namespace the
test made, with nothing of it left afterwards.

`dockerd` is started with `nsenter --net=/run/netns/NAME` (`ip netns exec` remounts /sys
and hides the cgroup mounts dockerd needs), its own data root, exec root, pid file and
unix socket under a temp dir named `pi-test-dk-*` (so the suite's leak check sees any
process, mount or cgroup of it that survives), `--cgroup-parent` of the same name, the
userland proxy off (a published port is DNAT only), no registry: the image is
pyinspect's embedded busybox, built by `pyinspect.runtime.busybox_image` and `docker
load`ed. Its iptables-nft rules live in the netns and go with it.

    with DockerEngine(netns_name) as engine:
        engine.docker("run", "-d", "--name", "web", "-p", "8080:80", engine.image, ...)
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

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client (any other on PATH may be another version)
IMAGE = "pi-busybox:test"
KEY_FILE = "/etc/docker/key.json"  # dockerd 20.10 writes its trust key here
# made on the host whatever the engine's own directories are: containerd's shims put their
# sockets in /run/containerd/s, dockerd looks for plugins in /run/docker/plugins
HOST_DIRS = ("/run/containerd", "/run/containerd/s", "/run/docker", "/run/docker/plugins")


def available() -> str | None:
    """Why a Docker engine cannot run here, or None."""
    for path in (DOCKERD, DOCKER, "/usr/bin/containerd", "/usr/bin/nsenter"):
        if not os.path.exists(path):
            return f"{path} missing (scripts/install.sh installs docker.io)"
    return None


class DockerEngine:
    """dockerd + its containerd in the named netns `netns`; `stop()` removes everything."""

    def __init__(self, netns: str, bip: str = "172.17.0.1/16") -> None:
        self.netns = netns
        self.bip = bip
        self.tag = uuid.uuid4().hex[:6]
        self.dir = tempfile.mkdtemp(prefix=f"pi-test-dk-{self.tag}-", dir="/tmp")
        self.cgroup_parent = f"pi-test-dk-{self.tag}"
        self.sock = os.path.join(self.dir, "docker.sock")
        self.host = f"unix://{self.sock}"
        self.image = IMAGE
        self.proc: subprocess.Popen | None = None
        self._key_existed = os.path.exists(KEY_FILE)
        self._had_dirs = {d for d in HOST_DIRS if os.path.exists(d)}
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "DockerEngine":
        conf = os.path.join(self.dir, "daemon.json")
        with open(conf, "w") as f:
            json.dump({}, f)
        self._log = open(os.path.join(self.dir, "dockerd.log"), "w")  # noqa: SIM115
        argv = [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            DOCKERD,
            "--data-root",
            os.path.join(self.dir, "data"),
            "--exec-root",
            os.path.join(self.dir, "exec"),
            "--pidfile",
            os.path.join(self.dir, "docker.pid"),
            "-H",
            self.host,
            "--config-file",
            conf,
            "--bip",
            self.bip,
            "--userland-proxy=false",
            "--ip6tables=false",
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
            "--cgroup-parent",
            f"/{self.cgroup_parent}",
            "--log-level",
            "warn",
        ]
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if os.path.exists(self.sock) and self.docker("version", check=False).returncode == 0:
                try:
                    self.load_image()
                except BaseException:
                    self.stop()  # nothing of a half-started engine is left
                    raise
                return self
            time.sleep(0.2)
        log = self.log()
        self.stop()
        raise RuntimeError(f"dockerd did not come up: {log[-2000:]}")

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "dockerd.log")) as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self) -> "DockerEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the client --------------------------------------------------------------------------
    def argv(self, *args) -> list[str]:
        """The docker client's command line for `args`, for this engine (with `env`)."""
        return [DOCKER, "-H", self.host, *map(str, args)]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_CONFIG": os.path.join(self.dir, "client")}

    def docker(self, *args, check: bool = True, timeout: float = 60, input=None):
        proc = subprocess.run(
            self.argv(*args),
            check=False,
            capture_output=True,
            text=input is None or isinstance(input, str),
            timeout=timeout,
            input=input,
            env=self.env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))}: {proc.stderr}")
        return proc

    def inspect(self, name: str) -> dict:
        return json.loads(self.docker("inspect", name).stdout)[0]

    def load_image(self) -> None:
        """`docker load` pyinspect's embedded busybox image (no registry)."""
        from pyinspect.runtime import busybox_image

        from helpers import imagekit

        layer, mtime, version = busybox_image.build_layer()
        diff = "sha256:" + hashlib.sha256(layer).hexdigest()
        cfg = busybox_image.image_config(diff, mtime, version)
        tar = os.path.join(self.dir, "busybox.tar")
        imagekit.docker_legacy(tar, [([layer], [self.image], cfg)])
        self.docker("load", "-i", tar)
        os.unlink(tar)

    # -- teardown ----------------------------------------------------------------------------
    def _pids_of_ours(self) -> list[int]:
        """Processes whose command line names our temp dir (dockerd, containerd, shims)."""
        out = []
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if self.dir.encode() in f.read():
                        out.append(int(p))
            except OSError:
                continue
        return out

    def stop(self) -> None:
        """Remove containers, stop dockerd and containerd, and undo what they left."""
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
            self.docker("network", "prune", "-f", check=False, timeout=30)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._pids_of_ours()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while pids and time.monotonic() < deadline:
                pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
                time.sleep(0.05)
        self._unmount()
        self._remove_cgroups()
        if self._log:
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self._key_existed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(KEY_FILE)
        for d in reversed(HOST_DIRS):  # ours if they were not there, and only once empty
            if d not in self._had_dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(d)

    def _unmount(self) -> None:
        for _ in range(5):
            mounts = []
            with open("/proc/self/mountinfo") as f:
                for line in f:
                    mnt = line.split()[4].replace("\\040", " ")
                    if mnt == self.dir or mnt.startswith(self.dir + "/"):
                        mounts.append(mnt)
            if not mounts:
                return
            for mnt in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", mnt], capture_output=True, check=False)

    def _remove_cgroups(self) -> None:
        base = "/sys/fs/cgroup"
        tops = [os.path.join(base, self.cgroup_parent)]
        for d in os.listdir(base):
            tops.append(os.path.join(base, d, self.cgroup_parent))
        for top in tops:
            if not os.path.isdir(top):
                continue
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda x: -len(x[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
