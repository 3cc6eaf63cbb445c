"""Bad input gets a one-line error naming the problem and a non-zero exit, never a
traceback, and nothing stored is lost.

Every case runs the real `pyinspect --root <tmp>` console script, inside a network
namespace of the test's own (so a `-p` that slipped through could touch nothing of
the host's), against a root that holds a loaded image, a running and an exited
container (`--net none`) and a store with events and a trace session. After each
bad command the stored state (image and container records, store rows) must be
byte-for-byte what it was.
"""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest

from conftest import Cli, Netns, unique

pytestmark = pytest.mark.root

MISSING = "/pq-missing-dir"  # never created; a path for "no such file/dir"
# container names are global here (the runtime names their netns after them): unique per run
RUN = uuid.uuid4().hex[:6]
KEEP, DONE, WEB = f"pq-keep-{RUN}", f"pq-done-{RUN}", f"pq-web-{RUN}"
TABLES = (
    "events",
    "trace_sessions",
    "capture_points",
    "pcap_segments",
    "journeys",
    "probe_loss",
)


def error_line(proc):
    """The one `Error: ...` line of a failed command; asserts the accepted formats.

    Accepted: a single non-empty stderr line starting with `Error: ` (click's usage
    errors too). Never a traceback, never an internal error (exit 70), never exit 0.
    """
    both = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"exit 0 on bad input\nstdout: {proc.stdout}"
    assert "Traceback" not in both and 'File "' not in both, both
    assert proc.returncode != 70 and "internal error" not in both, both
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def snapshot(root):
    """Hashes of what must survive bad input: image and container records, store rows."""
    out = {}
    for rel in ("images/repositories.json",):
        out[rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    for pattern in (
        "images/configs/*",
        "names/*",
        "containers/*/config.json",
        "containers/*/state.json",
    ):
        for p in sorted(root.glob(pattern)):
            out[str(p.relative_to(root))] = (
                f"-> {os.readlink(p)}"
                if p.is_symlink()
                else hashlib.sha256(p.read_bytes()).hexdigest()
            )
    out["blobs"] = sorted((p.name, p.stat().st_size) for p in (root / "images/blobs").iterdir())
    conn = sqlite3.connect(f"file:{root / 'pyinspect.db'}?mode=ro", uri=True)
    try:
        for table in TABLES:
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            out[f"db:{table}"] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
    finally:
        conn.close()
    return out


def seed_store(root):
    """A store with events, a trace session, its capture point, packets and loss rows."""
    from pyinspect.config import database_path
    from pyinspect.store import Store

    now = time.time_ns()
    with Store(database_path(root)) as store:
        store.insert_events(
            [
                {
                    "ts_ns": now - i * 1000,
                    "kind": "exec",
                    "pid": 100 + i,
                    "comm": "sh",
                    "container_name": KEEP,
                    "detail": {"argv": ["sh", str(i)]},
                }
                for i in range(50)
            ]
        )
        from helpers.segfiles import Pkt, add_trace

        add_trace(
            store,
            "pq-traced",
            [("eth0", "pq-traced/eth0")],
            [[[Pkt(0, now - 10**8 + i, bytes([i]) * 60, "in") for i in range(5)]]],
            cid="c" * 64,
            started=now - 10**9,
            stopped=now,
        )
        store.db["probe_loss"].insert({"ts_ns": now, "probe": "process", "lost": 3})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A root with state worth keeping, a scratch dir of bad files, and a test netns."""
    base = tmp_path_factory.mktemp("pq-sweep")
    root, files = base / "root", base / "files"
    root.mkdir()
    files.mkdir()
    ns = Netns(unique("pq"))
    cli = Cli(root, netns=ns.name)
    try:
        cli("run", "-d", "--name", KEEP, "--net", "none", "busybox", "sleep", "600")
        cli("run", "--name", DONE, "--net", "none", "busybox", "true")
        # bridge mode: the bridge, veth and DNAT rules live in the test's namespace
        cli("run", "-d", "--name", WEB, "-p", "8088:80", "busybox", "httpd", "-f", "-p", "80")
        seed_store(root)
        cli("pcap", "export", "--session", "1", "-o", files / "good.pcapng")
        good = (files / "good.pcapng").read_bytes()
        (files / "trunc.pcapng").write_bytes(good[: len(good) - 7])
        (files / "garbage.pcap").write_bytes(b"garbage, not a capture\n" * 10)
        (files / "garbage.tar").write_bytes(b"not an archive\n" * 100)
        (files / "emptydir").mkdir()
        # something of the test's own holds a port in its namespace
        listener = ns.popen(
            sys.executable,
            "-c",
            "import socket, time; s = socket.socket(); "
            "s.bind(('127.0.0.1', 8901)); s.listen(); print(1, flush=True); "
            "time.sleep(600)",
            stdout=subprocess.PIPE,
        )
        assert listener.stdout.readline().strip() == b"1"
        yield cli, root, files
    finally:
        proc = cli("rm", "-f", KEEP, DONE, WEB, check=False)
        ns.remove()  # kills the listener too
    assert proc.returncode == 0, proc.stderr


# (id, argv, exit code, words the error line must name). {f} is the bad-files dir.
CASES = [
    # global
    ("unknown-command", ["pq-nosuch-cmd"], 2, ["pq-nosuch-cmd"]),
    ("unknown-option", ["info", "--pq-bogus"], 2, ["--pq-bogus"]),
    ("root-is-a-file", ["--root", "/etc/hostname", "ps"], 2, ["--root", "/etc/hostname"]),
    ("root-uncreatable-store", ["--root", "/proc/pq-root", "events"], 5, ["/proc/pq-root"]),
    (
        "root-uncreatable-images",
        ["--root", "/proc/pq-root", "run", "--net", "none", "busybox", "true"],
        5,
        ["/proc/pq-root"],
    ),
    # run: images, names, networks
    ("run-no-image-arg", ["run"], 2, ["IMAGE"]),
    ("run-unknown-image", ["run", "--net", "none", "pq-nosuch-img", "true"], 3, ["pq-nosuch-img"]),
    ("run-name-taken", ["run", "--net", "none", "--name", KEEP, "busybox", "true"], 4, [KEEP]),
    (
        "run-bad-name",
        ["run", "--net", "none", "--name", "pq bad", "busybox", "true"],
        2,
        ["pq bad"],
    ),
    (
        "run-name-too-long",
        ["run", "--net", "none", "--name", "pq" * 100, "busybox", "true"],
        2,
        ["128 characters"],
    ),
    (
        "volume-then-bad-env",
        ["run", "--net", "none", "-v", "{f}/pq-newdir:/x", "-e", "=y", "busybox", "true"],
        2,
        ["=y"],
    ),
    (
        "volume-then-unknown-image",
        ["run", "--net", "none", "-v", "{f}/pq-newdir:/x", "pq-nosuch-img"],
        3,
        ["pq-nosuch-img"],
    ),
    # a name that is not a mode names a user network (Docker: "network ... not found")
    ("run-bad-net", ["run", "--net", "pq-bogus", "busybox", "true"], 3, ["pq-bogus"]),
    (
        "run-net-unknown-container",
        ["run", "--net", "container:pq-nosuch", "busybox", "true"],
        3,
        ["pq-nosuch"],
    ),
    # run: -p
    ("publish-text", ["run", "-p", "abc", "busybox", "true"], 2, ["abc"]),
    ("publish-port-range", ["run", "-p", "99999:80", "busybox", "true"], 2, ["99999"]),
    ("publish-port-zero", ["run", "-p", "0:80", "busybox", "true"], 2, ["0:80"]),
    ("publish-too-many-parts", ["run", "-p", "8080:80:90", "busybox", "true"], 2, ["8080:80:90"]),
    ("publish-bad-ip", ["run", "-p", "1.2.3:80:80", "busybox", "true"], 2, ["1.2.3"]),
    ("publish-bad-proto", ["run", "-p", "8080:80/xyz", "busybox", "true"], 2, ["xyz"]),
    (
        "publish-taken",
        ["run", "-d", "--name", f"{WEB}-2", "-p", "8088:80", "busybox", "true"],
        4,
        ["8088", WEB],
    ),
    (
        "publish-with-net-none",
        ["run", "--net", "none", "-p", "8080:80", "busybox", "true"],
        2,
        ["none"],
    ),
    # run: --memory, --cpus, -e, -v, -w, --pids-limit
    ("memory-unit", ["run", "--net", "none", "--memory", "12q", "busybox", "true"], 2, ["12q"]),
    ("memory-negative", ["run", "--net", "none", "-m", "-5m", "busybox", "true"], 2, ["-5m"]),
    ("memory-text", ["run", "--net", "none", "-m", "lots", "busybox", "true"], 2, ["lots"]),
    (
        "memory-huge",
        ["run", "--net", "none", "-m", "9" * 400 + "m", "busybox", "true"],
        2,
        ["too large"],
    ),
    ("cpus-nan", ["run", "--net", "none", "--cpus", "nan", "busybox", "true"], 2, ["nan"]),
    (
        "pids-limit-huge",
        ["run", "--net", "none", "--pids-limit", "99999999999999999999", "busybox", "true"],
        2,
        ["99999999999999999999"],
    ),
    ("cpus-text", ["run", "--net", "none", "--cpus", "abc", "busybox", "true"], 2, ["abc"]),
    ("cpus-zero", ["run", "--net", "none", "--cpus", "0", "busybox", "true"], 2, ["--cpus"]),
    ("cpus-negative", ["run", "--net", "none", "--cpus", "-1", "busybox", "true"], 2, ["-1"]),
    ("env-no-key", ["run", "--net", "none", "-e", "=x", "busybox", "true"], 2, ["=x"]),
    (
        "env-empty",
        ["run", "--net", "none", "-e", "", "busybox", "true"],
        2,
        ["environment variable"],
    ),
    (
        "volume-no-colon",
        ["run", "--net", "none", "-v", "nocolon", "busybox", "true"],
        2,
        ["nocolon"],
    ),
    (
        "volume-relative-host",
        ["run", "--net", "none", "-v", "./rel:/x", "busybox", "true"],
        2,
        ["./rel:/x", "absolute path"],
    ),
    ("volume-create-bad-name", ["volume", "create", "a/b"], 2, ["a/b", "invalid characters"]),
    ("volume-inspect-missing", ["volume", "inspect", "nope"], 3, ["no such volume: nope"]),
    ("volume-rm-missing", ["volume", "rm", "nope"], 3, ["no such volume: nope"]),
    ("volume-ls-bad-filter", ["volume", "ls", "-f", "x=y"], 2, ["invalid filter"]),
    (
        "volume-relative-ctr",
        ["run", "--net", "none", "-v", "/tmp:rel", "busybox", "true"],
        2,
        ["/tmp:rel"],
    ),
    ("volume-bad-mode", ["run", "--net", "none", "-v", "/tmp:/x:zz", "busybox", "true"], 2, ["zz"]),
    ("workdir-relative", ["run", "--net", "none", "-w", "rel", "busybox", "true"], 2, ["rel"]),
    (
        "volume-file-on-dir",
        ["run", "--rm", "--net", "none", "-v", "/etc/hostname:/etc", "busybox", "true"],
        125,
        ["/etc", "Not a directory"],
    ),
    (
        "workdir-is-a-file",
        ["run", "--rm", "--net", "none", "-w", "/etc/passwd", "busybox", "true"],
        125,
        ["/etc/passwd", "not a directory"],
    ),
    # (without --rm too: refused before any record is made)
    (
        "workdir-is-a-file-kept",
        ["run", "--net", "none", "-w", "/etc/passwd", "busybox", "true"],
        125,
        ["/etc/passwd", "not a directory"],
    ),
    (
        "workdir-below-a-file",
        ["run", "-d", "--net", "none", "-w", "/etc/passwd/x", "busybox", "true"],
        125,
        ["/etc/passwd", "not a directory"],
    ),
    (
        "pids-limit-text",
        ["run", "--net", "none", "--pids-limit", "x", "busybox", "true"],
        2,
        ["--pids-limit"],
    ),
    # container commands: unknown names, wrong state, bad options
    ("exec-unknown", ["exec", "pq-nosuch", "true"], 3, ["pq-nosuch"]),
    ("exec-no-command", ["exec", KEEP], 2, ["COMMAND"]),
    ("exec-bad-env", ["exec", "-e", "=bad", KEEP, "true"], 2, ["=bad"]),
    ("exec-stopped", ["exec", DONE, "true"], 4, [DONE, "not running"]),
    ("logs-unknown", ["logs", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("logs-bad-tail", ["logs", "-n", "abc", KEEP], 2, ["abc"]),
    ("version-bad-format", ["version", "--format", "{{.Nope"], 2, ["template"]),
    (
        "run-bad-detach-keys",
        ["run", "--detach-keys", "ctrl-pq", "busybox", "true"],
        2,
        ["detach keys"],
    ),
    ("attach-unknown", ["attach", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("attach-bad-keys", ["attach", "--detach-keys", "ctrl-pq", KEEP], 2, ["detach keys"]),
    ("start-unknown", ["start", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("stop-unknown", ["stop", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("stop-bad-time", ["stop", "-t", "abc", KEEP], 2, ["abc"]),
    ("restart-unknown", ["restart", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("kill-unknown", ["kill", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("kill-bad-signal", ["kill", "-s", "PQBOGUS", KEEP], 2, ["PQBOGUS"]),
    ("rm-unknown", ["rm", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("rm-running", ["rm", KEEP], 4, [KEEP, "running"]),
    ("rm-no-arg", ["rm"], 2, ["CONTAINERS"]),
    ("inspect-unknown", ["inspect", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("stats-unknown", ["stats", "--no-stream", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("stats-stopped", ["stats", "--no-stream", DONE], 4, [DONE]),
    ("stats-bad-template", ["stats", "--no-stream", "--format", "{{.Name"], 2, ["template"]),
    ("stats-bad-interval", ["stats", "--interval", "0"], 2, ["--interval"]),
    ("top-unknown", ["top", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("top-stopped", ["top", DONE], 4, [DONE]),
    ("top-bad-ps-option", ["top", KEEP, "--pq-bogus"], 2, ["--pq-bogus"]),
    ("top-no-pid-column", ["top", KEEP, "-o", "comm"], 2, ["PID"]),
    ("port-unknown", ["port", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("diff-unknown", ["diff", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("run-bad-dns", ["run", "--dns", "pq-x", "--net", "none", "busybox"], 2, ["pq-x"]),
    ("create-bad-memory", ["create", "--net", "none", "-m", "pq", "busybox"], 2, ["'pq'"]),
    ("create-name-taken", ["create", "--name", KEEP, "--net", "none", "busybox"], 4, [KEEP]),
    ("create-detach", ["create", "-d", "busybox"], 2, ["-d"]),
    ("pause-unknown", ["pause", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("pause-stopped", ["pause", DONE], 4, ["is not running"]),
    ("unpause-unknown", ["unpause", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("unpause-running", ["unpause", KEEP], 4, ["is not paused"]),
    ("wait-unknown", ["wait", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("search-bad-limit", ["search", "--limit", "0", "pq"], 2, ["--limit"]),
    ("search-bad-filter", ["search", "-f", "pq-bogus=1", "pq"], 2, ["pq-bogus"]),
    ("update-unknown", ["update", "-m", "64m", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("update-nothing", ["update", KEEP], 2, ["one or more flags"]),
    ("update-bad-memory", ["update", "-m", "pq", KEEP], 2, ["'pq'"]),
    ("update-bad-restart", ["update", "--restart", "pq-sometimes", KEEP], 2, ["pq-sometimes"]),
    ("container-prune-bad", ["container", "prune", "--pq-bogus"], 2, ["--pq-bogus"]),
    ("image-prune-bad", ["image", "prune", "--pq-bogus"], 2, ["--pq-bogus"]),
    ("system-prune-bad", ["system", "prune", "--pq-bogus"], 2, ["--pq-bogus"]),
    ("system-df-bad-format", ["system", "df", "--format", "{{.Type"], 2, ["template"]),
    ("network-prune-bad", ["network", "prune", "--pq-bogus"], 2, ["--pq-bogus"]),
    ("commit-unknown", ["commit", "pq-nosuch", "pq-img"], 3, ["pq-nosuch"]),
    ("commit-bad-change", ["commit", "-c", "RUN true", KEEP], 2, ["run is not a valid change"]),
    ("commit-bad-repo", ["commit", KEEP, "Pq:Bad"], 2, ["'Pq:Bad'"]),
    ("export-unknown", ["export", "-o", "{f}/pq-out.tar", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("export-bad-dir", ["export", "-o", f"{MISSING}/x.tar", KEEP], 2, [MISSING]),
    ("import-garbage", ["import", "{f}/garbage.tar", "pq-imp"], 2, ["garbage.tar", "not a tar"]),
    ("import-missing", ["import", f"{MISSING}/x.tar"], 3, [MISSING]),
    ("import-url-refused", ["import", "http://127.0.0.1:1/x.tar"], 2, ["127.0.0.1:1", "refused"]),
    ("import-bad-change", ["import", "-c", "FROM x", "{f}/garbage.tar"], 2, ["from is not"]),
    ("rename-unknown", ["rename", "pq-nosuch", "pq-other"], 3, ["pq-nosuch"]),
    ("rename-bad-name", ["rename", KEEP, "pq bad"], 2, ["'pq bad'"]),
    ("rename-taken", ["rename", KEEP, DONE], 4, [DONE]),
    ("history-unknown", ["history", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("history-bad-template", ["history", "--format", "{{.Pq", "busybox"], 2, ["template"]),
    ("history-bad-human", ["history", "-H", "pq", "busybox"], 2, ["pq"]),
    ("ps-filter-unknown-key", ["ps", "--filter", "pq-bogus=1"], 2, ["'pq-bogus'"]),
    ("ps-filter-no-value", ["ps", "-f", "pq-name"], 2, ["pq-name", "name=value"]),
    ("ps-filter-bad-status", ["ps", "-f", "status=pq-up"], 2, ["status=pq-up"]),
    ("ps-filter-bad-port", ["ps", "-f", "publish=80-pq"], 2, ["publish=80-pq"]),
    ("ps-filter-no-container", ["ps", "-f", "since=pq-nosuch"], 3, ["pq-nosuch"]),
    ("port-not-published", ["port", KEEP, "80/udp"], 3, ["'80/udp'", KEEP]),
    ("port-not-a-port", ["port", KEEP, "99999"], 2, ["99999"]),
    ("inspect-bad-template", ["inspect", "-f", "{{.PqNope}}", KEEP], 2, ["PqNope"]),
    ("inspect-unclosed-template", ["inspect", "-f", "{{.State", KEEP], 2, ["unclosed"]),
    ("ps-bad-template", ["ps", "--format", "{{pqfunc .ID}}"], 2, ["pqfunc"]),
    (
        "run-bad-restart",
        ["run", "--restart", "pq-sometimes", "--net", "none", "busybox"],
        2,
        ["pq-sometimes"],
    ),
    (
        "run-restart-with-rm",
        ["run", "--rm", "--restart", "always", "--net", "none", "busybox"],
        2,
        ["--restart", "--rm"],
    ),
    ("autostart-extra-arg", ["autostart", "pq-extra"], 2, ["pq-extra"]),
    (
        "install-service-no-dir",
        ["install-service", "--unit-dir", MISSING, "--no-enable"],
        2,
        [MISSING, "not a directory"],
    ),
    ("cp-unknown", ["cp", "pq-nosuch:/etc/hostname", "{f}/out"], 3, ["pq-nosuch"]),
    ("cp-no-container", ["cp", "a", "b"], 2, ["CONTAINER:PATH"]),
    ("cp-empty-path-in-src", ["cp", f"{KEEP}:", "{f}/out"], 2, ["empty path", f"{KEEP}:"]),
    ("cp-empty-path-in-dest", ["cp", "{f}/good.pcapng", f"{KEEP}:"], 2, ["empty path", f"{KEEP}:"]),
    ("cp-empty-host-dest", ["cp", f"{KEEP}:/etc/hostname", ""], 2, ["empty path", "DEST"]),
    ("cp-empty-host-src", ["cp", "", f"{KEEP}:/tmp/"], 2, ["empty path", "SRC"]),
    ("cp-missing-in-ctr", ["cp", f"{KEEP}:/pq-nonexistent", "{f}/out"], 3, ["/pq-nonexistent"]),
    ("cp-missing-on-host", ["cp", "{f}/pq-nonexistent", f"{KEEP}:/tmp/"], 3, ["pq-nonexistent"]),
    # missing required arguments, command by command
    *[
        (f"{cmd}-no-arg", [cmd], 2, [arg])
        for cmd, arg in (
            ("start", "CONTAINERS"),
            ("stop", "CONTAINERS"),
            ("restart", "CONTAINERS"),
            ("kill", "CONTAINERS"),
            ("logs", "CONTAINER"),
            ("top", "CONTAINER"),
            ("port", "CONTAINER"),
            ("diff", "CONTAINER"),
            ("create", "IMAGE"),
            ("pause", "CONTAINERS"),
            ("unpause", "CONTAINERS"),
            ("wait", "CONTAINERS"),
            ("rename", "CONTAINER"),
            ("search", "TERM"),
            ("cp", "SRC"),
            ("rmi", "IMAGE"),
            ("tag", "SOURCE"),
        )
    ],
    ("cp-no-dest", ["cp", f"{KEEP}:/etc/hostname"], 2, ["DEST"]),
    ("export-no-output", ["pcap", "export", "--session", "1"], 2, ["--output"]),
    ("merge-no-output", ["pcap", "merge", "{f}/good.pcapng"], 2, ["--output"]),
    # images
    ("load-missing-file", ["load", "-i", "{f}/pq-missing.tar"], 3, ["pq-missing.tar"]),
    ("load-garbage", ["load", "-i", "{f}/garbage.tar"], 2, ["garbage.tar"]),
    ("load-empty-dir", ["load", "-i", "{f}/emptydir"], 2, ["emptydir"]),
    ("save-unknown", ["save", "-o", "{f}/pq-out.tar", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("save-no-image", ["save", "-o", "{f}/pq-out.tar"], 2, ["IMAGE"]),
    # build
    ("build-no-dockerfile", ["build", "{f}/emptydir"], 3, ["Dockerfile", "emptydir"]),
    ("build-missing-context", ["build", "{f}/pq-missing-ctx"], 3, ["pq-missing-ctx"]),
    ("build-bad-tag", ["build", "-t", "Bad:Tag!", "{f}/emptydir"], 2, ["Bad:Tag!"]),
    (
        "build-garbage-dockerfile",
        ["build", "-f", "{f}/garbage.pcap", "{f}/emptydir"],
        2,
        ["line 1", "garbage"],
    ),
    ("tag-unknown", ["tag", "pq-nosuch", "pq-x"], 3, ["pq-nosuch"]),
    ("tag-bad-target", ["tag", "busybox", "Pq Bad"], 2, ["Pq Bad"]),
    ("tag-missing-target", ["tag", "busybox"], 2, ["TARGET"]),
    ("rmi-unknown", ["rmi", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("rmi-in-use", ["rmi", "busybox"], 4, ["pq-"]),
    # registries (nothing listens on 127.0.0.1:9 in the case's own netns)
    ("pull-bad-name", ["pull", "Pq/Bad"], 2, ["Pq/Bad"]),
    ("pull-bad-digest", ["pull", "pq-x@sha256:12"], 2, ["sha256"]),
    ("pull-registry-down", ["pull", "127.0.0.1:9/pq-x:1"], 5, ["127.0.0.1:9"]),
    ("push-not-tagged", ["push", "127.0.0.1:9/pq-nosuch:1"], 3, ["pq-nosuch"]),
    ("push-digest", ["push", f"pq-x@sha256:{'a' * 64}"], 2, ["digest"]),
    ("login-bad-registry", ["login", "-u", "pq", "--password-stdin", "pq bad!"], 2, ["pq bad!"]),
    ("login-no-username", ["login", "--password-stdin", "127.0.0.1:9"], 2, ["--username"]),
    ("logout-bad-registry", ["logout", "pq bad!"], 2, ["pq bad!"]),
    # network
    ("network-unknown", ["network", "inspect", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("network-bad-subcommand", ["network", "pq-bogus"], 2, ["pq-bogus"]),
    ("network-inspect-no-arg", ["network", "inspect"], 2, ["NAMES"]),
    ("network-create-bad-subnet", ["network", "create", "--subnet", "pq", "pq-n"], 2, ["pq"]),
    ("network-create-reserved", ["network", "create", "host"], 2, ["host"]),
    ("network-rm-unknown", ["network", "rm", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("network-rm-bridge", ["network", "rm", "bridge"], 2, ["bridge"]),
    ("network-connect-unknown", ["network", "connect", "pq-nonet", "pq-noctr"], 3, ["pq-noctr"]),
    (
        "network-disconnect-unknown",
        ["network", "disconnect", "pq-nonet", "pq-noctr"],
        3,
        ["pq-noctr"],
    ),
    # observe
    ("events-since-text", ["events", "--since", "bogus"], 2, ["bogus"]),
    ("events-since-negative", ["events", "--since", "-5m"], 2, ["-5m"]),
    ("events-since-bad-date", ["events", "--since", "2026-13-45T00:00:00"], 2, ["2026-13-45"]),
    ("events-since-inf", ["events", "--since", "inf"], 2, ["inf"]),
    (
        "events-since-huge-epoch",
        ["events", "--since", "99999999999999999999"],
        2,
        ["99999999999999999999"],
    ),
    ("events-since-huge-duration", ["events", "--since", "99999999999d"], 2, ["99999999999d"]),
    ("events-unknown-kind", ["events", "--kind", "exec", "--kind", "pq-bogus"], 2, ["pq-bogus"]),
    ("events-limit-zero", ["events", "--limit", "0"], 2, ["--limit"]),
    ("map-unknown-container", ["map", "-c", "pq-nosuch"], 3, ["pq-nosuch"]),
    # trace
    ("trace-no-container", ["trace"], 2, ["--container"]),
    ("trace-unknown", ["trace", "-c", "pq-nosuch", "--duration", "1"], 3, ["pq-nosuch"]),
    ("trace-port-zero", ["trace", "-c", KEEP, "--port", "0"], 2, ["--port"]),
    (
        "trace-bad-filter",
        ["trace", "-c", KEEP, "--filter", "tcp port", "--duration", "1"],
        2,
        ["tcp port"],
    ),
    (
        "trace-negative-snaplen",
        ["trace", "-c", KEEP, "--snaplen", "-5", "--duration", "1"],
        2,
        ["-5"],
    ),
    (
        "trace-via-unknown",
        ["trace", "-c", WEB, "--via", "pq-noif", "--duration", "1"],
        3,
        ["pq-noif"],
    ),
    ("trace-net-none", ["trace", "-c", KEEP, "--duration", "1"], 5, [KEEP]),
    # extcap (a capture to stdout: nothing may be written before the failure)
    ("extcap-no-interface", ["extcap", "--capture", "--fifo", "-"], 2, ["--extcap-interface"]),
    (
        "extcap-not-ours",
        ["extcap", "--extcap-interface", "pq-eth9", "--extcap-config"],
        2,
        ["pq-eth9"],
    ),
    (
        "extcap-unknown",
        ["extcap", "--extcap-interface", "pyinspect-pq-nosuch", "--capture", "--fifo", "-"],
        3,
        ["pq-nosuch"],
    ),
    (
        "extcap-bad-filter",
        [
            "extcap",
            "--extcap-interface",
            f"pyinspect-{KEEP}",
            "--capture",
            "--fifo",
            "-",
            "--filter",
            "tcp port",
        ],
        2,
        ["tcp port"],
    ),
    (
        "extcap-bad-points",
        [
            "extcap",
            "--extcap-interface",
            f"pyinspect-{KEEP}",
            "--capture",
            "--fifo",
            "-",
            "--points",
            "veth,pq-bogus",
        ],
        2,
        ["pq-bogus"],
    ),
    (
        "extcap-missing-fifo",
        [
            "extcap",
            "--extcap-interface",
            f"pyinspect-{KEEP}",
            "--capture",
            "--fifo",
            f"{MISSING}/fifo",
        ],
        5,
        [MISSING],
    ),
    (
        "extcap-net-none",
        ["extcap", "--extcap-interface", f"pyinspect-{KEEP}", "--capture", "--fifo", "-"],
        5,
        [KEEP],
    ),
    # pcap
    ("export-no-selector", ["pcap", "export", "-o", "{f}/pq.pcapng"], 2, ["--session"]),
    (
        "export-unknown-session",
        ["pcap", "export", "--session", "999", "-o", "{f}/pq.pcapng"],
        3,
        ["999"],
    ),
    (
        "export-huge-session",
        ["pcap", "export", "--session", "99999999999999999999", "-o", "{f}/pq.pcapng"],
        3,
        ["99999999999999999999"],
    ),
    (
        "export-unknown-container",
        ["pcap", "export", "--container", "pq-nosuch", "-o", "{f}/pq.pcapng"],
        3,
        ["pq-nosuch"],
    ),
    (
        "export-since-text",
        ["pcap", "export", "--session", "1", "--since", "bogus", "-o", "{f}/pq.pcapng"],
        2,
        ["bogus"],
    ),
    (
        "export-since-inf",
        ["pcap", "export", "--session", "1", "--since", "inf", "-o", "{f}/pq.pcapng"],
        2,
        ["inf"],
    ),
    (
        "export-since-nan",
        ["pcap", "export", "--session", "1", "--since", "nan", "-o", "{f}/pq.pcapng"],
        2,
        ["nan"],
    ),
    (
        "export-since-huge",
        [
            "pcap",
            "export",
            "--session",
            "1",
            "--since",
            "99999999999999999999",
            "-o",
            "{f}/pq.pcapng",
        ],
        2,
        ["99999999999999999999"],
    ),
    (
        "export-since-after-until",
        [
            "pcap",
            "export",
            "--session",
            "1",
            "--since",
            "1m",
            "--until",
            "2h",
            "-o",
            "{f}/pq.pcapng",
        ],
        2,
        ["--since", "--until"],
    ),
    (
        "export-bad-flow",
        ["pcap", "export", "--session", "1", "--flow", "bogus", "-o", "{f}/pq.pcapng"],
        2,
        ["bogus"],
    ),
    (
        "export-flow-port-range",
        [
            "pcap",
            "export",
            "--session",
            "1",
            "--flow",
            "1.2.3.4:99999->1.2.3.5:80",
            "-o",
            "{f}/pq.pcapng",
        ],
        2,
        ["99999"],
    ),
    (
        "export-bad-filter",
        ["pcap", "export", "--session", "1", "--filter", "tcp port", "-o", "{f}/pq.pcapng"],
        2,
        ["tcp port"],
    ),
    (
        "export-missing-dir",
        ["pcap", "export", "--session", "1", "-o", f"{MISSING}/x.pcapng"],
        3,
        [MISSING],
    ),
    (
        "export-unwritable-dir",
        ["pcap", "export", "--session", "1", "-o", "/proc/pq.pcapng"],
        None,
        ["/proc/pq.pcapng"],
    ),
    ("export-to-dir", ["pcap", "export", "--session", "1", "-o", "{f}/emptydir"], 2, ["emptydir"]),
    (
        "merge-missing-file",
        ["pcap", "merge", "{f}/pq-missing.pcap", "-o", "{f}/pq-m.pcapng"],
        3,
        ["pq-missing.pcap"],
    ),
    (
        "merge-garbage",
        ["pcap", "merge", "{f}/garbage.pcap", "-o", "{f}/pq-m.pcapng"],
        2,
        ["garbage.pcap"],
    ),
    (
        "merge-truncated",
        ["pcap", "merge", "{f}/good.pcapng", "{f}/trunc.pcapng", "-o", "{f}/pq-m.pcapng"],
        2,
        ["trunc.pcapng"],
    ),
    ("merge-no-inputs", ["pcap", "merge", "-o", "{f}/pq-m.pcapng"], 2, ["INPUTS"]),
    (
        "merge-output-is-input",
        ["pcap", "merge", "{f}/good.pcapng", "-o", "{f}/good.pcapng"],
        2,
        ["good.pcapng"],
    ),
    (
        "merge-missing-outdir",
        ["pcap", "merge", "{f}/good.pcapng", "-o", f"{MISSING}/m.pcapng"],
        3,
        [MISSING],
    ),
    (
        "merge-unwritable-outdir",
        ["pcap", "merge", "{f}/good.pcapng", "-o", "/proc/pq.pcapng"],
        None,
        ["/proc/pq.pcapng"],
    ),
    ("pcap-bad-subcommand", ["pcap", "pq-bogus"], 2, ["pq-bogus"]),
    # doctor, serve, demo
    ("doctor-unknown-container", ["doctor", "--container", "pq-nosuch"], 3, ["pq-nosuch"]),
    ("doctor-port-zero", ["doctor", "--port", "0"], 2, ["--port"]),
    ("serve-port-range", ["serve", "--port", "99999"], 2, ["99999"]),
    ("serve-port-taken", ["serve", "--no-probes", "--port", "8901"], 4, ["8901"]),
    (
        "serve-bind-foreign",
        ["serve", "--no-probes", "--bind", "10.99.99.99", "--port", "8902"],
        2,
        ["10.99.99.99"],
    ),
    ("serve-bad-bind", ["serve", "--no-probes", "--bind", "pq-notanip"], 2, ["pq-notanip"]),
    ("demo-bad-seconds", ["demo", "--serve-seconds", "abc"], 2, ["abc"]),
]

# Files a failed command must not leave behind.
OUTPUTS = ("pq-out.tar", "pq.pcapng", "pq-m.pcapng", "out", "pq-newdir")


@pytest.fixture(scope="module")
def baseline(world):
    _cli, root, _files = world
    return snapshot(root)


@pytest.mark.parametrize(
    "argv,code,words", [pytest.param(*c[1:4], id=c[0], marks=c[4:]) for c in CASES]
)
def test_bad_input_is_one_line_and_keeps_state(world, baseline, argv, code, words):
    cli, root, files = world
    argv = [a.replace("{f}", str(files)) for a in argv]
    # PYINSPECT_DEBUG=0 means off (and a developer's own setting cannot leak in)
    proc = cli(*argv, check=False, timeout=60, env={"PYINSPECT_DEBUG": "0"})
    line = error_line(proc)
    if code is not None:
        assert proc.returncode == code, (proc.returncode, line)
    for w in words:
        assert w in line, f"the error does not name {w!r}: {line}"
    assert proc.stdout == "", f"a failed command printed results: {proc.stdout!r}"
    for name in OUTPUTS:
        assert not (files / name).exists(), f"failed command left {name}"
    assert not os.path.exists(MISSING)
    assert not (root / "web-token").exists(), "a failed serve made a dashboard token"
    assert snapshot(root) == baseline, "a bad command changed stored state"


def test_cases_cover_every_command():
    """Each top-level command and group subcommand has at least one bad invocation."""
    from pyinspect.cli import COMMANDS

    covered = set()
    for _id, argv, _code, _words, *_marks in CASES:
        args = [a for a in argv if not a.startswith("-")]
        if argv[:1] == ["--root"]:
            continue
        covered.add(argv[0])
        if argv[0] in ("pcap", "network") and len(args) > 1:
            covered.add(f"{argv[0]} {args[1]}")
    exempt = {"ps", "images", "info"}  # no argument that can be wrong beyond click's own
    assert set(COMMANDS) - exempt <= covered, set(COMMANDS) - exempt - covered
    assert {"pcap export", "pcap merge", "network inspect"} <= covered


def test_the_world_is_still_there(world, baseline):
    """The containers and image the bad commands were aimed at still work."""
    cli, root, _files = world
    rows = {
        json.loads(line)["Names"]: json.loads(line)
        for line in cli("ps", "-a", "--format", "json").stdout.splitlines()
    }
    assert rows[KEEP]["State"] == "running" and rows[DONE]["State"] == "exited"
    assert cli("exec", KEEP, "echo", "alive").stdout == "alive\n"
    assert len(cli("events", "--limit", "1000").stdout.splitlines()) == 50
    assert snapshot(root) == baseline


def test_doctor_names_only_containers_that_do_not_exist(world):
    """`doctor --container` of a --net none container checks (nothing of its own), it
    does not claim the container does not exist."""
    cli, _root, _files = world
    proc = cli("doctor", "--container", KEEP, check=False)
    assert proc.returncode in (0, 1) and "no such container" not in proc.stderr, proc.stderr


def test_trace_to_a_bad_path_records_only_a_failed_session(world, baseline):
    """A trace whose -w path cannot be written fails in one line; the store keeps every
    row it had and gains at most the failed session (the tracer records those)."""
    cli, root, _files = world
    proc = cli(
        "trace", "-c", WEB, "-w", f"{MISSING}/x.pcapng", "--duration", "1", check=False, timeout=60
    )
    assert not os.path.exists(MISSING)
    now = snapshot(root)
    conn = sqlite3.connect(f"file:{root / 'pyinspect.db'}?mode=ro", uri=True)
    try:
        for table in ("trace_sessions", "capture_points"):
            rows = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            n = baseline[f"db:{table}"][0]
            assert (n, hashlib.sha256(repr(rows[:n]).encode()).hexdigest()) == baseline[
                f"db:{table}"
            ], table
            now.pop(f"db:{table}")
        new = conn.execute(
            "SELECT status FROM trace_sessions WHERE id > ?", (baseline["db:trace_sessions"][0],)
        ).fetchall()
    finally:
        conn.close()
    assert all(status.startswith("failed") for (status,) in new), new
    changed = sorted(k for k in now if now[k] != baseline.get(k))
    assert not changed, f"a bad trace changed stored state: {changed}"
    assert set(now) == set(baseline) - {"db:trace_sessions", "db:capture_points"}
    line = error_line(proc)
    assert proc.returncode == 2 and MISSING in line, line


# --------------------------------------------------------------------------------------
# A damaged store under --root: one line, exit 2, and the file is left exactly as it was.

STORE_COMMANDS = [
    ["events"],
    ["events", "--since", "1h", "--kind", "exec"],
    ["pcap", "ls"],
    ["pcap", "export", "--session", "1", "-o", "{f}/pq.pcapng"],
    ["map", "--save"],
]


def _damaged(kind, path):
    """Write a damaged store of `kind` at `path`."""
    if kind in ("random", "text"):
        path.write_bytes(os.urandom(8192) if kind == "random" else b"not sqlite\n" * 50)
        return
    from pyinspect.store import Store

    with Store(path) as store:
        if kind == "pages-sessions":
            store.db["trace_sessions"].insert_all(
                [
                    {"container_name": "pq", "summary": "y" * 300, "status": "stopped"}
                    for _ in range(3000)
                ]
            )
        else:
            store.insert_events(
                [
                    {
                        "ts_ns": i,
                        "kind": "exec",
                        "pid": i,
                        "comm": "pq",
                        "detail": {"argv": ["x" * 200]},
                    }
                    for i in range(3000)
                ]
            )
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        data = data[: len(data) // 2]
    else:  # "pages-*": a valid header, garbage in the middle (what a bad disk leaves)
        import random

        n = len(data)  # the schema pages at the start stay whole, so the store opens
        data[n // 3 : 2 * n // 3] = random.Random(7).randbytes(2 * n // 3 - n // 3)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["random", "text", "truncated", "pages-events", "pages-sessions"])
def test_damaged_store_is_one_line_and_untouched(tmp_path, kind):
    root = tmp_path / "root"
    root.mkdir()
    db = root / "pyinspect.db"
    _damaged(kind, db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    cli = Cli(root)
    # with damaged pages the store opens; only a read that reaches them can tell
    commands = {"pages-events": [["events"]], "pages-sessions": [["pcap", "ls"]]}
    for argv in commands.get(kind, STORE_COMMANDS):
        argv = [a.replace("{f}", str(tmp_path)) for a in argv]
        proc = cli(*argv, check=False)
        line = error_line(proc)
        assert proc.returncode == 2, (argv, line)
        assert str(db) in line, line
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before, argv
        assert not (tmp_path / "pq.pcapng").exists()
    assert sorted(p.name for p in root.iterdir()) == ["pyinspect.db"]


def test_damaged_image_tags_are_one_line_and_never_rewritten(tmp_path):
    """A corrupt repositories.json stops image commands with one line; none of them
    "repairs" it by writing a fresh (empty) file over the tags."""
    from helpers import imagekit as kit

    root = tmp_path / "root"
    cli = Cli(root)
    layer = kit.layer(("bin", "dir"), ("bin/pq", "file", b"pq"))
    cli("load", "-i", kit.docker_legacy(tmp_path / "pq.tar", [([layer], ["pq-img:1"], None)]))
    tags = root / "images" / "repositories.json"
    tags.write_bytes(tags.read_bytes()[:-5] + b"\x00garbage")
    before = tags.read_bytes()
    other = kit.docker_legacy(tmp_path / "pq2.tar", [([layer], ["pq-img:2"], None)])
    for argv in (
        ["images"],
        ["tag", "pq-img:1", "pq-img:3"],
        ["rmi", "pq-img:1"],
        ["load", "-i", other],
        ["save", "-o", tmp_path / "o.tar", "pq-img:1"],
        ["run", "--rm", "--net", "none", "pq-img:1", "true"],
    ):
        proc = cli(*argv, check=False)
        line = error_line(proc)
        assert proc.returncode == 2 and "repositories.json" in line, (argv, line)
        assert tags.read_bytes() == before, argv
    assert not (tmp_path / "o.tar").exists()


# How a record can be damaged: (file, what it becomes, words `inspect` must say)
DAMAGE = {
    "truncated-config": ("config.json", lambda b: b[: len(b) // 2], ["config.json", "JSON"]),
    "garbage-state": ("state.json", lambda b: b"\x00\xff garbage", ["state.json", "JSON"]),
    "state-not-an-object": ("state.json", lambda b: b"[1, 2]", ["state.json", "object"]),
    "config-missing": ("config.json", None, ["config.json", "missing"]),
    "wrong-field-type": (
        "config.json",
        lambda b: json.dumps({**json.loads(b), "process": "x"}).encode(),
        ["config.json", "process"],
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_container_record_is_listed_and_removable(tmp_path, kind):
    """A container whose record is damaged is never removed by a reconcile nor its name
    given away; `ps -a` lists it as damaged (the others as before), every command that
    needs it says what is wrong in one line, and `rm -f` removes it (name freed) while
    everything else stored stays as it was."""
    root = tmp_path / "root"
    cli = Cli(root)
    name, other = unique("pq-dmg"), unique("pq-ok")
    cli("run", "--name", name, "--net", "none", "busybox", "true")
    cli("run", "--name", other, "--net", "none", "busybox", "sh", "-c", "exit 3", check=False)
    cdir = root / "containers" / os.readlink(root / "names" / name)
    fname, damage, words = DAMAGE[kind]
    if damage is None:
        # a second later: the removal moves the directory's mtime past `other`'s creation,
        # which must not reorder `ps` (the record's age is not its directory's mtime)
        time.sleep(1.1)
        (cdir / fname).unlink()
    else:
        (cdir / fname).write_bytes(damage((cdir / fname).read_bytes()))
    files = {p: p.read_bytes() for p in cdir.iterdir() if p.is_file()}

    def others():
        return {
            p: p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_relative_to(cdir)
        }

    kept = others()
    rows = {
        r["Names"]: r
        for r in map(json.loads, cli("ps", "-a", "--format", "json").stdout.splitlines())
    }
    assert set(rows) == {name, other}
    assert rows[name]["State"] == "damaged" and rows[name]["Id"] == cdir.name
    assert all(w in rows[name]["Error"] for w in words), rows[name]
    assert rows[other]["State"] == "exited" and rows[other]["ExitCode"] == 3
    table = cli("ps", "-a").stdout
    assert any(name in line and "Damaged" in line for line in table.splitlines()), table
    assert cli("ps", "-a", "-q").stdout.split() == [rows[other]["ID"], rows[name]["ID"]]
    # Docker's nearest state for a container it cannot use is `dead`
    assert cli("ps", "-q", "--filter", "status=dead").stdout.split() == [rows[name]["ID"]]
    for argv, code in (
        (["run", "--name", name, "--net", "none", "busybox", "true"], 4),
        (["inspect", name], 2),
        (["inspect", cdir.name[:12]], 2),
        (["start", name], 2),
        (["logs", name], 2),
        (["stop", name], 2),
        (["port", name], 2),
        (["diff", name], 2),
        (["pause", name], 2),
        (["wait", name], 2),
        (["rename", name, "pq-renamed"], 2),
    ):
        proc = cli(*argv, check=False)
        line = error_line(proc)
        assert proc.returncode == code and name in line, (argv, line)
        if argv[0] == "inspect":
            assert "damaged" in line and all(w in line for w in words), line
    assert {p: p.read_bytes() for p in cdir.iterdir() if p.is_file()} == files
    assert os.readlink(root / "names" / name) == cdir.name
    assert others() == kept
    cli("rm", "-f", name)
    assert not cdir.exists() and not (root / "names" / name).exists()
    assert others() == kept  # the other container lost nothing
    assert [
        json.loads(r)["Names"] for r in cli("ps", "-a", "--format", "json").stdout.splitlines()
    ] == [other]
    cli("run", "--rm", "--name", name, "--net", "none", "busybox", "true")  # the name is free
    cli("rm", other)
    assert list((root / "containers").iterdir()) == [] and list((root / "names").iterdir()) == []
