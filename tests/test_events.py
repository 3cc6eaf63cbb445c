"""The event timeline: batching into SQLite, queries, container attribution, the CLI.

Attribution is checked on real containers: a runc busybox container (its own pid and
net namespaces) and processes in a named netns the test makes; the expected container
ids and names come from runc / the netns itself, not from pyinspect.
"""

import json
import os
import shutil
import signal
import subprocess
import time
import uuid

import pytest

from pyinspect.config import database_path
from pyinspect.errors import UsageError
from pyinspect.host import events as ev_lib
from pyinspect.store import Store

from conftest import Cli

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


class CountingStore(Store):
    """A real Store that counts its batch writes."""

    calls = 0

    def insert_events(self, events):
        self.calls += 1
        return super().insert_events(events)


def fake(i, kind="exec", container=None, ts=None):
    return {
        "ts_ns": ts if ts is not None else 1_000_000_000_000 + i,
        "kind": kind,
        "pid": 1000 + i,
        "ppid": 1,
        "comm": "x",
        "cgroup_id": 1,
        "netns": 11,
        "pidns": 12,
        "mntns": 13,
        "container_id": container and f"{container}-id0123",
        "container_name": container,
        "detail": {"n": i},
    }


def test_a_trace_sessions_copy_of_an_agent_event_is_shown_once(tmp_path):
    """`serve` and a trace session both store the container's fork: the timeline shows it
    once; what only the session saw (or only the agent) stays."""
    store = Store(tmp_path / "db")
    both = fake(1, kind="fork", container="web")
    store.insert_events(
        [
            both,
            dict(both, ts_ns=both["ts_ns"] + 20_000, session_id=7),
            dict(fake(2, kind="exit", container="web"), session_id=7),
            fake(3, kind="exit", container="web"),
        ]
    )
    for packets in (False, True):
        rows = ev_lib.query(store, container="web", limit=None, packets=packets)
        assert [(r["kind"], r["pid"], r["session_id"]) for r in rows] == [
            ("fork", 1001, None),
            ("exit", 1002, 7),
            ("exit", 1003, None),
        ]
    store.close()


def test_timeline_pages_merge_events_flows_and_drops_in_time_order(tmp_path):
    """With packets, each source is cut on its own and merged: every page, either order,
    must equal the same slice of the whole timeline sorted in Python."""
    store = Store(tmp_path / "db")
    store.insert_events([fake(i, container="web", ts=1000 + 10 * i) for i in range(30)])
    sid = (
        store.db["trace_sessions"]
        .insert({"container_id": "web-id0123", "container_name": "web"})
        .last_pk
    )
    for i, ts in enumerate((1005, 1155, 1295)):
        f = (
            store.db["flows"]
            .insert(
                {
                    "session_id": sid,
                    "proto": "tcp",
                    "first_ns": ts,
                    "orig_src": "10.0.0.2",
                    "orig_sport": 40000 + i,
                    "orig_dst": "10.0.0.1",
                    "orig_dport": 8088,
                }
            )
            .last_pk
        )
        store.db["drops"].insert(
            {
                "session_id": sid,
                "ts_ns": ts + 1,
                "flow_id": f,
                "reason": "NO_SOCKET",
                "location": "tcp_v4_rcv",
            }
        )
    whole = ev_lib.query(store, container="web", limit=None, packets=True)
    assert len(whole) == 36 and [r["ts_ns"] for r in whole] == sorted(r["ts_ns"] for r in whole)
    assert {r["kind"] for r in whole} >= {"exec", "flow", "drop"}
    for newest in (False, True):
        ordered = whole[::-1] if newest else whole
        for offset in (0, 5, 31):
            got = ev_lib.query(
                store, container="web", limit=7, offset=offset, packets=True, newest_first=newest
            )
            assert [r["id"] for r in got] == [r["id"] for r in ordered[offset : offset + 7]]
    only = ev_lib.query(store, kinds=["flow", "drop"], limit=4, packets=True)
    assert [r["kind"] for r in only] == ["flow", "drop", "flow", "drop"]
    store.close()


def test_recorder_writes_in_batches_not_per_event(tmp_path):
    store = CountingStore(tmp_path / "db")
    rec = ev_lib.Recorder(store, resolver=None, batch_size=100, flush_interval=3600)
    for i in range(250):
        rec.add(fake(i))
    assert store.calls == 2 and rec.written == 200
    rec.flush()
    assert store.calls == 3 and rec.written == 250
    rows = ev_lib.query(store, limit=None)
    assert len(rows) == 250
    assert rows[7]["detail"] == {"n": 7} and rows[7]["pid"] == 1007
    rec.record_loss("process", 0, lag_ns=1234)
    rec.record_loss("process", 0, lag_ns=99)  # no change: not stored again
    rec.record_loss("process", 3, lag_ns=5678)
    loss = list(store.db["probe_loss"].rows)
    assert [(r["probe"], r["lost"], r["lag_ns"]) for r in loss] == [
        ("process", 0, 1234),
        ("process", 3, 5678),
    ]
    assert json.loads(loss[1]["detail"]) == {"new": 3}


def test_query_filters_and_since(tmp_path):
    store = Store(tmp_path / "db")
    now = time.time_ns()
    rows = [
        fake(0, "exec", "web", ts=now - 3600 * 10**9),
        fake(1, "exit", "web", ts=now - 30 * 10**9),
        fake(2, "exec", None, ts=now - 20 * 10**9),
        fake(3, "oom", "db", ts=now - 10 * 10**9),
    ]
    store.insert_events(rows)
    q = lambda **kw: [r["pid"] for r in ev_lib.query(store, **kw)]  # noqa: E731
    assert q() == [1000, 1001, 1002, 1003]
    assert q(container="web") == [1000, 1001]
    assert q(container="db-id") == [1003]  # id prefix
    assert q(since="1m") == [1001, 1002, 1003]
    assert q(since="25s") == [1002, 1003]
    assert q(kinds=["exec"]) == [1000, 1002]
    assert q(limit=2, offset=1) == [1001, 1002]
    assert q(since=now - 15 * 10**9) == [1003]
    assert ev_lib.parse_since("2026-01-01T00:00:00Z") == 1767225600 * 10**9
    assert ev_lib.parse_since("1767225600") == 1767225600 * 10**9
    with pytest.raises(UsageError, match="bad --since value"):
        ev_lib.parse_since("yesterday-ish")


def test_cli_rejects_bad_since_without_touching_the_store(cli, state_root):
    store = Store(database_path(state_root))
    store.insert_events([fake(0, "exec", "web")])
    store.close()
    r = cli("events", "--since", "whenever", check=False)
    assert r.returncode == 2 and r.stderr.startswith("Error: bad --since value")
    out = cli("events", "--json").stdout.splitlines()
    assert len(out) == 1 and json.loads(out[0])["container_name"] == "web"
    text = cli("events").stdout
    assert "web" in text and "exec" in text


# -- real attribution -------------------------------------------------------------------


def wait_events(follower, pred, timeout=15.0):
    """Poll until pred(everything this follower returned so far) holds."""
    seen = follower.__dict__.setdefault("_test_seen", [])
    deadline = time.monotonic() + timeout
    while True:
        seen.extend(follower.poll(50))
        got = pred(seen)
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"expected events did not arrive in {timeout}s")


@pytest.mark.root
def test_follow_attributes_runc_container_events(runc, state_root, tmp_path):
    cid, init = runc.run()
    pidns = os.stat(f"/proc/{init}/ns/pid").st_ino
    netns = os.stat(f"/proc/{init}/ns/net").st_ino
    store = Store(database_path(state_root))
    with ev_lib.Follower(state_root, store) as f:
        subprocess.run(
            ["runc", "exec", cid, "sh", "-c", "true pa-in-runc; exit 4"],
            stdin=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        ex = wait_events(
            f,
            lambda seen: next(
                (
                    e
                    for e in seen
                    if e["kind"] == "exec"
                    and e["detail"].get("argv") == ["sh", "-c", "true pa-in-runc; exit 4"]
                ),
                None,
            ),
        )
        assert (ex["pidns"], ex["netns"]) == (pidns, netns)
        assert (ex["container_id"], ex["container_name"]) == (cid, cid)
        dead = wait_events(
            f,
            lambda seen: next(
                (e for e in seen if e["kind"] == "exit" and e["pid"] == ex["pid"]), None
            ),
        )
        assert dead["detail"]["exit_code"] == 4 and dead["container_id"] == cid
        # host activity stays unattributed
        subprocess.run(["/bin/true", "pa-on-host"], check=True)
        host = wait_events(
            f,
            lambda seen: next(
                (
                    e
                    for e in seen
                    if e["kind"] == "exec"
                    and e["detail"].get("argv") == ["/bin/true", "pa-on-host"]
                ),
                None,
            ),
        )
        assert host["container_id"] is None and host["container_name"] is None
    # everything seen was stored (batched), with the attribution
    stored = ev_lib.query(store, container=cid, kinds=["exec", "exit"], limit=None)
    assert any(
        r["pid"] == ex["pid"] and r["kind"] == "exit" and r["detail"]["exit_code"] == 4
        for r in stored
    )
    loss = {r["probe"]: r for r in store.db["probe_loss"].rows}
    assert set(loss) == {"process", "cgroup", "links"} and loss["process"]["lost"] == 0
    store.close()


@pytest.mark.root
def test_cli_events_follow_in_a_named_netns(make_netns, state_root):
    ns = make_netns("pa")
    keeper = ns.popen("sleep", "1000")  # makes the netns a (foreign) container
    cli = Cli(state_root)
    proc = subprocess.Popen(
        cli.argv("events", "--follow", "--json", "--container", ns.name),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = proc.stderr.readline()
        want = "listening: process (10 tracepoints), cgroup (5 tracepoints)"
        assert ready.startswith(want), ready
        ns.sh(
            "ip link add pa-v0 type veth peer name pa-v1"
        )  # a link event in the container's netns
        ns.sh("/bin/true pa-cli; exit 3", check=False)
        subprocess.run(["/bin/true", "pa-cli-host"], check=True)  # filtered out
        got = []
        while True:
            line = proc.stdout.readline()
            assert line, "events --follow ended early"
            ev = json.loads(line)
            got.append(ev)
            if any(e["kind"] == "exit" and e["detail"].get("exit_code") == 3 for e in got) and any(
                e["kind"] == "link_add" for e in got
            ):
                break
        assert all(e["container_name"] == ns.name for e in got)
        assert not any(e["detail"].get("argv") == ["/bin/true", "pa-cli-host"] for e in got)
        assert any(
            e["kind"] == "exec" and e["detail"].get("argv") == ["/bin/true", "pa-cli"] for e in got
        )
        assert any(e["kind"] == "link_add" and e["detail"].get("ifname") == "pa-v0" for e in got)
        netns = os.stat(ns.path).st_ino
        odd = [
            (e["kind"], e["comm"], e["pid"], e["netns"], e["detail"])
            for e in got
            if e["netns"] != netns
        ]
        assert not odd, odd
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        keeper.kill()
        keeper.wait()
    assert proc.returncode == 0, err
    assert "process probe: 0 records lost" in err
    stored = [
        json.loads(x)
        for x in cli(
            "events", "--container", ns.name, "--kind", "exit", "--json"
        ).stdout.splitlines()
    ]
    assert any(e["detail"].get("exit_code") == 3 for e in stored)


@pytest.mark.root
def test_a_kill_9_of_the_follower_keeps_the_records_it_held(state_root):
    """A record that waits for an owner (a cgroup made below the root, which a container
    being made may own) is stored as it arrives: a kill -9 of `events --follow` while it
    waits leaves it in the store, unattributed, instead of losing it with the process."""
    cli = Cli(state_root)
    cgroup = f"/sys/fs/cgroup/unified/pi-test-held-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen(
        cli.argv("events", "--follow", "--json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr.readline().startswith("listening"), "events --follow did not start"
        os.mkdir(cgroup)
        time.sleep(1.2)  # past a batch (0.5 s), within the wait for an owner (3 s)
    finally:
        proc.kill()
        proc.wait()
        if os.path.isdir(cgroup):
            os.rmdir(cgroup)
    stored = [
        json.loads(line)
        for line in cli(
            "events", "--kind", "cgroup_mkdir", "--json", "--limit", "100000"
        ).stdout.splitlines()
    ]
    mine = [e for e in stored if (e["detail"].get("path") or "").endswith(cgroup.rsplit("/", 1)[1])]
    assert len(mine) == 1 and mine[0]["container_id"] is None, mine


@pytest.mark.root
def test_pyinspect_container_exec_and_oom_are_attributed(state_root):
    """exec, exit, oom and pause/unpause (cgroup_freeze/unfreeze) of a pyinspect container,
    attributed to it, live and stored."""
    cli = Cli(state_root)
    name = f"pa-ev-{uuid.uuid4().hex[:6]}"
    run = cli(
        "run", "-d", "--name", name, "--net", "none", "--memory", "30m", "busybox", "sleep", "1000"
    )
    try:
        info = json.loads(cli("inspect", name).stdout)[0]
        cid, init = info["Id"], info["State"]["Pid"]
        assert run.stdout.strip() in (cid, cid[:12])
        pidns = os.stat(f"/proc/{init}/ns/pid").st_ino
        netns = os.stat(f"/proc/{init}/ns/net").st_ino
        store = Store(database_path(state_root))
        with ev_lib.Follower(state_root, store, container=name) as f:
            # following one container: the kernel only reports its namespaces
            assert f.probes[0].NAME == "process"
            assert f.probes[0].ns_filter == {pidns, netns}
            cli("exec", name, "sh", "-c", "exit 6", check=False)
            ex = wait_events(
                f,
                lambda seen: next(
                    (
                        e
                        for e in seen
                        if e["kind"] == "exec" and e["detail"].get("argv") == ["sh", "-c", "exit 6"]
                    ),
                    None,
                ),
            )
            assert ex["pidns"] == pidns
            assert (ex["container_id"], ex["container_name"]) == (cid, name)
            dead = wait_events(
                f,
                lambda seen: next(
                    (e for e in seen if e["kind"] == "exit" and e["pid"] == ex["pid"]), None
                ),
            )
            assert dead["detail"]["exit_code"] == 6 and dead["container_name"] == name
            alloc = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo kept ${#x}'
            out = cli("exec", name, "sh", "-c", alloc, check=False)
            assert out.returncode == 137, out.stderr
            oom = wait_events(
                f,
                lambda seen: next(
                    (e for e in seen if e["kind"] == "oom" and e["pidns"] == pidns), None
                ),
            )
            assert (oom["container_id"], oom["container_name"]) == (cid, name)
            memcg = [
                ln.strip().split(":", 2)[2]
                for ln in open(f"/proc/{init}/cgroup")
                if "memory" in ln.split(":")[1].split(",")
            ]
            assert oom["detail"]["memcg_path"] == memcg[0]  # the container's memory cgroup
            killed = wait_events(
                f,
                lambda seen: next(
                    (e for e in seen if e["kind"] == "exit" and e["pid"] == oom["pid"]), None
                ),
            )
            assert killed["detail"]["signal"] == signal.SIGKILL
            assert killed["container_name"] == name
            # pause and unpause: cgroup2's freezer, the container's own cgroup
            cli("pause", name)
            cli("unpause", name)
            for kind in ("cgroup_freeze", "cgroup_unfreeze"):
                ev = wait_events(
                    f, lambda seen, k=kind: next((e for e in seen if e["kind"] == k), None)
                )
                assert (ev["container_id"], ev["detail"]["version"]) == (cid, 2), ev
                assert ev["detail"]["path"].endswith(cid)
        # stored too (the OOM killer may pick a second victim in the same allocation: each
        # victim is its own event, all of them this container's)
        stored = ev_lib.query(store, container=name, kinds=["oom"], limit=None)
        assert oom["pid"] in [r["pid"] for r in stored], stored
        assert all(r["container_id"] == cid and r["pidns"] == pidns for r in stored), stored
        store.close()
    finally:
        cli("rm", "-f", name, check=False)


@pytest.mark.root
@pytest.mark.parametrize("in_netns", [False, True], ids=["host", "named-netns"])
def test_a_container_started_while_following_has_its_making_attributed(
    state_root, make_netns, in_netns
):
    """A container's first records (its cgroups made, its init's unshare and exec) come
    before its runtime has written the state discovery reads: they wait for it and are
    delivered and stored with the container's name, also when the runtime runs in a named
    netns (which discovery knows, as a bare namespace, from the start: the demo's "host").
    The follower's own records are not kept."""
    ns = make_netns("pn") if in_netns else None
    keeper = ns.popen("sleep", "1000") if ns else None  # makes it a (foreign) container
    cli = Cli(state_root, netns=ns.name if ns else None)
    name = f"pa-new-{uuid.uuid4().hex[:6]}"
    store = Store(database_path(state_root))
    try:
        with ev_lib.Follower(state_root, store) as f:
            cli("run", "-d", "--name", name, "--net", "none", "busybox", "sleep", "1000")
            init = wait_events(
                f,
                lambda seen: next(
                    (
                        e
                        for e in seen
                        if e["kind"] == "exec" and e["detail"].get("argv") == ["sleep", "1000"]
                    ),
                    None,
                ),
            )
            assert init["container_name"] == name
        cid = json.loads(cli("inspect", name).stdout)[0]["Id"]
        stored = ev_lib.query(store, container=name, limit=None)
        made = [r["detail"]["path"] for r in stored if r["kind"] == "cgroup_mkdir"]
        assert made and all(p.endswith(cid) for p in made), made
        assert {"exec", "unshare"} <= {r["kind"] for r in stored if r["pid"] == init["pid"]}
        assert not [r for r in ev_lib.query(store, limit=None) if r["pid"] == os.getpid()]
    finally:
        cli("rm", "-f", name, check=False)
        store.close()
        if keeper:
            keeper.kill()
            keeper.wait()


def test_a_held_record_is_released_with_its_owner_or_at_the_end(tmp_path):
    """A record in namespaces no container owns yet is stored at once and waits: the
    next discovery scan that finds its owner releases it attributed and its stored row
    is replaced by the attributed one; release_all (a follower stopping) releases the
    rest as they are; all of them are stored once."""

    class Discovery:  # discovery.Resolver's interface, with an owner set by the test
        host = {"net": 1, "pid": 2}
        generation = 0
        owner = None

        def resolve(self, **keys):
            return self.owner

        def settled(self, hit, pidns=None, cgroup=False):
            return hit is not None

        def refresh_if_due(self):
            self.generation += 1

    d = Discovery()
    store = Store(tmp_path / "db")
    rec = ev_lib.Recorder(store, resolver=d)
    first, second = fake(1), fake(2)
    for n, ev in enumerate((first, second)):
        del ev["container_id"], ev["container_name"]
        ev["netns"], ev["pidns"] = 77 + n, 78 + n  # not the host's (nor each other's)
    assert rec.add(first) is None and rec.tick() == []  # held: no owner yet
    rec.flush()  # ... but stored as it is (a kill -9 now would keep it)
    assert [(r["pid"], r["container_id"]) for r in ev_lib.query(store)] == [(1001, None)]
    d.owner = ("c0ffee", "web")
    (row,) = rec.tick()
    assert (row["pid"], row["container_id"], row["container_name"]) == (1001, "c0ffee", "web")
    assert [(r["pid"], r["container_name"]) for r in ev_lib.query(store)] == [(1001, "web")]
    d.owner = None
    assert rec.add(second) is None
    (row,) = rec.release_all()
    assert row["pid"] == 1002 and row["container_id"] is None
    rec.close()
    stored = {r["pid"]: r["container_name"] for r in ev_lib.query(store, limit=None)}
    assert stored == {1001: "web", 1002: None}


def test_a_failing_resolver_costs_the_attribution_not_the_event(tmp_path):
    class Broken:
        def resolve(self, **keys):
            raise TypeError("discovery tripped")

    store = Store(tmp_path / "db")
    rec = ev_lib.Recorder(store, resolver=Broken())
    ev = fake(1)
    del ev["container_id"], ev["container_name"]
    row = rec.add(ev)
    rec.flush()
    assert row["container_id"] is None and rec.attribution_errors == 1
    assert "discovery tripped" in rec.last_attribution_error
    assert [r["pid"] for r in ev_lib.query(store)] == [1001]


@pytest.mark.root
def test_follow_without_tracefs_skips_the_tracepoint_probes_and_keeps_links(make_netns, state_root):
    """Real degrade: tracefs unmounted in a private mount namespace for this command only."""
    ns = make_netns("pa")
    hide = (
        "umount -l /sys/kernel/debug/tracing 2>/dev/null; "
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; "
        "test ! -e /sys/kernel/tracing/events && exec "
    )
    argv = " ".join(Cli(state_root).argv("events", "--follow", "--json"))
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide + argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while True:
            line = proc.stderr.readline()
            assert line, f"ended early: {lines}"
            lines.append(line.rstrip("\n"))
            if line.startswith("listening:"):
                break
        hint = "(mount -t tracefs nodev /sys/kernel/tracing)"
        assert lines[:2] == [
            f"skipped: process probe: tracefs is not mounted {hint}",
            f"skipped: cgroup probe: tracefs is not mounted {hint}",
        ]
        assert lines[2].startswith("listening: links (")
        ns.sh("ip link add pa-v0 type veth peer name pa-v1")
        while True:
            line = proc.stdout.readline()
            assert line, "events --follow ended early"
            ev = json.loads(line)
            if ev["kind"] == "link_add" and ev["detail"].get("ifname") == "pa-v0":
                assert ev["netns"] == os.stat(ns.path).st_ino
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "links probe: 0 records lost" in err


def test_threaded_recorder_writes_everything_from_its_own_thread(tmp_path):
    store = Store(tmp_path / "db")
    rec = ev_lib.Recorder(store, resolver=None, batch_size=100, threaded=True)
    for i in range(2500):
        rec.add(fake(i))
    rec.record_loss("process", 2, lag_ns=7)
    rec.close()
    assert rec.written == 2500 and rec.write_error is None
    assert len(ev_lib.query(store, limit=None)) == 2500
    assert [(r["lost"], r["lag_ns"]) for r in store.db["probe_loss"].rows] == [(2, 7)]
