"""`pyinspect trace` on a container started by `pyinspect run -p 8088:80`, all through the
real CLI inside a netns that plays the host (the runtime's own bridge, veth and PYINSPECT
DNAT chain in the legacy backend)."""

import json
import subprocess

import pytest

from conftest import Cli, unique  # noqa: E402
from testbed import tracetopo
from testbed.waits import wait_listen

pytestmark = pytest.mark.root

HOST_IP, CLIENT_IP = "10.203.0.1", "10.203.0.2"
SERVE = "mkdir -p /www && echo traced > /www/index.html && exec httpd -f -p 80 -h /www"


def test_trace_of_a_pyinspect_container(make_netns, state_root):
    host = make_netns("pt-h")
    client = make_netns("pt-c")
    host.sh(
        f"ip link add ptc0 type veth peer name eth0 netns {client.name} && "
        f"ip addr add {HOST_IP}/24 dev ptc0 && ip link set ptc0 up"
    )
    client.sh(f"ip addr add {CLIENT_IP}/24 dev eth0 && ip link set eth0 up")
    cli = Cli(state_root, netns=host.name)
    name = unique("pt")
    try:
        cli("run", "-d", "--name", name, "-p", "8088:80", "busybox", "sh", "-c", SERVE)
        info = json.loads(cli("inspect", name).stdout)[0]
        ip = info["NetworkSettings"]["IPAddress"]
        wait_listen(name, 80)
        proc = subprocess.Popen(
            cli.argv("trace", "--container", name, "--json", "--duration", "5"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("type") == "ready", proc.stderr.read()
        assert "ptc0" in ready["points"] and "eth0" in ready["points"]
        got = client.run(
            "timeout",
            "5",
            "busybox",
            "wget",
            "-q",
            "-O",
            "-",
            f"http://{HOST_IP}:8088/",
            check=False,
        )
        assert got.stdout.strip() == "traced", got
        # the session's timeline: an exec (process + cgroup events) and a link made inside
        cli("exec", name, "true")
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                name,
                "ip",
                "link",
                "add",
                "ptx0",
                "type",
                "veth",
                "peer",
                "name",
                "ptx1",
            ],
            check=True,
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        items, f = tracetopo.one_dnat_flow(out, CLIENT_IP, HOST_IP, ip)
        hops = [i for i in items if i["type"] == "hop" and i["flow"] == f["flow"]]
        caps = []
        for h in hops:
            if h["hop"] == "capture":
                caps.append((h["role"], h["dir"], h["dst"], h["dport"]))
                if h["role"] == "container":
                    break
        assert caps == [
            ("uplink", "in", HOST_IP, 8088),
            ("bridge", "out", ip, 80),
            ("veth", "out", ip, 80),
            ("container", "in", ip, 80),
        ]
        dnat = [
            h
            for h in hops
            if h["hop"] == "netfilter"
            and h["table"] in ("nat", "ip nat")  # iptables-legacy / iptables-nft
            and h["verdict"].startswith("DNAT")
        ]
        assert dnat and dnat[0]["verdict"] == f"DNAT {ip}:80", dnat
        events = [i for i in items if i["type"] == "event"]
        kinds = {e["kind"] for e in events}
        assert {"exec", "cgroup_attach", "link_add"} <= kinds, [e["text"] for e in events]
        assert any("ptx0" in e["text"] for e in events if e["kind"] == "link_add")
        assert all(name in e["text"] for e in events if e["kind"] == "cgroup_attach")
        summary = [i for i in items if i["type"] == "summary"][0]
        assert summary["nat"] == [f"DNAT {HOST_IP}:8088 -> {ip}:80"]
        assert summary["loss"]["capture"] == 0
        # nothing of the trace is left in the host namespace
        raw = host.run("iptables-legacy-save").stdout  # (-t raw -S would make the table)
        assert "TRACE" not in raw
        assert "pyinspect_trace" not in host.run("nft", "list", "tables").stdout
        tc = host.sh(
            "for d in $(ls /sys/class/net); do tc filter show dev $d ingress; "
            "tc filter show dev $d egress; done"
        ).stdout
        assert "pyinspect-trace" not in tc
        # a paused container: the trace says so as it starts
        cli("pause", name)
        out = cli("trace", "--container", name, "--json", "--duration", "1").stdout
        ready = json.loads(out.splitlines()[0])
        assert any(f"{name} is paused" in n for n in ready["notes"]), ready
        cli("unpause", name)
    finally:
        cli("rm", "-f", name, check=False)
