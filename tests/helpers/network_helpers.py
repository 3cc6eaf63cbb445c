"""Helpers for the network tests: run pyinspect.runtime.network inside a test's "host" netns.

python-iptables and pyroute2 act on the network namespace of the calling
process, so library calls run in a child started with `nsenter --net=` (this
file doubles as that child's entry point: it reads one JSON request on argv
and prints one JSON reply). "Containers" are `sleep` processes in a fresh
netns made by `unshare --net` from inside the host netns.
"""

import json
import os
import signal
import subprocess
import sys
import time
import types
import uuid

PYTHON = sys.executable
HERE = os.path.abspath(__file__)


def cname(prefix="pn"):
    """A unique container name (it becomes /var/run/netns/<name>, which is global)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def container(
    name,
    publish=(),
    publish_all=False,
    mode="bridge",
    hostname=None,
    pid=0,
    status="running",
    network=None,
    cid=None,
):
    """A Container-like record as the runtime passes it (plain data, no kernel mocking)."""
    return {
        "id": cid or uuid.uuid4().hex + uuid.uuid4().hex,
        "name": name,
        "pid": pid,
        "status": status,
        "network": network or {},
        "spec": {
            "name": name,
            "publish": list(publish),
            "publish_all": publish_all,
            "network_mode": mode,
            "hostname": hostname,
        },
    }


class Host:
    """Calls into the network library from inside netns `ns` (a conftest Netns)."""

    def __init__(self, ns, root):
        self.ns = ns
        self.root = str(root)
        self.procs = []

    def call(self, op, env=None, **kw):
        req = json.dumps({"op": op, "root": self.root, **kw})
        proc = subprocess.run(
            ["nsenter", f"--net={self.ns.path}", PYTHON, HERE, req],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{op} helper crashed: {proc.stderr}")
        reply = json.loads(proc.stdout.strip().splitlines()[-1])
        return reply

    def crash(self, op, **kw):
        """Run an op that is expected to kill its process; returns the exit code."""
        req = json.dumps({"op": op, "root": self.root, **kw})
        return subprocess.run(
            ["nsenter", f"--net={self.ns.path}", PYTHON, HERE, req],
            capture_output=True,
            timeout=60,
            check=False,
        ).returncode

    def ok(self, op, **kw):
        if op == "state":  # a plain file: no need for a child in the netns
            from pyinspect.runtime import ipam

            return ipam.load(self.root, kw["bridge"])
        if op == "sysctls":
            return {
                k: self.ns.run(
                    "cat", "/proc/sys/" + k.replace(".", "/"), check=False
                ).stdout.strip()
                or None
                for k in kw["keys"]
            }
        reply = self.call(op, **kw)
        if "error" in reply:
            raise AssertionError(f"{op} failed: {reply}")
        return reply["result"]

    def spawn(self):
        """A 'container' init: sleep in a fresh netns made from inside the host netns."""
        p = subprocess.Popen(
            ["nsenter", f"--net={self.ns.path}", "unshare", "--net", "sleep", "600"]
        )
        self.procs.append(p)
        me = os.readlink("/proc/self/ns/net")
        host = os.stat(self.ns.path).st_ino
        for _ in range(200):
            try:
                ino = os.readlink(f"/proc/{p.pid}/ns/net")
                if (
                    ino != me
                    and ino != f"net:[{host}]"
                    and os.readlink(f"/proc/{p.pid}/exe").endswith("sleep")
                ):
                    return p.pid
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError("container process did not start")

    def start(self, name, **kw):
        """Spawn a container process and connect() it; returns (record, network dict)."""
        pid = self.spawn()
        rec = container(name, pid=pid, **kw)
        rec["network"] = self.ok("connect", container=rec, pid=pid)
        return rec

    def stop(self, rec):
        """Kill the container's process (like the init exiting)."""
        for p in self.procs:
            if p.pid == rec["pid"] and p.poll() is None:
                p.kill()
                p.wait()

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()


# --- the child side ------------------------------------------------------------------------


def _obj(d):
    if isinstance(d, dict):
        return types.SimpleNamespace(**{k: _obj(v) if k == "spec" else v for k, v in d.items()})
    return d


def _cycles(root, n, publish):
    """n connect/disconnect cycles in one process (keeps the 30-cycle test fast)."""
    from pyinspect.runtime import network

    ips = []
    for i in range(n):
        p = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        try:
            me = os.readlink("/proc/self/ns/net")
            for _ in range(200):
                try:
                    if os.readlink(f"/proc/{p.pid}/ns/net") != me and os.readlink(
                        f"/proc/{p.pid}/exe"
                    ).endswith("sleep"):
                        break
                except OSError:
                    pass
                time.sleep(0.005)
            rec = _obj(container(cname("pn-cy"), publish=publish, pid=p.pid))
            rec.network = network.connect(root, rec, p.pid)
            ips.append(rec.network["ip"])
            if i % 2:
                p.kill()  # half the time the init is already dead at disconnect
                p.wait()
            network.disconnect(root, rec)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return ips


def _without_netns_cookies():
    """Answer getsockopt(SOL_SOCKET, SO_NETNS_COOKIE) with ENOPROTOOPT from now on, as a
    kernel before 5.14 does (a seccomp filter on this process; everything else allowed)."""
    import errno
    import socket

    import seccomp

    from pyinspect.runtime import nftmade

    f = seccomp.SyscallFilter(seccomp.ALLOW)
    f.add_rule(
        seccomp.ERRNO(errno.ENOPROTOOPT),
        "getsockopt",
        seccomp.Arg(1, seccomp.EQ, socket.SOL_SOCKET),
        seccomp.Arg(2, seccomp.EQ, nftmade.SO_NETNS_COOKIE),
    )
    f.load()


def _main(req):
    from pyinspect.errors import PyinspectError
    from pyinspect.runtime import ipam, network, nftmade, portmap, ports, sysctl

    op = req.pop("op")
    root = req.pop("root")
    if req.pop("old_kernel", False):
        _without_netns_cookies()
    try:
        if op == "prepare":
            result = network.prepare(root, _obj(req["spec"]), req.get("image_config"))
        elif op == "connect":
            result = network.connect(
                root, _obj(req["container"]), req["pid"], image_config=req.get("image_config")
            )
        elif op == "connect_crash":
            # die like a SIGKILLed CLI right after the veth exists, before the netns mount
            network._mount_link = lambda *a: os._exit(9)
            result = network.connect(root, _obj(req["container"]), req["pid"])
        elif op == "disconnect":
            result = network.disconnect(root, _obj(req["container"]))
        elif op == "resync":
            with ipam.locked(root, req["bridge"]) as state:
                result = network._sync(root, state)
        elif op == "reconcile":
            result = network.reconcile(root, [_obj(c) for c in req["containers"]])
        elif op == "reconcile_imports":
            network.reconcile(root, [_obj(c) for c in req["containers"]])
            result = sorted(m for m in ("pyroute2", "iptc") if m in sys.modules)
        elif op == "files":
            result = network.container_files(_obj(req["container"]))
        elif op == "inspect":
            result = network.inspect(root, req["name"])
        elif op == "ls":
            result = network.networks(root)
        elif op == "rules":
            result = portmap.tagged(req.get("bridge"))
        elif op == "state":
            result = ipam.load(root, req["bridge"])
        elif op == "bound":
            result = ports.host_bound()
        elif op == "cycles":
            result = _cycles(root, req["n"], req.get("publish", []))
        elif op == "sysctls":
            result = {k: sysctl.read(k) for k in req["keys"]}
        elif op == "writer":
            from pyinspect.host import hostinfo

            result = hostinfo.iptables_writer(req.get("backend"))
        elif op == "cookie":
            try:
                result = nftmade.netns_cookie()
            except OSError as exc:
                result = os.strerror(exc.errno or 0)
        else:
            raise SystemExit(f"unknown op {op}")
    except PyinspectError as exc:
        print(
            json.dumps(
                {"error": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}
            )
        )
        return
    print(json.dumps({"result": result}))


if __name__ == "__main__":
    _main(json.loads(sys.argv[1]))
