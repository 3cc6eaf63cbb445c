"""commit, export and import on pyinspect's own (Docker's outputs: test_docker_engine.py):
a running container frozen only while it is committed, what an export holds and leaves
out, compressed and hostile imports, and bad input that stores nothing."""

import contextlib
import functools
import gzip
import http.server
import io
import json
import lzma
import os
import re
import socket
import tarfile
import threading

import pytest

from helpers.pccli import one_line_error

pytestmark = pytest.mark.root

ID = re.compile(r"sha256:[0-9a-f]{64}\n")


def _names(src):
    opened = tarfile.open(fileobj=src) if isinstance(src, io.BytesIO) else tarfile.open(src)
    with opened as tar:
        return {m.name.rstrip("/"): m for m in tar}


def test_commit_a_running_container(pc):
    pc("run", "-d", "--name", "sn-run", "--net", "none", "busybox", "sh", "-c",
       "echo made > /made; exec sleep 60")  # fmt: skip
    pc.wait_status("sn-run", "running")
    for _ in range(50):
        if pc("exec", "sn-run", "cat", "/made", check=False).stdout == "made\n":
            break
    out = pc("commit", "sn-run", "sn-img:1").stdout
    assert ID.fullmatch(out)
    # frozen only meanwhile: it runs on, unpaused
    state = pc.inspect("sn-run")["State"]
    assert (state["Status"], state["Paused"]) == ("running", False)
    assert pc("run", "--rm", "--net", "none", "sn-img:1", "cat", "/made").stdout == "made\n"
    # the committed command is the container's: the image runs it
    cfg = pc.inspect("sn-img:1")["Config"]
    assert cfg["Cmd"] == ["sh", "-c", "echo made > /made; exec sleep 60"]
    # a paused container stays paused (commit does not thaw what it did not freeze)
    pc("pause", "sn-run")
    assert ID.fullmatch(pc("commit", "sn-run").stdout)
    assert pc.inspect("sn-run")["State"]["Paused"] is True
    pc("unpause", "sn-run")
    assert ID.fullmatch(pc("commit", "--no-pause", "sn-run", "sn-img:2").stdout)
    # nothing changed since the start but the runtime's files: an empty layer, as Docker's
    pc("run", "--name", "sn-same", "--net", "none", "busybox", "true")
    pc("commit", "sn-same", "sn-img:same")
    layers = pc.inspect("sn-img:same")["RootFS"]["Layers"]
    assert len(layers) == len(pc.inspect("busybox")["RootFS"]["Layers"]) + 1


def test_export_holds_the_root_not_the_mounts(pc, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "secret").write_text("volume data\n")
    pc(
        "run",
        "-d",
        "--name",
        "sn-exp",
        "--net",
        "none",
        "-v",
        f"{vol}:/data",
        "busybox",
        "sh",
        "-c",
        "echo root > /f; ln -s /etc/shadow /ln; mkfifo /fifo; rm /bin/vi; exec sleep 60",
    )
    # fmt: skip
    pc.wait_status("sn-exp", "running")
    for _ in range(50):
        if pc("exec", "sn-exp", "cat", "/f", check=False).stdout == "root\n":
            break
    for state in ("running", "stopped"):
        out = tmp_path / f"{state}.tar"
        pc("export", "-o", out, "sn-exp")
        m = _names(out)
        assert m["f"].isreg() and m["f"].size == 5
        assert m["ln"].issym() and m["ln"].linkname == "/etc/shadow"  # the link, not the file
        assert m["fifo"].isfifo()
        assert "bin/vi" not in m and m["bin/busybox"].isreg()
        assert m["data"].isdir() and "data/secret" not in m  # a volume is not the root's
        assert m["proc"].isdir() and not [n for n in m if n.startswith(("proc/", "sys/"))]
        with tarfile.open(out) as tar:
            assert tar.extractfile("f").read() == b"root\n"
        pc("stop", "-t", "1", "sn-exp")
    # through standard output, as `docker export NAME > file`
    piped = pc("export", "sn-exp", text=False).stdout
    assert _names(io.BytesIO(piped)).keys() == _names(tmp_path / "stopped.tar").keys()


def test_export_errors_keep_the_file(pc, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    kept = out_dir / "kept.tar"
    kept.write_bytes(b"earlier archive")
    proc = pc("export", "-o", kept, "sn-nosuch", check=False)
    assert "sn-nosuch" in one_line_error(proc, 3)
    assert kept.read_bytes() == b"earlier archive"
    assert os.listdir(out_dir) == ["kept.tar"]


def _rootfs_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_import_compressed_and_refused(pc, tmp_path):
    # a root made of the busybox image's own export, plus a file
    pc("run", "--name", "sn-src", "--net", "none", "busybox", "sh", "-c", "echo in > /in")
    plain = pc("export", "sn-src", text=False).stdout
    inputs = {
        "plain": plain,
        "gz": gzip.compress(plain),
        "xz": lzma.compress(plain),
    }
    for kind, data in inputs.items():
        path = tmp_path / f"root.{kind}"
        path.write_bytes(data)
        out = pc("import", "-c", "ENV K=v", "-m", f"from {kind}", path, f"sn-imp:{kind}").stdout
        assert ID.fullmatch(out)
        got = pc("run", "--rm", "--net", "none", f"sn-imp:{kind}", "sh", "-c", "cat /in; echo $K")
        assert got.stdout == "in\nv\n"
        hist = pc("history", "--format", "{{.Comment}}", f"sn-imp:{kind}").stdout
        assert hist == f"from {kind}\n"
    # from standard input
    out = pc("import", "-", "sn-imp:stdin", input=plain, text=False).stdout
    assert ID.fullmatch(out.decode())
    before = pc("images", "--no-trunc", "-q").stdout
    bad = tmp_path / "notar"
    bad.write_text("hello")
    escape = tmp_path / "escape.tar"
    escape.write_bytes(_rootfs_tar({"../../outside": b"x"}))
    for args, code, said in (
        ([bad, "sn-bad:1"], 2, "not a tar archive"),
        ([escape, "sn-bad:2"], 2, "outside"),
        ([tmp_path / "nosuch.tar"], 3, "no such file"),
        (["-c", "RUN true", tmp_path / "root.plain"], 2, "run is not a valid change command"),
        ([tmp_path / "root.plain", "Bad:Name"], 2, "invalid repository name"),
    ):
        proc = pc("import", *args, check=False)
        assert said in one_line_error(proc, code), (args, proc.stderr)
    assert pc("images", "--no-trunc", "-q").stdout == before
    assert not (tmp_path.parent / "outside").exists()
    assert json.loads(pc("inspect", "sn-imp:gz").stdout)[0]["Config"]["Env"] == ["K=v"]


@contextlib.contextmanager
def _http_server(directory):
    """An HTTP server on loopback serving `directory`; its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_import_from_a_url(pc, tmp_path):
    """A URL is fetched (gzip undone) and named in the comment, as Docker's daemon does;
    a server that refuses or answers 404 is one line, and nothing is stored."""
    pc("run", "--name", "sn-url", "--net", "none", "busybox", "sh", "-c", "echo web > /from")
    (tmp_path / "root.tar.gz").write_bytes(gzip.compress(pc("export", "sn-url", text=False).stdout))
    before = pc("images", "--no-trunc", "-q").stdout
    with _http_server(tmp_path) as base:
        for url, code, said in (
            (f"{base}/nosuch.tar", 3, "404"),
            (f"http://127.0.0.1:{_closed_port()}/root.tar", 2, "refused"),
        ):
            proc = pc("import", url, "sn-url:bad", check=False)
            assert said in one_line_error(proc, code), (url, proc.stderr)
        assert pc("images", "--no-trunc", "-q").stdout == before
        url = f"{base}/root.tar.gz"
        out = pc("import", "-c", 'CMD ["cat", "/from"]', url, "sn-url:1").stdout
    assert ID.fullmatch(out)
    assert pc("run", "--rm", "--net", "none", "sn-url:1").stdout == "web\n"
    hist = pc("history", "--format", "{{.Comment}}", "sn-url:1").stdout
    assert hist == f"Imported from {url}\n"


def test_commit_bad_input_stores_nothing(pc):
    pc("run", "--name", "sn-bad", "--net", "none", "busybox", "true")
    before = pc("images", "--no-trunc", "-q").stdout
    for args, code, said in (
        (["-c", "FROM busybox", "sn-bad"], 2, "from is not a valid change command"),
        (["-c", "", "sn-bad"], 2, "not a valid change command"),
        (["-c", "EXPOSE 99999", "sn-bad"], 2, "invalid port"),
        (["sn-bad", "Bad:Ref"], 2, "invalid repository name"),
        (["sn-nosuch"], 3, "sn-nosuch"),
    ):
        proc = pc("commit", *args, check=False)
        assert said in one_line_error(proc, code), (args, proc.stderr)
    assert pc("images", "--no-trunc", "-q").stdout == before
