"""What the Containers page and `stats` know of a container pyinspect did not start: a
plain runc container (no engine, no API) gets its image from the bundle's annotations,
IPs and veth pair from netlink, published ports from the DNAT rules where its host veth
lives, limits from its cgroups; `stats` reads the same cgroups. Also the pieces on their
own: the cgroup v2 file formats, Docker's size units, portless flow tuples."""

import json
import os
import subprocess
import time
import uuid

import pytest

from pyinspect import units
from pyinspect.dashboard import containerinfo
from pyinspect.dashboard.overview import flow_tuple
from pyinspect.host import stats
from pyinspect.probes import cgroupstat

from conftest import Netns, unique

IMAGE = "registry.example/pi-test/busybox:1.36"


@pytest.fixture
def runc_web(runc, make_netns):
    """A runc container (own netns, limits, image annotation) wired by a veth to a
    'host' netns that publishes port 8081 to it with a DNAT rule."""
    host: Netns = make_netns("pi-cih")
    cid = f"pi-ci-{uuid.uuid4().hex[:8]}"
    b = runc.bundle(["sleep", "1000"])
    spec = json.loads((b / "config.json").read_text())
    spec["annotations"] = {"org.opencontainers.image.ref.name": IMAGE}
    spec["linux"]["cgroupsPath"] = f"/pi-test-ci-{uuid.uuid4().hex[:6]}"
    spec["linux"]["resources"] = {
        **spec["linux"].get("resources", {}),
        "memory": {"limit": 48 << 20},
        "pids": {"limit": 20},
        "cpu": {"quota": 25000, "period": 100000},
    }
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
    pid = runc.state(cid)["pid"]
    hv = unique("pcv")
    subprocess.run(
        ["ip", "-n", host.name, "link", "add", hv, "type", "veth", "peer", "name", "ceth"],
        check=True,
    )
    host.sh(f"ip link set ceth netns {pid} && ip addr add 10.242.0.1/24 dev {hv}")
    host.sh(f"ip link set {hv} up")
    subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", "sh", "-c",
         "ip link set ceth name eth0 && ip addr add 10.242.0.2/24 dev eth0 && "
         "ip link set eth0 up && ip link set lo up"],
        check=True,
    )  # fmt: skip
    host.run(
        "iptables-nft", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8081",
        "-j", "DNAT", "--to-destination", "10.242.0.2:80",
    )  # fmt: skip
    return {"id": cid, "pid": pid, "host": host, "veth": hv}


def test_a_plain_runc_container_has_every_field(runc_web, state_root):
    infos = {i.id: i for i in containerinfo.collect(state_root)}
    info = infos[runc_web["id"]]
    assert (info.runtime, info.status, info.is_container) == ("runc", "running", True)
    assert info.image == IMAGE
    assert info.sources["image"] == "bundle annotation org.opencontainers.image.ref.name"
    assert info.command == "sleep 1000"
    assert info.ips == ["10.242.0.2"]
    assert (info.veth_host, info.veth_container) == (runc_web["veth"], "eth0")
    assert info.veth_host_netns == runc_web["host"].name
    assert [p.text() for p in info.ports] == ["0.0.0.0:8081->80/tcp"]
    assert info.sources["ports"] == "DNAT rules"
    # read without creating anything: the nft host namespace has no legacy table after it
    legacy = runc_web["host"].run("cat", "/proc/net/ip_tables_names").stdout
    assert legacy.split() == [], legacy
    assert (info.memory_limit, info.pids_limit, info.cpus_limit) == (48 << 20, 20, 0.25)
    assert info.sources["limits"].startswith("cgroup")
    row = info.row()
    assert row["limits"] == "memory 48MiB, cpus 0.25, pids 20"
    assert row["veth"] == f"{runc_web['veth']} <-> eth0"
    tree = containerinfo.process_tree(info.pids)
    assert tree[0].pid == runc_web["pid"] and tree[0].cmdline == "sleep 1000"


def test_stats_of_a_runc_container(runc_web, state_root):
    sampler = stats.Sampler(state_root, warmup=0.2)
    (row,) = sampler.sample([runc_web["id"]])
    assert row.runtime == "runc" and row.pid == runc_web["pid"]
    assert row.mem_limit == 48 << 20 and row.mem_limited
    assert row.pids == 1 and row.pids_limit == 20 and row.cpus_limit == 0.25
    assert row.cpu_percent is not None and 0 <= row.cpu_percent < 50
    assert row.net_rx is not None and row.cgroup_version in ("v1", "v2", "hybrid")
    d = row.docker_row()
    assert d["MemUsage"].endswith(" / 48MiB") and d["PIDs"] == "1"
    # a second reading is made against the first (no warm-up sleep)
    t = time.monotonic()
    (again,) = sampler.sample([runc_web["id"]])
    assert time.monotonic() - t < 0.2 and again.cpu_percent is not None


def test_cgroup_v2_files(tmp_path):
    """The v2 layout (this machine is hybrid: v1 controllers, an empty cgroup2): the files
    as the kernel writes them, read by the same function."""
    d = tmp_path / "cg"
    d.mkdir()
    files = {
        "memory.current": "10485760\n",
        "memory.stat": "anon 4096\nfile 2097152\ninactive_file 1048576\n",
        "memory.max": "33554432\n",
        "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        "cpu.stat": "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        "cpu.max": "50000 100000\n",
        "pids.current": "3\n",
        "pids.max": "max\n",
        "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
        "8:16 rbytes=1000 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    s = cgroupstat.read({"": str(d)})
    assert s.version == "v2"
    assert s.mem_usage == 10485760 - 1048576 and s.mem_limit == 32 << 20
    assert s.cpu_ns == 1_500_000_000 and s.cpus_limit == 0.5
    assert (s.pids, s.pids_limit) == (3, None)
    assert (s.blk_read, s.blk_write) == (5096, 8192)
    assert s.oom_kills == 1
    (d / "memory.max").write_text("max\n")
    (d / "cpu.max").write_text("max 100000\n")
    s = cgroupstat.read({"": str(d)})
    assert s.mem_limit is None and s.cpus_limit is None


def test_cgroup_paths_of_this_process():
    paths = cgroupstat.paths_of_pid(os.getpid())
    assert paths and all(p.startswith("/sys/fs/cgroup") for p in paths.values())
    s = cgroupstat.read(paths)
    assert s.mem_usage and s.mem_usage > 0 and s.cpu_ns and s.cpu_ns > 0
    # a root cgroup has no pids.current: None, not 0
    if paths.get("pids", "").rstrip("/") == "/sys/fs/cgroup/pids":
        assert s.pids is None


def test_docker_size_units_and_table():
    assert units.binary_size(1536) == "1.5KiB" and units.binary_size(64 << 20) == "64MiB"
    assert units.decimal_size(656) == "656B" and units.decimal_size(1234) == "1.23kB"
    assert units.binary_size(None) == "--"
    row = stats.StatsRow(
        "a" * 64, "web", "docker", 1, 0.0, 1.5, 1 << 20, 64 << 20, True, 1.5625,
        1000, 2000, 0, 4096, 3, 50, 0.5, "v1",
    )  # fmt: skip
    lines = stats.format_stats([row])
    assert lines[0].split("   ")[0] == "CONTAINER ID"
    assert "MEM USAGE / LIMIT" in lines[0] and "1MiB / 64MiB" in lines[1]
    assert stats.format_stats([row], "{{.Name}}: {{.CPUPerc}} {{.NetIO}}") == [
        "web: 1.50% 1kB / 2kB"
    ]


def test_portless_flows_read_without_none():
    assert flow_tuple("icmp", "10.0.0.2", None, "10.0.0.1", None) == "icmp 10.0.0.2 -> 10.0.0.1"
    assert flow_tuple("tcp", "10.0.0.2", 4000, "10.0.0.1", 80) == "10.0.0.2:4000 -> 10.0.0.1:80"
    assert flow_tuple("tcp", "fd00::2", 4000, "fd00::1", 80) == "[fd00::2]:4000 -> [fd00::1]:80"
    assert flow_tuple("udp", None, None, None, None) == ""
    assert flow_tuple("icmp", "10.0.0.2", 0, "10.0.0.1", 0) == "icmp 10.0.0.2 -> 10.0.0.1"


def test_a_containerd_container_has_every_field(make_netns, state_root):
    """containerd on its own (no Docker): its API (through ctr) names the image; IP, veth
    and limits come from the kernel like for any runtime."""
    from helpers import containerd

    why = containerd.available()
    if why:
        pytest.skip(why)
    host: Netns = make_netns("pi-cdh")
    cid = unique("pi-cd")
    with containerd.Containerd(host.name) as ctd:
        pid = ctd.run(cid, "sleep", "1000", memory=40 << 20)
        hv = unique("pcd")
        subprocess.run(
            ["ip", "-n", host.name, "link", "add", hv, "type", "veth", "peer", "name", "eth0",
             "netns", str(pid)], check=True,
        )  # fmt: skip
        host.sh(f"ip addr add 10.243.0.1/24 dev {hv} && ip link set {hv} up")
        subprocess.run(
            ["nsenter", f"--net=/proc/{pid}/ns/net", "sh", "-c",
             "ip addr add 10.243.0.2/24 dev eth0 && ip link set eth0 up"], check=True,
        )  # fmt: skip
        infos = {i.id: i for i in containerinfo.collect(state_root)}
        info = infos[cid]
        assert (info.runtime, info.status, info.pid) == ("containerd", "running", pid)
        assert info.image == containerd.IMAGE == ctd.info(cid)["Image"]
        assert info.sources["image"].startswith(f"containerd API ({ctd.sock}")
        assert info.command == "sleep 1000"
        assert info.ips == ["10.243.0.2"] and info.veth_host == hv
        assert info.memory_limit == 40 << 20
        assert info.row()["cgroup"] == f"/{ctd.cgroup_parent}/{cid}"
        (row,) = stats.Sampler(state_root, warmup=0.1).sample([cid])
        assert row.runtime == "containerd" and row.mem_limit == 40 << 20 and row.pids == 1
