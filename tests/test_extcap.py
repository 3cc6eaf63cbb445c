"""`pyinspect extcap` with the real tshark: interfaces, live captures, stops and errors.

tshark (dumpcap) finds extcap programs only in its extcap folder (`tshark -G folders`);
WIRESHARK_EXTCAP_DIR is ignored for root. So every tshark here runs in a mount namespace
of its own (`unshare -m`) with a temp folder holding the launcher that `pyinspect extcap
--install --install-dir` wrote bind-mounted over the extcap folder: the machine's own
Wireshark install is never touched, and the mount goes away with tshark.

A container started by `pyinspect run -p 8090:80` in a namespace that plays the host, and a
client namespace fetching its page through the published port, as in test_evidence.py.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Cli, Netns, unique
from testbed.waits import wait_listen

pytestmark = [pytest.mark.root, pytest.mark.slow]

HOST_IP, CLIENT_IP = "10.208.0.1", "10.208.0.2"
PORT = 8090
SERVE = (
    "mkdir -p /www && yes 'extcap: a line of the page' | head -n 40 > /www/index.html"
    " && exec httpd -f -p 80 -h /www"
)


def extcap_folder():
    out = subprocess.run(
        ["tshark", "-G", "folders"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"^Extcap path:\s*(\S+)", out, re.M)
    assert m, out
    return m.group(1)


class Setup:
    """The host and client namespaces, the container, and the temp extcap folder."""

    def __init__(self, root, tmp):
        self.host = Netns(unique("xc-h"))
        self.client = Netns(unique("xc-c"))
        self.cli = Cli(root, netns=self.host.name)
        self.root = root
        self.name = unique("xc")
        self.extcap_dir = tmp / "extcap"
        self.host.sh(
            f"ip link add xcu0 type veth peer name eth0 netns {self.client.name} && "
            f"ip addr add {HOST_IP}/24 dev xcu0 && ip link set xcu0 up"
        )
        self.client.sh(f"ip addr add {CLIENT_IP}/24 dev eth0 && ip link set eth0 up")
        self.cli("run", "-d", "--name", self.name, "-p", f"{PORT}:80", "busybox", "sh", "-c", SERVE)

        info = json.loads(self.cli("inspect", self.name).stdout)[0]["NetworkSettings"]
        self.veth = info["Networks"]["bridge"]["HostVeth"]
        self.ctr_ns = info["SandboxKey"].rsplit("/", 1)[1]
        wait_listen(self.ctr_ns, 80)
        self.cli("extcap", "--install", "--install-dir", self.extcap_dir)

    def tshark_argv(self, *args):
        """tshark in the host namespace, seeing only pyinspect's launcher as extcap."""
        script = f"mount --bind {self.extcap_dir} {extcap_folder()} && exec tshark " + " ".join(
            f"'{a}'" for a in args
        )
        return [
            "nsenter",
            f"--net={self.host.path}",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ]

    def fetch(self, n):
        got = self.client.sh(
            f"for i in $(seq {n}); do curl -sS --max-time 5 -H "
            f"'Connection: close' http://{HOST_IP}:{PORT}/ || exit 1; done"
        )
        assert got.stdout.count("extcap: a line") == 40 * n, got.stderr

    def capture(self, out, *args, fetches=0, duration=8):
        """tshark on this container's extcap interface for `duration` s into `out` (with
        `args` before `-a`), `fetches` page loads once attached; then nothing left."""
        tshark = subprocess.Popen(
            self.tshark_argv(
                "-i", f"pyinspect-{self.name}", *args, "-a", f"duration:{duration}", "-w", str(out)
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self.wait_attached(tshark)
            self.fetch(fetches)
            _, err = tshark.communicate(timeout=60)
            assert tshark.returncode == 0, err
        finally:
            if tshark.poll() is None:
                tshark.kill()
                tshark.communicate()
        self.wait_gone()

    def attached(self):
        """Whether a capture program is on the host veth (a tcx program or tc filter)."""
        code = (
            "import socket, sys; from pyinspect.probes import packets; "
            "i = socket.if_nametoindex(sys.argv[1]); "
            "print(len(packets.tcx_program_ids(i, 'ingress') + "
            "packets.tcx_program_ids(i, 'egress')))"
        )
        n = subprocess.run(
            ["nsenter", f"--net={self.host.path}", sys.executable, "-c", code, self.veth],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        tc = self.host.sh(
            f"tc filter show dev {self.veth} ingress; tc filter show dev {self.veth} egress",
            check=False,
        ).stdout
        return int(n) > 0 or "pyinspect-trace" in tc

    def wait_attached(self, proc, timeout=30, veth=True):
        """Until the capture's state file lists its attached points (written after the
        attach, right before the stream's header)."""
        deadline = time.monotonic() + timeout
        while not any("added_clsact" in p.read_text() for p in self.trace_states()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the capture never attached"
            time.sleep(0.05)
        assert self.attached() or not veth
        time.sleep(0.3)  # the header reaches dumpcap right after the attach

    def extcap_pids(self):
        """pyinspect extcap processes of this test's state root."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"extcap" in argv and str(self.root).encode() in argv:
                found.append(int(pid))
        return found

    def trace_rules(self):
        """The trace's TRACE rules, chains and nft tables in the host namespace."""
        ipt = self.host.sh(
            "iptables-legacy-save 2>/dev/null; nft list tables 2>/dev/null", check=False
        ).stdout
        return [
            line
            for line in ipt.splitlines()
            if any(k in line for k in ("pyinspect-trace:", "PI-TRACE-", "pyinspect_trace_"))
        ]

    def wait_gone(self, timeout=30):
        """Every extcap process has exited and removed what it attached and added."""
        deadline = time.monotonic() + timeout
        while self.extcap_pids() or self.trace_states() or self.attached() or self.trace_rules():
            assert time.monotonic() < deadline, (
                f"left behind: pids {self.extcap_pids()}, attached {self.attached()}, "
                f"states {self.trace_states()}, rules {self.trace_rules()}"
            )
            time.sleep(0.1)

    def wait_rules(self, proc, timeout=30):
        """Until the capture's TRACE rules are in (they come after the attach)."""
        deadline = time.monotonic() + timeout
        while not self.trace_rules():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no TRACE rule appeared"
            time.sleep(0.05)

    def trace_states(self):
        d = self.root / "trace"
        return [p for p in d.iterdir() if p.suffix == ".json"] if d.is_dir() else []

    def tcpdump(self, path):
        from testbed.pointcap import Tcpdump

        return Tcpdump(self.host.name, self.veth, path, immediate=True)

    def close(self):
        for pid in self.extcap_pids():
            os.kill(pid, signal.SIGKILL)
        self.cli("rm", "-f", self.name, check=False)
        self.client.remove()
        self.host.remove()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extcap")
    root = tmp / "root"
    root.mkdir()
    s = Setup(root, tmp)
    yield s
    s.close()


def fields(path, *names):
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "fields",
            "-E",
            "separator=|",
            *[a for n in names for a in ("-e", n)],
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("|") for line in out.splitlines() if line]


def web_packets(rows, iface):
    """Packets of port 80 (the veth is after the DNAT) on `iface` among tshark's rows."""
    return [r for r in rows if r[0] == iface and "80" in r[1].split(",")]


def test_install_is_a_launcher_and_safe_to_rerun(setup):
    first = (setup.extcap_dir / "pyinspect").read_text()
    setup.cli("extcap", "--install", "--install-dir", setup.extcap_dir)
    assert (setup.extcap_dir / "pyinspect").read_text() == first
    assert os.access(setup.extcap_dir / "pyinspect", os.X_OK)
    assert sorted(p.name for p in setup.extcap_dir.iterdir()) == ["pyinspect"]
    assert str(setup.root) in first and " extcap " in first


def test_install_sudo_launcher(setup, tmp_path):
    setup.cli("extcap", "--install", "--install-dir", tmp_path, "--install-sudo")
    text = (tmp_path / "pyinspect").read_text()
    assert "exec sudo -n " in text and " extcap " in text


def test_tshark_lists_one_interface_per_container(setup):
    out = subprocess.run(
        setup.tshark_argv("-D"), capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if "pyinspect-" in line]
    assert any(
        f"pyinspect-{setup.name} (pyinspect: {setup.name} (pyinspect, all capture points))" in line
        for line in lines
    ), out.stdout
    # the client and host namespaces have no process in them: not containers
    assert not any(setup.client.name in line for line in lines), lines


def test_tshark_lists_containers_of_other_runtimes(setup, runc):
    cid, _pid = runc.run()
    out = subprocess.run(
        setup.tshark_argv("-D"), capture_output=True, text=True, timeout=60, check=False
    )
    assert f"pyinspect-{cid} (pyinspect: {cid} (runc, all capture points))" in out.stdout, (
        out.stdout + out.stderr
    )
    assert f"pyinspect-{setup.name} " in out.stdout


def test_install_default_folder_is_wiresharks(setup, tmp_path):
    """--install without --install-dir writes into the folder tshark names (here a temp
    folder mounted over it in a mount namespace of the test's own)."""
    folder = tmp_path / "wsextcap"
    folder.mkdir()
    script = f"mount --bind {folder} {extcap_folder()} && exec " + " ".join(
        setup.cli.argv("extcap", "--install")[2:]
    )
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"installed {extcap_folder()}/pyinspect"
    assert (folder / "pyinspect").read_text() == (setup.extcap_dir / "pyinspect").read_text()


def test_tshark_capture_every_point_same_count_as_tcpdump(setup, tmp_path):
    from pyinspect.pcap.export import point_name

    out = tmp_path / "out.pcapng"
    dump = setup.tcpdump(tmp_path / "veth.pcap")
    try:
        setup.capture(out, fetches=5)
    finally:
        report = dump.stop()
    assert report["dropped"] == 0, report
    rows = fields(
        out,
        "frame.interface_name",
        "tcp.port",
        "frame.interface_description",
        "frame.comment",
        "tcp.flags.syn",
        "tcp.flags.ack",
    )
    names = {r[0] for r in rows}
    want = {
        point_name("xcu0", "uplink", setup.name),
        "pyinspect0",
        point_name(setup.veth, "veth", setup.name),
        f"{setup.name}/eth0",
    }
    assert want <= names, names
    # the published port's DNAT rides on the interfaces' descriptions
    assert all("DNAT tcp" in r[2] and f":{PORT} -> " in r[2] for r in rows), rows[:3]
    ref = fields(tmp_path / "veth.pcap", "frame.interface_name", "tcp.port")
    ref_web = [r for r in ref if "80" in r[1].split(",")]
    live_web = web_packets(rows, point_name(setup.veth, "veth", setup.name))
    assert len(ref_web) >= 5 * 6, ref_web  # 5 connections, each a few packets
    assert len(live_web) == len(ref_web), (len(live_web), len(ref_web))
    # NAT comments as `pcap export` gives them: every SYN at every point says its flow
    # and the DNAT (the analysis settles them while the stream holds them back)
    ctr_ip = rows[0][2].rsplit(" -> ", 1)[1].split(":")[0]
    syns = [r for r in rows if r[4] in ("1", "True") and r[5] in ("0", "False")]
    assert len(syns) == 5 * 4, syns
    nat = f": DNAT {HOST_IP}:{PORT} -> {ctr_ip}:80"
    assert all(re.fullmatch(r"flow \d+" + re.escape(nat), r[3]) for r in syns), syns
    assert len({r[3] for r in syns}) == 5, "one flow per connection"
    # every point saw the five connections (the uplink before the DNAT: port 8090)
    for name in want:
        tcp = [r for r in rows if r[0] == name and r[1]]
        assert len(tcp) >= 5 * 6, (name, len(tcp))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopping_tshark_leaves_nothing(setup, tmp_path, sig):
    out = tmp_path / "out.pcapng"
    tshark = subprocess.Popen(
        setup.tshark_argv("-i", f"pyinspect-{setup.name}", "-w", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        setup.wait_attached(tshark)
        setup.wait_rules(tshark)  # so the stop below has them to remove
        headers = out.stat().st_size if out.exists() else 0
        setup.fetch(1)
        # the stream holds packets back up to 1 s for their comments; on a loaded machine
        # longer: wait (up to 15 s) for them to reach the file before stopping
        deadline = time.monotonic() + 15
        time.sleep(1.5)
        while (out.stat().st_size if out.exists() else 0) <= headers:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        tshark.send_signal(sig)
        tshark.communicate(timeout=60)
        setup.wait_gone()
    finally:
        if tshark.poll() is None:
            tshark.kill()
            tshark.communicate()
    assert len(fields(out, "frame.number")) > 0


def test_stdout_stream_into_tshark_r(setup, tmp_path):
    dump = setup.tcpdump(tmp_path / "veth.pcap")
    xc = subprocess.Popen(
        setup.cli.argv(
            "extcap", "--extcap-interface", f"pyinspect-{setup.name}", "--capture", "--fifo", "-"
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    reader = subprocess.Popen(
        [
            "tshark",
            "-r",
            "-",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.interface_name",
            "-e",
            "tcp.port",
        ],
        stdin=xc.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    xc.stdout.close()
    try:
        setup.wait_attached(xc)
        setup.fetch(3)
        time.sleep(0.5)
        xc.send_signal(signal.SIGTERM)
        assert xc.wait(timeout=60) == 0, xc.stderr.read()
        text, err = reader.communicate(timeout=60)
        assert reader.returncode == 0, err
    finally:
        for p in (xc, reader):
            if p.poll() is None:
                p.kill()
                p.wait()
        report = dump.stop()
    setup.wait_gone()
    assert report["dropped"] == 0, report
    from pyinspect.pcap.export import point_name

    rows = [line.split("|") for line in text.splitlines() if line]
    ref = [
        r
        for r in fields(tmp_path / "veth.pcap", "frame.interface_name", "tcp.port")
        if "80" in r[1].split(",")
    ]
    live = web_packets(rows, point_name(setup.veth, "veth", setup.name))
    assert len(ref) >= 3 * 6 and len(live) == len(ref), (len(live), len(ref))


def test_reader_going_away_ends_an_idle_capture(setup):
    """The reader closes the stream while no packet flows (a closed ssh channel, Wireshark
    gone): the capture notices without a write failing and cleans up. (The filter keeps
    the container's own chatter, IPv6 and ARP, from being written.)"""
    xc = subprocess.Popen(
        setup.cli.argv(
            "extcap",
            "--extcap-interface",
            f"pyinspect-{setup.name}",
            "--capture",
            "--fifo",
            "-",
            "--comments-delay",
            "0",
            "--filter",
            "udp port 9",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        setup.wait_attached(xc)
        assert xc.stdout.read(4) == b"\x0a\x0d\x0d\x0a"  # the section header is there
        xc.stdout.close()
        assert xc.wait(timeout=30) == 0, xc.stderr.read()
    finally:
        if xc.poll() is None:
            xc.kill()
            xc.wait()
    assert xc.stderr.read() == b""
    setup.wait_gone()


def test_reader_going_away_while_packets_are_held_back(setup):
    """The reader closes the stream while the stream holds packets back for their
    comments: a normal stop (exit 0, nothing on stderr), nothing left."""
    xc = subprocess.Popen(
        setup.cli.argv(
            "extcap",
            "--extcap-interface",
            f"pyinspect-{setup.name}",
            "--capture",
            "--fifo",
            "-",
            "--comments-delay",
            "5",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        setup.wait_attached(xc)
        assert xc.stdout.read(4) == b"\x0a\x0d\x0d\x0a"
        setup.fetch(2)
        xc.stdout.close()
        assert xc.wait(timeout=30) == 0, xc.stderr.read()
    finally:
        if xc.poll() is None:
            xc.kill()
            xc.wait()
    assert xc.stderr.read() == b""
    setup.wait_gone()


def test_capture_filter_keeps_only_matching_packets(setup, tmp_path):
    out = tmp_path / "out.pcapng"
    setup.capture(out, "-f", "tcp[tcpflags] & tcp-syn != 0", fetches=2, duration=6)
    rows = fields(out, "frame.interface_name", "tcp.flags.syn")
    # SYN and SYN-ACK of two connections at four points, nothing else
    assert len(rows) == 2 * 2 * 4 and all(r[1] in ("1", "True") for r in rows), rows


def test_errors_reach_tshark(setup, tmp_path):
    # a container that is not running is no interface: tshark says so itself
    r = subprocess.run(
        setup.tshark_argv(
            "-i", "pyinspect-xc-missing", "-a", "duration:3", "-w", str(tmp_path / "a.pcapng")
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode != 0 and "no device named" in r.stderr, r.stderr
    # a filter libpcap does not compile: tshark checks it with the extcap first
    r = subprocess.run(
        setup.tshark_argv(
            "-i",
            f"pyinspect-{setup.name}",
            "-f",
            "tcp port",
            "-a",
            "duration:30",  # the error ends it at once; a loaded machine's slower start
            # must not let a short duration end the capture before the error arrives
            "-w",
            str(tmp_path / "b.pcapng"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Error by extcap pipe: Error: bad --filter 'tcp port'" in r.stderr, r.stderr
    setup.wait_gone()
    # straight from the command: one line on stderr, a non-zero exit
    r = setup.cli(
        "extcap",
        "--extcap-interface",
        f"pyinspect-{setup.name}",
        "--capture",
        "--fifo",
        "-",
        "--filter",
        "tcp port",
        check=False,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == "", "nothing is written before the filter is checked"


def test_container_stopping_during_capture_is_an_error_in_tshark(setup, tmp_path):
    name = unique("xcs")
    setup.cli("run", "-d", "--name", name, "busybox", "sleep", "600")
    tshark = subprocess.Popen(
        setup.tshark_argv(
            "-i", f"pyinspect-{name}", "-a", "duration:60", "-w", str(tmp_path / "o.pcapng")
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        setup.wait_attached(tshark, veth=False)
        setup.cli("rm", "-f", name)
        _, err = tshark.communicate(timeout=30)  # well before its 60 s
    finally:
        if tshark.poll() is None:
            tshark.kill()
            tshark.communicate()
        setup.cli("rm", "-f", name, check=False)
    # tshark itself exits 0 after an extcap error; it prints the extcap's stderr
    assert (
        f"Error by extcap pipe: Error: extcap: container {name} stopped during the capture" in err
    ), err
    setup.wait_gone()


def test_no_privileges_is_one_line(setup, tmp_path):
    """A user's Wireshark runs the launcher without root: the capture says so."""
    root = tmp_path / "userroot"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(root, 0o777)
    r = subprocess.run(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            setup.cli.argv()[2],
            "--root",
            str(root),
            "extcap",
            "--extcap-interface",
            f"pyinspect-{setup.name}",
            "--capture",
            "--fifo",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 5 and r.stderr.count("\n") == 1, r.stderr
    assert "capturing needs root" in r.stderr and "--install-sudo" in r.stderr
    assert r.stdout == ""


def test_container_gone_before_the_capture_is_one_line(setup):
    r = setup.cli(
        "extcap",
        "--extcap-interface",
        "pyinspect-xc-missing",
        "--capture",
        "--fifo",
        "-",
        check=False,
    )
    assert r.returncode != 0 and r.stderr.count("\n") == 1, r.stderr
    assert "no such container: xc-missing" in r.stderr and r.stdout == ""


def test_remote_capture_through_wiresharks_sshdump(setup, tmp_path):
    """Wireshark's own SSH remote capture (sshdump, as Wireshark runs it on Start) with
    `pyinspect extcap ... --fifo -` as the remote capture command, against an SSH server
    on the host namespace's loopback: the same packets as tcpdump; sshdump's stop closes
    the channel and the remote capture cleans up."""
    sshdump = os.path.join(extcap_folder(), "sshdump")
    if not os.access(sshdump, os.X_OK):
        pytest.skip("Wireshark's sshdump is not installed")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True
        )
    port = 2222
    server = subprocess.Popen(
        [
            "nsenter",
            f"--net={setup.host.path}",
            sys.executable,
            "-W",
            "ignore",
            str(Path(__file__).parent / "helpers" / "sshserver.py"),
            str(port),
            str(tmp_path / "host_key"),
            str(tmp_path / "client_key.pub"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    dump = sshd = None
    try:
        assert server.stdout.readline().strip() == "ready", server.communicate()
        dump = setup.tcpdump(tmp_path / "veth.pcap")
        remote = " ".join(
            setup.cli.argv(
                "extcap",
                "--extcap-interface",
                f"pyinspect-{setup.name}",
                "--capture",
                "--fifo",
                "-",
            )[2:]
        )
        out = tmp_path / "ssh.pcapng"
        sshd = subprocess.Popen(
            [
                "nsenter",
                f"--net={setup.host.path}",
                sshdump,
                "--extcap-interface=sshdump",
                "--capture",
                "--fifo",
                str(out),
                "--remote-host",
                "127.0.0.1",
                "--remote-port",
                str(port),
                "--remote-username",
                "root",
                "--sshkey",
                str(tmp_path / "client_key"),
                "--remote-capture-command",
                remote,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        setup.wait_attached(sshd)
        setup.fetch(3)
        time.sleep(1.5)  # the comment hold-back
        sshd.send_signal(signal.SIGTERM)
        sshd.communicate(timeout=60)
        setup.wait_gone()  # the channel closed: the remote capture ended itself
    finally:
        for p in (sshd, server):
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
        report = dump.stop() if dump else None
    assert report["dropped"] == 0, report
    from pyinspect.pcap.export import point_name

    rows = fields(out, "frame.interface_name", "tcp.port", "frame.comment")
    ref = [
        r
        for r in fields(tmp_path / "veth.pcap", "frame.interface_name", "tcp.port")
        if "80" in r[1].split(",")
    ]
    live = web_packets(rows, point_name(setup.veth, "veth", setup.name))
    assert len(ref) >= 3 * 6 and len(live) == len(ref), (len(live), len(ref))
    assert {r[0] for r in rows} >= {f"{setup.name}/eth0", "pyinspect0"}
    assert any("DNAT" in r[2] for r in live), "NAT comments over ssh too"
