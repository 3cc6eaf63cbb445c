"""Container discovery and attribution: runc containers, foreign namespaces, our own records.

Everything is real: a busybox OCI bundle run by Debian's runc, processes in namespaces
the test makes. Expected values (namespace inodes, cgroup ids) are read independently
from /proc and the cgroup filesystems.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import uuid

import pytest

from pyinspect.host import discovery, vethmap

from conftest import Cli
from testbed.waits import wait_for

pytestmark = pytest.mark.root

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def ns_ino(pid, kind):
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


@pytest.fixture
def procs():
    started = []

    def start(argv):
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        started.append(p)
        return p

    yield start
    for p in started:
        # `unshare --fork`'s child (pid 1 of its pid namespace) outlives a killed parent
        children = _children(p.pid)
        p.kill()
        p.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children(pid):
    """The pids whose parent is `pid`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
    return out


def cgroup_dir_inodes(pid):
    """{hierarchy id: inode of the process's cgroup directory}, read from /proc + mounts."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fstype, _, opts = post.split()[:3]
            if fstype == "cgroup2":
                mounts.setdefault("", pre.split()[4])
            elif fstype == "cgroup":
                for o in opts.split(","):
                    mounts.setdefault(o, pre.split()[4])
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.strip().split(":", 2)
            key = "" if hid == "0" else ctrls.split(",")[0]
            if key in mounts and path != "/":
                out[int(hid)] = os.stat(mounts[key] + path).st_ino
    return out


def test_runc_container_is_found_with_its_processes(runc, state_root):
    cid, pid = runc.run()
    runc.exec_detached(cid, "sleep", "999")
    found = wait_for(
        lambda: next(
            (d for d in discovery.containers(state_root) if d.id == cid and len(d.pids) == 2), None
        )
    )
    assert found.source == "runc" and found.name == cid and found.status == "running"
    assert found.pid == pid
    assert found.netns == ns_ino(pid, "net") != ns_ino(2, "net")
    assert found.pidns == ns_ino(pid, "pid") != ns_ino(2, "pid")
    # its processes: the init and the exec'd sleep, exactly the pids in its pid namespace
    in_ns = sorted(
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and os.path.exists(f"/proc/{p}/ns/pid") and _safe_ino(p) == found.pidns
    )
    assert found.pids == in_ns and pid in found.pids
    comms = sorted(open(f"/proc/{p}/cmdline").read().replace("\0", " ").strip() for p in found.pids)
    assert comms == ["sleep 1000", "sleep 999"]
    assert found.detail["bundle"] == runc.bundles[cid]
    # cgroup ids are the inodes of its cgroup directories, hierarchy by hierarchy
    truth = cgroup_dir_inodes(pid)
    assert truth and {(h, i) for h, i in found.cgroup_ids} >= set(truth.items())

    r = discovery.Resolver(state_root)
    ref = (cid, cid)
    other = next(p for p in found.pids if p != pid)
    assert r.resolve(pid=pid) == ref
    assert r.resolve(pid=other) == ref
    assert r.resolve(netns=found.netns) == ref
    assert r.resolve(pidns=found.pidns) == ref
    for hid, cg in truth.items():
        assert r.resolve(cgroup_id=cg, cgroup_root=hid) == ref
    # the host's own namespaces and a process of ours belong to no container
    assert r.resolve(pid=os.getpid()) is None
    assert r.resolve(netns=ns_ino(2, "net"), pidns=ns_ino(2, "pid")) is None

    # the veth map names the container as the owner of its (loopback-only) netns
    rows = [x for x in vethmap.build(state_root) if x["netns"] == found.netns]
    assert [x["ifname"] for x in rows] == ["lo"]
    assert rows[0]["container_id"] == cid and rows[0]["netns_name"] == cid


def _safe_ino(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def test_runc_stopped_container_is_listed_not_attributed(runc, state_root):
    cid, pid = runc.run()
    netns = ns_ino(pid, "net")
    subprocess.run(["runc", "kill", cid, "KILL"], check=True)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}/ns/net"))
    d = next(d for d in discovery.containers(state_root) if d.id == cid)
    assert d.status == "stopped" and d.pid == 0 and d.pids == []
    assert discovery.Resolver(state_root).resolve(netns=netns) is None


def test_resolver_refreshes_for_containers_started_later(runc, state_root):
    r = discovery.Resolver(state_root, refresh_interval=0)
    cid, pid = runc.run()
    assert r.resolve(pid=pid) == (cid, cid)


def test_foreign_namespaces_are_containers(make_netns, procs, state_root):
    ns = make_netns("pb")
    in_named = ns.popen("sleep", "1000")
    anon = procs(["unshare", "--net", "--", "sleep", "1000"])
    pid_only = procs(["unshare", "--pid", "--fork", "--", "sleep", "1000"])

    def ready():
        try:
            return (
                ns_ino(anon.pid, "net") != ns_ino(2, "net")
                and any(_child_in_new_pidns(pid_only.pid))
                and ns_ino(in_named.pid, "net") == os.stat(ns.path).st_ino
            )
        except OSError:
            return False

    wait_for(ready)
    try:
        found = {d.id: d for d in discovery.containers(state_root)}
        named_ino = os.stat(ns.path).st_ino
        d = found[f"netns:{named_ino}"]
        assert d.name == ns.name and d.source == "netns" and in_named.pid in d.pids
        assert d.netns_path == ns.path
        a = found[f"netns:{ns_ino(anon.pid, 'net')}"]
        assert a.name == a.id and a.pids == [anon.pid]
        child = next(_child_in_new_pidns(pid_only.pid))
        p = found[f"pidns:{ns_ino(child, 'pid')}"]
        assert p.source == "pidns" and child in p.pids
        r = discovery.Resolver(state_root)
        assert r.resolve(pid=in_named.pid) == (d.id, ns.name)
        assert r.resolve(netns=named_ino) == (d.id, ns.name)
        assert r.resolve(pid=child) == (p.id, p.name)
        # the CLI's map shows the named netns under its name
        out = json.loads(Cli(state_root)("map", "--json").stdout)
        assert {x["netns_name"] for x in out if x["netns"] == named_ino} == {ns.name}
    finally:
        in_named.kill()
        in_named.wait()


def _child_in_new_pidns(parent):
    host_pidns = ns_ino(2, "pid")
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return iter(())
    return (k for k in kids if _safe_ino(k) not in (None, host_pidns))


def test_own_containers_from_runtime_records(make_netns, state_root):
    state = pytest.importorskip("pyinspect.runtime.state")
    ns = make_netns("pb")
    sleeper = ns.popen("sleep", "1000")
    try:
        wait_for(lambda: os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino == os.stat(ns.path).st_ino)
        cid = uuid.uuid4().hex + uuid.uuid4().hex
        path = os.path.join(state.containers_dir(state_root), cid)
        os.makedirs(path)
        c = state.Container(
            id=cid,
            name="pb-web",
            image="busybox",
            status="running",
            pid=sleeper.pid,
            pid_start=state.proc_start(sleeper.pid),
            created=state.now_rfc3339(),
            network={"mode": "bridge"},
        )
        c.path = path
        state.save(c, static=True)
        found = {d.id: d for d in discovery.containers(state_root)}
        d = found[cid]
        assert d.source == "pyinspect" and d.name == "pb-web" and d.pid == sleeper.pid
        assert d.netns == os.stat(ns.path).st_ino
        # the netns is claimed by the container, not listed again as a foreign one
        assert f"netns:{d.netns}" not in found
        assert discovery.Resolver(state_root).resolve(netns=d.netns) == (cid, "pb-web")
        rows = [x for x in vethmap.build(state_root) if x["netns"] == d.netns]
        assert rows and all(x["container_name"] == "pb-web" for x in rows)
        # a stale record (process gone) is reported exited and attributes nothing
        sleeper.kill()
        sleeper.wait()
        d = next(d for d in discovery.containers(state_root) if d.id == cid)
        assert d.status == "exited" and d.pid == 0
    finally:
        sleeper.kill()
        sleeper.wait()


class FakeDockerEngine:
    """Answers GET /containers/json on a unix socket like the Docker engine (canned JSON)."""

    def __init__(self, path, containers):
        import socket
        import threading

        self.path = str(path)
        self.body = json.dumps(containers).encode()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(4)
        self.requests = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.requests.append(conn.recv(65536).split(b"\r\n", 1)[0].decode())
                conn.sendall(
                    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + self.body
                )

    def close(self):
        self.sock.close()


def _cgroup_base():
    with open("/proc/self/mountinfo") as f:
        mounts = [
            (ln.split(" - ")[1].split()[0], ln.split(" - ")[1].split()[2], ln.split()[4])
            for ln in f
        ]
    for fstype, opts, mnt in mounts:
        if fstype == "cgroup" and "pids" in opts.split(","):
            return mnt
    return next(mnt for fstype, _o, mnt in mounts if fstype == "cgroup2")


def test_docker_container_by_cgroup_path_named_by_engine_api(
    tmp_path, procs, state_root, monkeypatch
):
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    base = os.path.join(_cgroup_base(), f"pb-{uuid.uuid4().hex[:6]}")
    cg = os.path.join(base, "docker", cid)
    engine = FakeDockerEngine(tmp_path / "docker.sock", [{"Id": cid, "Names": ["/pb-web"]}])
    monkeypatch.setattr(discovery, "DOCKER_SOCK", engine.path)
    os.makedirs(cg)
    try:
        p = procs(["unshare", "--net", "--", "sleep", "1000"])
        wait_for(lambda: _safe_net(p.pid) not in (None, ns_ino(2, "net")))
        with open(os.path.join(cg, "cgroup.procs"), "w") as f:
            f.write(str(p.pid))
        d = next(d for d in discovery.containers(state_root) if d.id == cid)
        assert (d.source, d.name, d.pids) == ("docker", "pb-web", [p.pid])
        assert d.netns == ns_ino(p.pid, "net")
        assert engine.requests and engine.requests[0].startswith("GET /containers/json")
        assert discovery.Resolver(state_root).resolve(netns=d.netns) == (cid, "pb-web")
        # the same process is not listed again as a foreign namespace
        assert f"netns:{d.netns}" not in {x.id for x in discovery.containers(state_root)}
    finally:
        engine.close()
        for pid in open(os.path.join(cg, "cgroup.procs")).read().split():
            os.kill(int(pid), 9)
        wait_for(lambda: not open(os.path.join(cg, "cgroup.procs")).read().strip())
        os.rmdir(cg)
        os.rmdir(os.path.dirname(cg))
        os.rmdir(base)


def _safe_net(pid):
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def test_runc_bundle_annotation_names_the_container(runc, state_root):
    cid = f"pb-{uuid.uuid4().hex[:8]}"
    b = runc.bundle(["sleep", "1000"])
    spec = json.loads((b / "config.json").read_text())
    spec["annotations"] = {"nerdctl/name": "pb-nice"}
    (b / "config.json").write_text(json.dumps(spec))
    runc.ids.append(cid)
    subprocess.run(
        ["runc", "run", "-d", "--bundle", str(b), cid],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=30,
    )
    d = next(d for d in discovery.containers(state_root) if d.id == cid)
    assert (d.name, d.source, d.status) == ("pb-nice", "runc", "running")
    assert discovery.Resolver(state_root).resolve(netns=d.netns) == (cid, "pb-nice")


def test_crun_state_directory(tmp_path, procs, state_root, monkeypatch):
    """crun's status file (written here by hand for a real process: crun cannot run on
    this hybrid-cgroup VM) is read like runc's."""
    p = procs(["unshare", "--net", "--pid", "--fork", "--", "sleep", "1000"])
    child = wait_for(lambda: next(_child_in_new_pidns(p.pid), None))
    start = int(open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[19])
    base = tmp_path / "crun"
    (base / "pb-crun1").mkdir(parents=True)
    (base / "pb-crun1" / "status").write_text(
        json.dumps(
            {
                "pid": child,
                "process-start-time": start,
                "bundle": str(tmp_path / "nobundle"),
                "cgroup-path": "",
                "created": "2026-11-29T12:00:00Z",
            }
        )
    )
    monkeypatch.setattr(discovery, "CRUN_STATE_ROOTS", (str(base),))
    d = next(d for d in discovery.containers(state_root) if d.id == "pb-crun1")
    assert (d.source, d.status, d.pid) == ("crun", "running", child)
    assert d.netns == ns_ino(child, "net") and d.pidns == ns_ino(child, "pid")
    assert d.pids == [child]
    # a reused pid (start time differs) is not the container any more
    (base / "pb-crun1" / "status").write_text(
        json.dumps({"pid": child, "process-start-time": start + 1})
    )
    d = next(d for d in discovery.containers(state_root) if d.id == "pb-crun1")
    assert (d.status, d.pid, d.pids) == ("stopped", 0, [])
