"""`pyinspect build` end to end through the real console script: the seed's nginx-style
Dockerfile on busybox run behind -p, a multi-stage build compiling C in an image made
from the host's gcc, the cache (all CACHED, a changed file rebuilds from its step on),
--target, .dockerignore, whiteouts, skopeo reading `save`, and every bad input.

The CLI runs inside a network namespace of the test's own (its bridge, veths and DNAT
rules live there); traffic goes to that namespace's loopback only.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time

import pytest

from conftest import Cli, Netns, unique
from helpers import compilerimage
from helpers.signals import signal_at

pytestmark = pytest.mark.root

NGINX_STYLE = """\
# the seed's nginx Dockerfile, on busybox: httpd plays nginx
FROM busybox
ENV SITE=/usr/share/nginx/html \\
    GREETING="hello from pyinspect build"
RUN mkdir -p $SITE && echo "$GREETING" > $SITE/greeting.txt \\
 && rm /var/www/index.html
WORKDIR $SITE
COPY index.html ./
COPY conf/ /etc/nginx/
EXPOSE 80
CMD ["httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"]
"""

HELLO_C = '#include <stdio.h>\nint main(void) { puts("%s"); return 0; }\n'

MULTI = """\
FROM pi-gcc:test AS builder
WORKDIR /src
COPY hello.c .
RUN mkdir -p /out && gcc -static -O2 -o /out/hello hello.c

FROM busybox AS broken
RUN echo this stage is not needed && false

FROM scratch
COPY --from=builder /out/hello /hello
CMD ["/hello"]
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(Cli in a netns of its own, its root, a scratch dir); containers removed after."""
    base = tmp_path_factory.mktemp("build")
    ns = Netns(unique("pib"))
    root = base / "root"
    root.mkdir()
    cli = Cli(root, netns=ns.name)
    try:
        cli("inspect", "busybox")  # the embedded image, made before any test compares images
        yield cli, root, base, ns
    finally:
        names = cli("ps", "-aq", check=False).stdout.split()
        if names:
            cli("rm", "-f", *names, check=False)
        ns.remove()


def _stable(images_json):
    """`images --format json`'s rows without CREATED's age (it moves with the clock)."""
    return [{k: v for k, v in r.items() if k != "CreatedSince"} for r in json.loads(images_json)]


def one_line_error(proc, *words):
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err.startswith("Error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def steps_of(out):
    """[(step text, 'CACHED' | 'built')] from a build's output."""
    res, cur = [], None
    for line in out.splitlines():
        m = re.match(r"Step \d+/\d+ : (.*)", line)
        if m:
            cur = m.group(1)
            res.append([cur, "built"])
        elif line.strip() == "---> CACHED" and res:
            res[-1][1] = "CACHED"
    return [tuple(x) for x in res]


def image_json(cli, ref):
    return json.loads(cli("inspect", ref).stdout)[0]


def layer_members(root, diff_id, files_only=False):
    with tarfile.open(os.path.join(root, "images", "blobs", "sha256", diff_id[7:])) as tf:
        return [m.name for m in tf if m.isfile() or not files_only]


def leftovers(root):
    """Build containers, scratch dirs and mounts under the root that a build left."""
    out = []
    cdir = os.path.join(root, "containers")
    out += [f"container {e}" for e in (os.listdir(cdir) if os.path.isdir(cdir) else [])]
    tmp = os.path.join(root, "build", "tmp")
    out += [f"scratch {e}" for e in (os.listdir(tmp) if os.path.isdir(tmp) else [])]
    with open("/proc/self/mountinfo") as f:
        out += [f"mount {line.split()[4]}" for line in f if str(root) in line]
    return out


def nginx_context(base):
    ctx = base / "nginx"
    if ctx.exists():
        shutil.rmtree(ctx)
    (ctx / "conf").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(NGINX_STYLE)
    (ctx / "index.html").write_text("<h1>built by pyinspect</h1>\n")
    (ctx / "conf" / "nginx.conf").write_text("worker_processes 1;\n")
    return ctx


def test_nginx_style_build_runs_behind_publish_and_caches(env):
    cli, root, base, ns = env
    ctx = nginx_context(base)
    first = cli("build", "-t", "my-nginx:busybox", ctx)
    assert all(kind == "built" for _, kind in steps_of(first.stdout)), first.stdout
    assert "Successfully tagged my-nginx:busybox" in first.stdout
    im = image_json(cli, "my-nginx:busybox")
    cfg = im["Config"]
    assert cfg["Cmd"] == ["httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"]
    assert cfg["WorkingDir"] == "/usr/share/nginx/html"
    assert cfg["ExposedPorts"] == {"80/tcp": {}}
    assert "GREETING=hello from pyinspect build" in cfg["Env"]
    # one layer per filesystem step: base + RUN + WORKDIR(exists: none) + 2 COPY
    busybox = image_json(cli, "busybox")
    new = im["RootFS"]["Layers"][len(busybox["RootFS"]["Layers"]) :]
    assert len(new) == 3, new
    assert layer_members(root, new[1]) == [
        "usr",
        "usr/share",
        "usr/share/nginx",
        "usr/share/nginx/html",
        "usr/share/nginx/html/index.html",
    ]
    # the RUN deleted a file of the base image: an OCI whiteout, and absent when run
    assert "var/www/.wh.index.html" in layer_members(root, new[0])
    ls = cli("run", "--rm", "--net", "none", "my-nginx:busybox", "ls", "-a", "/var/www")
    assert "index.html" not in ls.stdout.split()

    cli("run", "-d", "--name", "pib-web", "-p", "18080:80", "my-nginx:busybox")
    try:
        body = ""
        for _ in range(50):
            r = ns.run("curl", "-s", "-m", "2", "http://127.0.0.1:18080/index.html", check=False)
            body = r.stdout
            if body:
                break
            time.sleep(0.1)
        assert body == "<h1>built by pyinspect</h1>\n"
        r = ns.run("curl", "-s", "-m", "2", "http://127.0.0.1:18080/greeting.txt")
        assert r.stdout == "hello from pyinspect build\n"
    finally:
        cli("rm", "-f", "pib-web")

    # no change: every step after FROM is CACHED and the id is the same
    again = cli("build", "-t", "my-nginx:busybox", ctx)
    kinds = steps_of(again.stdout)
    assert [k for _, k in kinds[1:]] == ["CACHED"] * (len(kinds) - 1), again.stdout
    assert image_json(cli, "my-nginx:busybox")["Id"] == im["Id"]
    # a changed source file rebuilds from its step on
    (ctx / "conf" / "nginx.conf").write_text("worker_processes 2;\n")
    changed = steps_of(cli("build", "-t", "my-nginx:busybox", ctx).stdout)
    texts = [t for t, _ in changed]
    at = texts.index("COPY conf/ /etc/nginx/")
    assert [k for _, k in changed[1:at]] == ["CACHED"] * (at - 1), changed
    assert [k for _, k in changed[at:]] == ["built"] * (len(changed) - at), changed
    assert image_json(cli, "my-nginx:busybox")["Id"] != im["Id"]
    # touching a file (mtime only) keeps the cache, as in Docker
    os.utime(ctx / "index.html", (1, 1))
    touched = steps_of(cli("build", ctx).stdout)
    assert all(k == "CACHED" for _, k in touched[1:]), touched
    # --no-cache runs everything
    nocache = steps_of(cli("build", "--no-cache", ctx).stdout)
    assert all(k == "built" for _, k in nocache), nocache
    assert leftovers(root) == []


def test_saved_build_is_read_by_skopeo(env):
    cli, _root, base, _ns = env
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed (make install installs it)")
    ctx = nginx_context(base)
    cli("build", "-q", "-t", "pib-skopeo:1", ctx)
    out = base / "saved.tar"
    cli("save", "-o", out, "pib-skopeo:1")
    r = subprocess.run(
        ["skopeo", "inspect", f"docker-archive:{out}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    im = image_json(cli, "pib-skopeo:1")
    assert got["Layers"] == im["RootFS"]["Layers"]
    assert "GREETING=hello from pyinspect build" in got["Env"]
    r = subprocess.run(
        ["skopeo", "inspect", "--config", f"docker-archive:{out}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"]["ExposedPorts"] == {"80/tcp": {}}
    # skopeo copy reads every blob and checks its digest against the manifest
    r = subprocess.run(
        ["skopeo", "copy", f"docker-archive:{out}", f"oci:{base / 'oci'}:x"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def compiler(env):
    why = compilerimage.available()
    if why:
        pytest.skip(f"no compiler image: {why}")
    _cli, root, base, _ns = env
    tar = compilerimage.compiler_layer(str(base / "gcc-layer.tar"))
    return compilerimage.store_compiler_image(str(root), tar)


def test_multi_stage_build_keeps_only_the_binary(env, compiler):
    cli, root, base, _ns = env
    ctx = base / "multi"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(MULTI)
    (ctx / "hello.c").write_text(HELLO_C % "hello from stage two")
    out = cli("build", "-t", "pib-hello:1", ctx).stdout
    texts = [t for t, _ in steps_of(out)]
    assert not any("broken" in t or "false" in t for t in texts), out  # not needed: skipped
    assert "this stage is not needed" not in out
    run = cli("run", "--rm", "--net", "none", "pib-hello:1")
    assert run.stdout == "hello from stage two\n"
    im = image_json(cli, "pib-hello:1")
    (layer,) = im["RootFS"]["Layers"]
    assert layer_members(root, layer) == ["hello"]
    builder = image_json(cli, compiler)
    assert im["Size"] * 20 < builder["Size"], (im["Size"], builder["Size"])

    # --target builds the builder stage only
    tout = cli("build", "--target", "builder", "-t", "pib-hello:build", ctx).stdout
    assert "FROM scratch" not in tout
    assert all(k == "CACHED" for _, k in steps_of(tout)[1:]), tout
    r = cli("run", "--rm", "--net", "none", "pib-hello:build", "/out/hello")
    assert r.stdout == "hello from stage two\n"
    # the source changes: the builder's COPY and RUN and the final COPY run again
    (ctx / "hello.c").write_text(HELLO_C % "hello again")
    kinds = dict(steps_of(cli("build", "-t", "pib-hello:1", ctx).stdout))
    assert kinds["WORKDIR /src"] == "CACHED"
    assert kinds["COPY hello.c ."] == "built"
    assert kinds["COPY --from=builder /out/hello /hello"] == "built"
    assert cli("run", "--rm", "--net", "none", "pib-hello:1").stdout == "hello again\n"
    # the broken stage, asked for, fails on its line
    one_line_error(
        cli("build", "--target", "broken", ctx, check=False), "line 7", "non-zero code: 1"
    )
    assert leftovers(root) == []


def test_dockerignore_and_globs(env):
    cli, root, base, _ns = env
    ctx = base / "ignore"
    (ctx / "secret").mkdir(parents=True)
    (ctx / "src" / "deep").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY . /ctx/\nCOPY src/*.txt /txt/\n")
    (ctx / ".dockerignore").write_text("# comment\n*.log\nsecret\n!secret/keep.me\n**/*.tmp\n")
    for rel in (
        "a.txt",
        "b.log",
        "secret/key",
        "secret/keep.me",
        "src/one.txt",
        "src/two.md",
        "src/deep/x.tmp",
        "src/deep/y.txt",
    ):
        (ctx / rel).write_text(rel)
    cli("build", "-t", "pib-ignore:1", ctx)
    layers = image_json(cli, "pib-ignore:1")["RootFS"]["Layers"]
    copied = set(layer_members(root, layers[-2], files_only=True))
    assert copied == {
        "ctx/a.txt",
        "ctx/Dockerfile",
        "ctx/.dockerignore",
        "ctx/secret/keep.me",
        "ctx/src/one.txt",
        "ctx/src/two.md",
        "ctx/src/deep/y.txt",
    }, copied
    assert set(layer_members(root, layers[-1])) == {"txt", "txt/one.txt"}
    # an ignored file changes: still CACHED (it is not part of the context)
    (ctx / "b.log").write_text("changed")
    kinds = steps_of(cli("build", ctx).stdout)
    assert all(k == "CACHED" for _, k in kinds[1:]), kinds
    one_line_error(cli("build", "-f", str(ctx / "Dockerfile.x"), ctx, check=False), "Dockerfile.x")
    (ctx / "Dockerfile.x").write_text("FROM busybox\nCOPY b.log /\n")
    one_line_error(
        cli("build", "-f", str(ctx / "Dockerfile.x"), ctx, check=False),
        "line 2",
        "b.log",
        ".dockerignore",
    )


def test_instructions_and_combination_rules(env):
    cli, _root, base, _ns = env
    ctx = base / "instr"
    ctx.mkdir()
    (ctx / "data.tar").write_bytes(b"")
    with tarfile.open(ctx / "data.tar.gz", "w:gz") as tf:
        ti = tarfile.TarInfo("inner/file.txt")
        payload = b"from the archive\n"
        ti.size = len(payload)
        import io

        tf.addfile(ti, io.BytesIO(payload))
    (ctx / "Dockerfile").write_text("""\
# escape=`
ARG BASE=busybox
FROM ${BASE} AS base
ARG BASE
ARG WHO=world
LABEL org.example.who="$WHO" `
      stage=base
ENV A=1 B="two words"
ENV C=${A}-${B:-none}-${MISSING:-dflt}
USER 1000:1000
USER root
VOLUME ["/data"]
STOPSIGNAL SIGINT
SHELL ["/bin/sh", "-ec"]
ARG ONLYRUN=x
RUN echo "who=$WHO base=$BASE" > /who.txt
USER www-data
RUN ["sh", "-c", "id -u > /tmp/uid; id -g >> /tmp/uid"]
USER root
ADD data.tar.gz /unpacked/
COPY --chown=33:33 --chmod=600 Dockerfile /owned
COPY --from=busybox:latest /etc/group /from-image/
ENTRYPOINT ["/bin/echo"]
CMD ["default", "args"]
HEALTHCHECK --interval=1m30s --timeout=500ms --retries=3 CMD wget -q -O- http://127.0.0.1/ || exit 1

FROM base AS reset
ENTRYPOINT ["/bin/echo", "reset:"]
""")
    cli("build", "--build-arg", "WHO=pyinspect", "-t", "pib-instr:1", "--target", "base", ctx)
    im = image_json(cli, "pib-instr:1")
    cfg = im["Config"]
    assert cfg["Labels"] == {"org.example.who": "pyinspect", "stage": "base"}
    assert "C=1-two words-dflt" in cfg["Env"]
    assert cfg["User"] == "root" and cfg["Volumes"] == {"/data": {}}
    assert cfg["StopSignal"] == "SIGINT" and cfg["Shell"] == ["/bin/sh", "-ec"]
    assert cfg["Entrypoint"] == ["/bin/echo"] and cfg["Cmd"] == ["default", "args"]
    assert not any(e.startswith("WHO=") for e in cfg["Env"])  # ARGs are not kept
    assert cfg["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1/ || exit 1"],
        "Interval": 90 * 10**9,
        "Timeout": 500 * 10**6,
        "Retries": 3,
    }
    r = cli("run", "--rm", "--net", "none", "pib-instr:1")
    assert r.stdout == "default args\n"
    r = cli(
        "run",
        "--rm",
        "--net",
        "none",
        "--entrypoint",
        "cat",
        "pib-instr:1",
        "/who.txt",
        "/unpacked/inner/file.txt",
    )
    assert r.stdout == "who=pyinspect base=busybox\nfrom the archive\n"
    r = cli(
        "run",
        "--rm",
        "--net",
        "none",
        "--entrypoint",
        "stat",
        "pib-instr:1",
        "-c",
        "%u:%g %a",
        "/owned",
    )
    assert r.stdout == "33:33 600\n"
    r = cli(
        "run", "--rm", "--net", "none", "--entrypoint", "cat", "pib-instr:1", "/from-image/group"
    )
    assert r.stdout.startswith("root:x:0:")
    # USER www-data: the RUN (exec form) ran as the image's passwd says
    r = cli("run", "--rm", "--net", "none", "--entrypoint", "cat", "pib-instr:1", "/tmp/uid")
    assert r.stdout == "33\n33\n"
    # ENTRYPOINT in a stage resets the CMD it inherited (Docker's rule)
    cli("build", "-q", "-t", "pib-instr:reset", ctx)
    cfg = image_json(cli, "pib-instr:reset")["Config"]
    assert cfg["Entrypoint"] == ["/bin/echo", "reset:"] and not cfg.get("Cmd")
    # a build arg changes RUN's cache key
    kinds = dict(
        steps_of(
            cli(
                "build",
                "--build-arg",
                "WHO=pyinspect",
                "--build-arg",
                "ONLYRUN=y",
                "--target",
                "base",
                ctx,
            ).stdout
        )
    )
    assert kinds['RUN echo "who=$WHO base=$BASE" > /who.txt'] == "built"
    assert kinds['SHELL ["/bin/sh", "-ec"]'] == "CACHED"


def test_onbuild_triggers_run_in_the_child_stage(env):
    cli, _root, base, _ns = env
    ctx = base / "onbuild"
    ctx.mkdir()
    (ctx / "f").write_text("from the context\n")
    (ctx / "Dockerfile").write_text(
        "FROM busybox AS parent\n"
        "ONBUILD RUN echo triggered > /onbuild.txt\n"
        "ONBUILD COPY f /from-trigger\n"
        "FROM parent\n"
        "RUN cat /onbuild.txt /from-trigger > /both\n"
    )
    cli("build", "-q", "--target", "parent", "-t", "pib-onbuild:parent", ctx)
    parent = image_json(cli, "pib-onbuild:parent")["Config"]
    assert parent["OnBuild"] == ["RUN echo triggered > /onbuild.txt", "COPY f /from-trigger"]
    r = cli("run", "--rm", "--net", "none", "pib-onbuild:parent", "ls", "/onbuild.txt", check=False)
    assert r.returncode != 0  # triggers do not run in the image that declares them
    out = cli("build", "-t", "pib-onbuild:child", ctx).stdout
    assert "# Executing build trigger: RUN echo triggered > /onbuild.txt" in out
    assert not image_json(cli, "pib-onbuild:child")["Config"].get("OnBuild")
    r = cli("run", "--rm", "--net", "none", "pib-onbuild:child", "cat", "/both")
    assert r.stdout == "triggered\nfrom the context\n"
    kinds = steps_of(cli("build", ctx).stdout)
    assert all(k == "CACHED" for _, k in kinds[1:]), kinds


BAD = [
    ("unknown-instruction", "FROM busybox\nFROB x\n", [], ["line 2", "FROB"]),
    ("syntax", "FROM busybox\nENV A\n", [], ["line 2", "ENV"]),
    ("no-from", "RUN true\n", [], ["line 1", "FROM"]),
    ("outside-context", "FROM busybox\nCOPY ../secret /x\n", [], ["line 2", "outside"]),
    ("symlink-out", "FROM busybox\nCOPY link /x\n", [], ["line 2", "outside"]),
    ("missing-source", "FROM busybox\nCOPY nosuch.txt /x\n", [], ["line 2", "nosuch.txt"]),
    ("missing-stage", "FROM busybox\nCOPY --from=nosuch /a /b\n", [], ["line 2", "nosuch"]),
    (
        "missing-in-stage",
        "FROM busybox AS a\nFROM busybox\nCOPY --from=a /pib-nosuch /x\n",
        [],
        ["line 3", "/pib-nosuch", "no such file"],
    ),
    ("missing-image", "FROM pib-nosuch:1\n", [], ["line 1", "pib-nosuch:1"]),
    (
        "failing-run",
        "FROM busybox\nRUN echo half > /half && exit 7\n",
        [],
        ["line 2", "non-zero code: 7"],
    ),
    ("missing-command", "FROM busybox\nRUN pib-nosuch-cmd\n", [], ["line 2", "127"]),
    ("bad-target", "FROM busybox AS one\n", ["--target", "two"], ["--target", "two"]),
    ("platform", "FROM --platform=linux/arm64 busybox\n", [], ["line 1", "--platform"]),
    ("heredoc", "FROM busybox\nRUN <<EOF\ntrue\nEOF\n", [], ["line 2", "heredoc"]),
    (
        "run-mount",
        "FROM busybox\nRUN --mount=type=cache,target=/c true\n",
        [],
        ["line 2", "--mount"],
    ),
    ("remote-url", "FROM busybox\nADD http://127.0.0.1/x /x\n", [], ["line 2", "remote"]),
    (
        "later-stage",
        "FROM busybox AS one\nCOPY --from=two /a /b\nFROM busybox AS two\n",
        ["--target", "one"],
        ["line 2", "two"],
    ),
    ("bad-port", "FROM busybox\nEXPOSE http\n", [], ["line 2", "http"]),
    ("bad-tag", "FROM busybox\n", ["-t", "Bad:Tag!"], ["Bad:Tag!"]),
    ("bad-build-arg", "FROM busybox\n", ["--build-arg", "=x"], ["=x"]),
    (
        "chown-unknown",
        "FROM busybox\nCOPY f /f\nCOPY --chown=pib-nobody f /g\n",
        [],
        ["line 3", "pib-nobody"],
    ),
    ("many-to-file", "FROM busybox\nCOPY f f /x\n", [], ["line 2", "end with a /"]),
    ("unknown-user", "FROM busybox\nUSER pib-nobody\nRUN true\n", [], ["line 3", "pib-nobody"]),
    ("exec-not-found", 'FROM busybox\nRUN ["/pib-nosuch"]\n', [], ["line 2", "pib-nosuch"]),
    (
        "onbuild-fails",
        "FROM busybox AS a\nONBUILD RUN exit 9\nFROM a\n",
        [],
        ["line 3", "non-zero code: 9"],
    ),
    ("onbuild-chained", "FROM busybox\nONBUILD ONBUILD RUN true\n", [], ["line 2", "ONBUILD"]),
    ("huge-dockerfile", "FROM busybox\n" + "#" * (4 << 20) + "\n", [], ["larger than 4 MB"]),
    (
        "healthcheck-duration",
        "FROM busybox\nHEALTHCHECK --interval=soon CMD true\n",
        [],
        ["line 2", "soon"],
    ),
    ("healthcheck-form", "FROM busybox\nHEALTHCHECK true\n", [], ["line 2", "HEALTHCHECK"]),
    (
        "bad-substitution",
        "FROM busybox\nENV A=${B:?B_is_required}\n",
        [],
        ["line 2", "B_is_required"],
    ),
]


@pytest.mark.parametrize("name,text,extra,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_leaves_nothing(env, name, text, extra, words):
    cli, root, base, _ns = env
    ctx = base / f"bad-{name}"
    ctx.mkdir()
    (ctx / "f").write_text("f")
    os.symlink("/etc/passwd", ctx / "link")
    (ctx / "Dockerfile").write_text(text)
    before = cli("images", "--format", "json").stdout
    proc = cli("build", "-t", f"pib-bad-{name}:1", *extra, ctx, check=False)
    one_line_error(proc, *words)
    after = cli("images", "--format", "json").stdout
    assert _stable(after) == _stable(before)  # nothing tagged, nothing lost
    assert cli("ps", "-aq").stdout.split() == []
    assert leftovers(root) == []


def test_quiet_plain_output_and_sigterm_cleanup(env):
    cli, root, base, _ns = env
    ctx = base / "quiet"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo visible-output\n")
    q = cli("build", "-q", "--no-cache", ctx)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", q.stdout), q.stdout
    plain = cli("build", "--no-cache", ctx).stdout  # not a terminal: no escape codes
    assert "\x1b" not in plain and "visible-output" in plain and "Step 2/2 : " in plain
    # SIGTERM during a RUN: the container, its cgroup and the scratch files go
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo started && sleep 60\n")
    got = signal_at(cli.argv("build", "--no-cache", ctx), lambda ln: ln.strip() == "started")
    assert got.returncode == 143
    assert "SIGTERM" in got.err and "Traceback" not in got.err, got.err
    assert cli("ps", "-aq").stdout.split() == []
    assert leftovers(root) == []
    # SIGKILL leaves the RUN container and the scratch dir: the next build removes them
    signal_at(
        cli.argv("build", "--no-cache", ctx),
        lambda ln: ln.strip() == "started",
        sig=signal.SIGKILL,
        timeout=30,
        stderr=subprocess.DEVNULL,
    )
    left = leftovers(root)
    assert any(x.startswith("container") for x in left), left
    assert any(x.startswith("scratch") for x in left), left
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    cli("build", "-q", ctx)
    assert cli("ps", "-aq").stdout.split() == []
    assert leftovers(root) == []


def test_terminal_output_and_cache_after_rmi(env):
    """On a terminal step lines are bold; rmi drops the layers, so those steps build again."""
    cli, _root, base, _ns = env
    ctx = base / "tty"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nENV X=1\nRUN echo pty-out > /f\n")
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen(
        cli.argv("build", "-t", "pib-tty:1", ctx), stdout=slave, stderr=subprocess.PIPE
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.wait(timeout=60) == 0
    out = b"".join(chunks).decode()
    assert "\x1b[1mStep 3/3 : RUN echo pty-out > /f\x1b[0m" in out, out
    assert "pty-out" not in out.split("Step 3/3")[0]
    cli("rmi", "pib-tty:1")
    kinds = dict(steps_of(cli("build", ctx).stdout))
    assert kinds["ENV X=1"] == "CACHED"  # its config needs busybox's layer only
    assert kinds["RUN echo pty-out > /f"] == "built"  # its layer went with the image
