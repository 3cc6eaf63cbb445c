"""runc busybox containers for tests (Debian's runc), killed and deleted at teardown."""

import json
import os
import shutil
import subprocess
import time
import uuid

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "sleep", "true", "cat", "ip", "ifconfig", "httpd")


class Runc:
    """Each run() makes a bundle with its own pid and net namespace and starts it detached."""

    def __init__(self, tmp_path, prefix="pr", files=None):
        self.tmp = tmp_path
        self.prefix = prefix
        self.files = dict(files or {})  # rootfs path -> text (the root is read-only in runc)
        self.ids = []
        self.bundles = {}

    def bundle(self, args):
        b = self.tmp / f"bundle-{uuid.uuid4().hex[:6]}"
        (b / "rootfs" / "bin").mkdir(parents=True)
        shutil.copy(BUSYBOX, b / "rootfs" / "bin" / "busybox")
        for applet in APPLETS:
            os.symlink("busybox", b / "rootfs" / "bin" / applet)
        for rel, text in self.files.items():
            (b / "rootfs" / rel).parent.mkdir(parents=True, exist_ok=True)
            (b / "rootfs" / rel).write_text(text)
        subprocess.run(["runc", "spec"], cwd=b, check=True)
        spec = json.loads((b / "config.json").read_text())
        spec["process"]["args"] = list(args)
        spec["process"]["terminal"] = False
        kinds = [n["type"] for n in spec["linux"]["namespaces"]]
        assert "network" in kinds and "pid" in kinds  # its own netns and pid namespace
        (b / "config.json").write_text(json.dumps(spec))
        return b

    def run(self, args=("sleep", "1000")):
        """Start a container; (id, host pid of its init)."""
        cid = f"{self.prefix}-{uuid.uuid4().hex[:8]}"
        b = self.bundle(list(args))
        self.ids.append(cid)
        self.bundles[cid] = str(b)
        log = self.tmp / f"{cid}.log"
        with open(log, "w") as err:
            proc = subprocess.run(
                ["runc", "run", "-d", "--bundle", str(b), cid],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=30,
                check=False,
            )
        assert proc.returncode == 0, log.read_text()
        return cid, self.state(cid)["pid"]

    def state(self, cid):
        return json.loads(
            subprocess.run(
                ["runc", "state", cid], capture_output=True, text=True, check=True
            ).stdout
        )

    def exec_detached(self, cid, *args):
        subprocess.run(
            ["runc", "exec", "-d", cid, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )

    def cleanup(self):
        for cid in self.ids:
            subprocess.run(["runc", "kill", cid, "KILL"], capture_output=True, check=False)
        for cid in self.ids:
            for _ in range(100):
                if (
                    subprocess.run(
                        ["runc", "delete", "-f", cid], capture_output=True, check=False
                    ).returncode
                    == 0
                ):
                    break
                time.sleep(0.05)
