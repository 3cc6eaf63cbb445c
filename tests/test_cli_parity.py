"""What a learner meets in the Docker tutorial, with pyinspect in docker's place:
`inspect -f`, `ps --format`, `ps`'s PORTS and CREATED columns, `top NAME aux`, and
the container's overlay root visible from the host. Output shapes are Docker's
documented ones (docker ps / inspect / top reference pages)."""

import json
import os
import re
import subprocess
import time

import pytest

from helpers.pccli import PcCli, assert_clean, one_line_error

pytestmark = pytest.mark.root


@pytest.fixture
def bridged(state_root, make_netns):
    """A CLI whose host is a fresh netns (bridge networking and -p happen there)."""
    pytest.importorskip("pyroute2")
    ns = make_netns("pp")
    cli = PcCli(state_root, netns=ns.name)
    yield cli
    for cid in cli.ids():
        cli("rm", "-f", cid, check=False)
    assert_clean(state_root, [])


def test_inspect_format_takes_go_templates(bridged):
    cli = bridged
    cli(
        "run",
        "-d",
        "--name",
        "pp-web",
        "-p",
        "8088:80",
        "-e",
        "GREETING=hi",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
    )
    doc = cli.inspect("pp-web")

    def f(t):
        return cli("inspect", "-f", t, "pp-web").stdout

    assert f("{{.State.Pid}}") == f"{doc['State']['Pid']}\n"
    assert f("{{.NetworkSettings.IPAddress}}") == doc["NetworkSettings"]["IPAddress"] + "\n"
    assert re.fullmatch(r"172\.\d+\.\d+\.\d+\n", f("{{.NetworkSettings.IPAddress}}"))
    assert json.loads(f("{{json .Config}}")) == doc["Config"]
    assert f('{{(index (index .NetworkSettings.Ports "80/tcp") 0).HostPort}}') == "8088\n"
    assert f("{{range $p, $b := .NetworkSettings.Ports}}{{$p}} {{end}}") == "80/tcp \n"
    assert f('{{range .Config.Env}}{{if eq . "GREETING=hi"}}{{.}}{{end}}{{end}}') == "GREETING=hi\n"
    assert f("{{.Name}} {{.HostConfig.NetworkMode | upper}}") == "/pp-web BRIDGE\n"
    # --format, several objects: one line each (an image too)
    out = cli("inspect", "--format", "{{.Id}}", "pp-web", "busybox").stdout.splitlines()
    assert out[0] == doc["Id"] and out[1].startswith("sha256:")


def test_inspect_format_errors_are_one_line(pc, state_root):
    pc("run", "-d", "--name", "pp-err", "--net", "none", "busybox", "sleep", "100")
    before = sorted(p.name for p in (state_root / "containers").iterdir())
    for template, words in (
        ("{{.Nope}}", 'map has no entry for key "Nope"'),
        ("{{.State.Pid", "unclosed action"),
        ("{{nope}}", 'function "nope" not defined'),
        ('{{define "x"}}{{end}}', "not supported by pyinspect"),
    ):
        line = one_line_error(pc("inspect", "-f", template, "pp-err", check=False), 2)
        assert line.startswith("Error: template parsing error: template: :1"), line
        assert words in line, line
    assert sorted(p.name for p in (state_root / "containers").iterdir()) == before
    assert pc.inspect("pp-err")["State"]["Running"]


def test_ps_columns_ports_and_created_like_docker(bridged):
    cli = bridged
    cli(
        "run",
        "-d",
        "--name",
        "pp-ports",
        "-p",
        "8088:80",
        "-p",
        "127.0.0.1:5353:53/udp",
        "busybox",
        "sleep",
        "100",
    )
    cli("run", "--name", "pp-done", "--net", "none", "busybox", "true")
    out = cli("ps", "-a").stdout.splitlines()
    # Docker's header, aligned by its tabwriter (min width 10, padding 3)
    assert re.fullmatch(
        r"CONTAINER ID   IMAGE     COMMAND +CREATED +STATUS +PORTS +NAMES", out[0]
    ), out[0]
    row = next(line for line in out if line.endswith("pp-ports"))
    assert "127.0.0.1:5353->53/udp, 0.0.0.0:8088->80/tcp" in row
    assert re.search(
        r"(Less than a second|\d+ seconds?) ago +Up (Less than a second|\d+ "
        r"seconds?) ",
        row,
    ), row
    done = next(line for line in out if line.endswith("pp-done"))
    assert re.search(r" Exited \(0\) (Less than a second|\d+ seconds?) ago ", done), done
    col = out[0].index("PORTS")
    assert row[col:].startswith("127.0.0.1:5353->53/udp")  # Docker: by container port
    # --format: a Go template, `table TEMPLATE` with Docker's headers, json
    fmt = cli("ps", "--format", "{{.Names}}: {{.Ports}}").stdout
    assert fmt == "pp-ports: 127.0.0.1:5353->53/udp, 0.0.0.0:8088->80/tcp\n"
    table = cli("ps", "-a", "--format", r"table {{.ID}}\t{{.Names}}\t{{.Status}}").stdout
    lines = table.splitlines()
    assert re.fullmatch(r"CONTAINER ID   NAMES +STATUS", lines[0]), lines
    assert len(lines) == 3 and all(
        re.fullmatch(r"[0-9a-f]{12}   pp-\S+ +\S.*", x) for x in lines[1:]
    )
    row = json.loads(cli("ps", "--format", "json").stdout)
    assert row["Ports"] == "127.0.0.1:5353->53/udp, 0.0.0.0:8088->80/tcp"
    assert row["RunningFor"].endswith(" ago") and row["State"] == "running"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+0000 UTC", row["CreatedAt"])
    line = one_line_error(cli("ps", "--format", "{{.Nope}}", check=False), 2)
    assert 'map has no entry for key "Nope"' in line


def test_relative_created_column_ages():
    """CREATED is Docker's HumanDuration + ' ago', from the record's time."""
    from pyinspect.dockerfmt.psformat import ps_row
    from pyinspect.runtime.state import Container, ContainerSpec

    now = time.time()

    def stamp(ago):
        t = now - ago
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".0Z"

    c = Container(
        id="a" * 64,
        name="old",
        image="busybox",
        status="exited",
        created=stamp(150),
        started_at=stamp(149),
        finished_at=stamp(3 * 3600),
        exit_code=1,
        spec=ContainerSpec(image="busybox"),
        image_config={"ExposedPorts": {"80/tcp": {}}},
    )
    row = ps_row(c, now=now)
    assert row["RunningFor"] == "2 minutes ago"
    assert row["Status"] == "Exited (1) 3 hours ago"
    assert row["Ports"] == "80/tcp"  # exposed, not published (it is not running)


def test_top_passes_ps_options_like_docker(pc, state_root):
    pc(
        "run",
        "-d",
        "--name",
        "pp-top",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "sleep 1001 & exec sleep 1002",
    )
    pid = pc.inspect("pp-top")["State"]["Pid"]
    cid = pc.inspect("pp-top")["Id"]
    procs = set()
    for base in os.listdir("/sys/fs/cgroup"):
        p = f"/sys/fs/cgroup/{base}/pyinspect/{cid}/cgroup.procs"
        if os.path.exists(p):
            with open(p) as f:
                procs |= set(map(int, f.read().split()))
    aux = pc("top", "pp-top", "aux").stdout.splitlines()
    titles = aux[0].split()
    assert titles == [
        "USER",
        "PID",
        "%CPU",
        "%MEM",
        "VSZ",
        "RSS",
        "TTY",
        "STAT",
        "START",
        "TIME",
        "COMMAND",
    ]
    rows = [line.split(None, len(titles) - 1) for line in aux[1:]]
    assert {int(r[1]) for r in rows} == procs and pid in procs and len(procs) == 2
    assert sorted(r[-1] for r in rows) == ["sleep 1001", "sleep 1002"]
    # the header is aligned by Docker's tabwriter (min width 20, padding 3)
    assert aux[0].startswith("USER                PID                 %CPU")
    default = pc("top", "pp-top").stdout.splitlines()
    assert default[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert len(default) == 3
    custom = pc("top", "pp-top", "-o", "pid,args").stdout.splitlines()
    assert custom[0].split() == ["PID", "COMMAND"] and len(custom) == 3
    assert "PID field" in one_line_error(pc("top", "pp-top", "-o", "args", check=False), 2)
    assert "ps --bogus" in one_line_error(pc("top", "pp-top", "--bogus", check=False), 2)
    # without ps on the host: plain `top` reads /proc, options are refused in one line
    env = {"PATH": "/nonexistent"}
    plain = pc("top", "pp-top", env=env).stdout.splitlines()
    assert plain[0].split() == default[0].split() and len(plain) == 3
    line = one_line_error(pc("top", "pp-top", "aux", env=env, check=False), 5)
    assert "needs the ps command" in line


def host_mounts():
    return subprocess.run(["mount"], capture_output=True, text=True, check=True).stdout


def test_overlay_root_is_visible_from_the_host(pc, state_root):
    pc(
        "run",
        "-d",
        "--name",
        "pp-ovl",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo inside > /tmp/made-inside; exec sleep 100",
    )
    merged = pc("inspect", "-f", "{{.GraphDriver.Data.MergedDir}}", "pp-ovl").stdout.strip()
    upper = pc("inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", "pp-ovl").stdout.strip()
    lines = [
        x for x in host_mounts().splitlines() if x.startswith("overlay on ") and f" {merged} " in x
    ]
    assert len(lines) == 1 and f"upperdir={upper}" in lines[0], lines
    deadline = time.monotonic() + 5
    while not os.path.exists(f"{merged}/tmp/made-inside") and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(f"{merged}/tmp/made-inside") as f:
        assert f.read() == "inside\n"
    assert os.path.exists(f"{merged}/bin/busybox")
    # the container's own mounts (/proc, /dev, /sys) stay in its namespace
    assert not os.listdir(f"{merged}/proc") and f" {merged}/proc " not in host_mounts()
    pc("stop", "-t", "1", "pp-ovl")
    assert f" {merged} " not in host_mounts()
    assert not os.listdir(merged)


def test_port_lists_mappings_as_docker_port(bridged):
    """`port NAME [PRIVATE[/PROTO]]`: Docker's lines and errors; a stopped container
    publishes nothing (its inspect has no Ports and no address, its HostConfig keeps
    the bindings it asked for)."""
    cli = bridged
    cli("run", "-d", "--name", "pp-port", "-p", "9002-9003:82-83", "-p", "8088:80/udp",
        "-p", "10000:84", "busybox", "sleep", "600")  # fmt: skip
    assert cli("port", "pp-port").stdout.splitlines() == [
        "80/udp -> 0.0.0.0:8088",
        "82/tcp -> 0.0.0.0:9002",
        "83/tcp -> 0.0.0.0:9003",
        "84/tcp -> 0.0.0.0:10000",  # digit runs by value: 84 after 83, not after 8
    ]
    assert cli("port", "pp-port", "83").stdout == "0.0.0.0:9003\n"
    assert cli("port", "pp-port", "80/udp").stdout == "0.0.0.0:8088\n"
    line = one_line_error(cli("port", "pp-port", "80", check=False), 3)
    assert line == "Error: No public port '80/tcp' published for pp-port", line
    line = one_line_error(cli("port", "pp-port", "http", check=False), 2)
    assert line == "Error: invalid port (http)", line
    one_line_error(cli("port", "busybox", check=False), 3)  # an image is no container
    cli("stop", "-t", "1", "pp-port")
    assert cli("port", "pp-port").stdout == ""
    doc = cli.inspect("pp-port")
    assert doc["NetworkSettings"]["Ports"] == {} and doc["NetworkSettings"]["IPAddress"] == ""
    assert doc["HostConfig"]["PortBindings"]["83/tcp"] == [{"HostIp": "", "HostPort": "9003"}]
