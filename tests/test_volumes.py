"""Volumes: `-v NAME:/path`, `-v /path`, the image's VOLUME paths and `volume
create|ls|inspect|rm|prune`, on real containers (Docker's own outputs are compared in
tests/test_docker_engine.py)."""

import json
import os

import pytest

pytestmark = pytest.mark.root


def test_parse_volume_forms_and_refusals():
    """Docker's three -v forms, its modes, and one-line refusals of bad ones."""
    from pyinspect.errors import UsageError
    from pyinspect.runtime.volumes import VolumeArg, parse_volume

    assert parse_volume("/h/../h2:/c:ro") == VolumeArg("bind", "/h2", "/c", True, True, "ro")
    assert parse_volume("data:/var/lib/x") == VolumeArg("volume", "data", "/var/lib/x")
    assert parse_volume("/only") == VolumeArg("volume", "", "/only")
    assert parse_volume("d:/c:rw,nocopy") == VolumeArg(
        "volume", "d", "/c", False, False, "rw,nocopy"
    )
    for bad, words in [
        ("d:/c:rx", "invalid mode"),
        ("d:/c:ro,rw", "invalid mode"),
        ("d:c", "must be absolute"),
        ("bad/name:/c", "invalid characters"),
        ("/h:/c:nocopy", "nocopy is for volumes"),
        ("d:/", "cannot be /"),
        (":/c", "expected"),
        ("a:b:c:d", "expected"),
    ]:
        with pytest.raises(UsageError, match=words):
            parse_volume(bad)


def test_named_volume_outlives_containers_and_is_filled_once(pc, state_root):
    """A new named volume takes the image's content at its path (an empty one only),
    keeps what a container wrote for the next one, and is refused removal while a
    container (even a stopped one) mounts it."""
    pc("run", "--rm", "--net", "none", "-v", "vt-data:/etc", "busybox",
       "sh", "-c", "echo kept > /etc/mine")  # fmt: skip
    data = state_root / "volumes" / "vt-data" / "_data"
    assert (data / "passwd").read_text().startswith("root:")  # the image's /etc
    assert (data / "mine").read_text() == "kept\n"
    out = pc("run", "--rm", "--net", "none", "-v", "vt-data:/x:ro", "busybox",
             "sh", "-c", "cat /x/mine; touch /x/no 2>/dev/null || echo read-only")  # fmt: skip
    assert out.stdout == "kept\nread-only\n"
    # a volume that holds anything is not filled (Docker fills only empty ones)
    for p in data.iterdir():
        p.unlink()
    (data / "only").write_text("")
    out = pc("run", "--rm", "--net", "none", "-v", "vt-data:/etc", "busybox", "ls", "/etc")
    assert "passwd" not in out.stdout.split()
    # nocopy: a new volume stays empty
    pc("run", "--rm", "--net", "none", "-v", "vt-bare:/etc:nocopy", "busybox", "true")
    assert "passwd" not in os.listdir(state_root / "volumes" / "vt-bare" / "_data")
    pc("create", "--name", "vt-user", "--net", "none", "-v", "vt-data:/d", "busybox", "true")
    cid = pc.inspect("vt-user")["Id"]
    r = pc("volume", "rm", "vt-data", check=False)
    assert r.returncode != 0 and r.stderr.strip().endswith(
        f"remove vt-data: volume is in use - [{cid}] (remove the container first)"
    ), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    pc("rm", "vt-user")
    assert pc("volume", "rm", "vt-data", "vt-bare").stdout == "vt-data\nvt-bare\n"
    assert not (state_root / "volumes" / "vt-data").exists()


def test_anonymous_volumes_go_with_rm_v_and_run_rm(pc, state_root):
    """`-v /path` and an image's VOLUME make anonymous volumes: `run --rm` and `rm -v`
    remove them, `rm` alone keeps them (as Docker's)."""
    pc("run", "--rm", "--net", "none", "-v", "/scratch", "busybox", "touch", "/scratch/x")
    assert pc("volume", "ls", "-q").stdout == ""
    pc("run", "--name", "vt-anon", "--net", "none", "-v", "/scratch", "busybox", "true")
    name = pc.inspect("vt-anon")["Mounts"][0]["Name"]
    assert len(name) == 64 and pc("volume", "ls", "-q").stdout == f"{name}\n"
    pc("rm", "vt-anon")
    assert pc("volume", "ls", "-q").stdout == f"{name}\n"  # rm without -v keeps it
    pc("run", "--name", "vt-anon2", "--net", "none", "-v", "/scratch", "busybox", "true")
    name2 = pc.inspect("vt-anon2")["Mounts"][0]["Name"]
    pc("rm", "-v", "vt-anon2")
    assert pc("volume", "ls", "-q").stdout == f"{name}\n"
    # an image's VOLUME: filled from the image, ownership kept
    ctx = state_root.parent / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM busybox\nRUN mkdir -p /srv/d && echo seeded > /srv/d/f && chown 5:6 /srv/d/f\n"
        "VOLUME /srv/d\n"
    )
    pc("build", "-q", "-t", "vt-vol:1", str(ctx))
    out = pc("run", "--name", "vt-img", "--net", "none", "vt-vol:1", "cat", "/srv/d/f")
    assert out.stdout == "seeded\n"
    (mount,) = pc.inspect("vt-img")["Mounts"]
    assert mount["Type"] == "volume" and mount["Destination"] == "/srv/d"
    st = os.stat(os.path.join(mount["Source"], "f"))
    assert (st.st_uid, st.st_gid) == (5, 6)
    # -v on the VOLUME path takes its place (no anonymous one besides)
    pc("run", "--rm", "--net", "none", "-v", "vt-named:/srv/d", "vt-vol:1", "true")
    pc("rm", "-v", "vt-img")
    assert sorted(pc("volume", "ls", "-q").stdout.split()) == sorted([name, "vt-named"])
    assert name2 not in pc("volume", "ls", "-q").stdout
    pc("volume", "rm", name, "vt-named")
    pc("rmi", "vt-vol:1")


def test_volume_ls_filters_prune_and_df(pc, state_root):
    """ls --filter (dangling, name, label), prune (what no container mounts, with its
    size), and system df's Local Volumes row."""
    assert pc("volume", "create", "--label", "team=a", "vt-a").stdout == "vt-a\n"
    assert pc("volume", "create", "vt-a").stdout == "vt-a\n"  # exists: the same one
    pc("volume", "create", "vt-b")
    pc("run", "-d", "--name", "vt-up", "--net", "none", "-v", "vt-b:/b", "busybox",
       "sh", "-c", "head -c 3000 /dev/zero > /b/z; sleep 600")  # fmt: skip
    (state_root / "volumes" / "vt-a" / "_data" / "f").write_bytes(b"x" * 2000)

    def names(*filters):
        args = [a for f in filters for a in ("-f", f)]
        return pc("volume", "ls", "-q", *args).stdout.split()

    assert names() == ["vt-a", "vt-b"]
    assert names("dangling=true") == ["vt-a"] and names("dangling=false") == ["vt-b"]
    assert names("label=team") == ["vt-a"] and names("label=team=b") == []
    assert names("name=b") == ["vt-b"]
    fmt = "{{.Name}}|{{.Driver}}|{{.Labels}}|{{.Scope}}"
    assert (
        pc("volume", "ls", "--format", fmt).stdout == "vt-a|local|team=a|local\nvt-b|local||local\n"
    )
    for _ in range(50):  # the container's write
        if (state_root / "volumes" / "vt-b" / "_data" / "z").exists():
            break
        import time

        time.sleep(0.1)
    rows = [json.loads(x) for x in pc("system", "df", "--format", "{{json .}}").stdout.splitlines()]
    vols = next(r for r in rows if r["Type"] == "Local Volumes")
    assert (vols["TotalCount"], vols["Active"], vols["Reclaimable"]) == ("2", "1", "2kB (40%)")
    assert vols["Size"] == "5kB"
    out = pc("volume", "prune", "-f").stdout
    assert out == "Deleted Volumes:\nvt-a\n\nTotal reclaimed space: 2kB\n"
    assert names() == ["vt-b"]
    assert pc("volume", "prune", "-f").stdout == "Total reclaimed space: 0B\n"
    pc("rm", "-f", "vt-up")
    pc("volume", "rm", "vt-b")


def test_volume_bad_input_one_line(pc, state_root):
    """Refusals are one line and non-zero, and nothing stored is touched."""
    pc("volume", "create", "vt-keep")
    for args, words in [
        (("volume", "create", "x"), "too short"),
        (("volume", "create", "bad/name"), "invalid characters"),
        (("volume", "create", "--driver", "nfs", "vt-n"), "no such volume driver"),
        (("volume", "create", "--label", "=v", "vt-n"), "invalid label"),
        (("volume", "inspect", "nope"), "no such volume: nope"),
        (("volume", "rm", "nope"), "no such volume: nope"),
        (("volume", "ls", "-f", "colour=red"), "invalid filter"),
        (("volume", "prune", "-f", "--filter", "until=1h"), "invalid filter"),
        (("run", "--net", "none", "-v", "vt-keep:/c:zz", "busybox", "true"), "invalid mode"),
    ]:
        r = pc(*args, check=False)
        assert r.returncode != 0, args
        assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert pc("volume", "rm", "-f", "nope").returncode == 0
    assert pc("volume", "ls", "-q").stdout == "vt-keep\n"
    assert pc("ps", "-aq").stdout == ""  # the refused run made nothing
    doc = json.loads(pc("volume", "inspect", "vt-keep").stdout)
    assert doc[0]["Labels"] == {} and doc[0]["Options"] == {} and doc[0]["Driver"] == "local"
    pc("volume", "rm", "vt-keep")


def test_system_prune_volumes(pc, state_root):
    """`system prune --volumes` removes the stopped container first, then every volume
    no container mounts any more (its own too); without --volumes volumes stay."""
    pc("volume", "create", "vt-idle")
    pc("run", "--name", "vt-done", "--net", "none", "-v", "vt-used:/u", "busybox",
       "sh", "-c", "head -c 1000 /dev/zero > /u/z")  # fmt: skip
    cid = pc.inspect("vt-done")["Id"]
    pc("run", "-d", "--name", "vt-live", "--net", "none", "-v", "vt-live:/l", "busybox",
       "sleep", "600")  # fmt: skip
    out = pc("system", "prune", "-f").stdout
    assert out.startswith(f"Deleted Containers:\n{cid}\n\n") and "Volumes" not in out
    assert pc("volume", "ls", "-q").stdout.split() == ["vt-idle", "vt-live", "vt-used"]
    r = pc("system", "prune", "--volumes", input="n\n")
    assert "  - all volumes not used by at least one container\n" in r.stdout
    out = pc("system", "prune", "-f", "--volumes").stdout
    assert out == "Deleted Volumes:\nvt-idle\nvt-used\n\nTotal reclaimed space: 1kB\n", out
    assert pc("volume", "ls", "-q").stdout.split() == ["vt-live"]
    pc("rm", "-f", "vt-live")
    pc("volume", "rm", "vt-live")


def test_mount_and_tmpfs(pc, state_root, tmp_path):
    """--mount (bind, volume, tmpfs) and --tmpfs: what the container sees in
    /proc/mounts, and the refusals, one line each, before anything is made."""
    host = tmp_path / "h"
    host.mkdir()
    (host / "f").write_text("from host\n")

    def mounts_line(path, *args):
        out = pc("run", "--rm", "--net", "none", *args, "busybox",
                 "sh", "-c", f"grep ' {path} ' /proc/mounts").stdout  # fmt: skip
        fields = out.split()
        return fields[2], set(fields[3].split(","))

    kind, opts = mounts_line("/m", "--mount", f"type=bind,source={host},target=/m,readonly")
    assert "ro" in opts
    kind, opts = mounts_line("/t", "--mount", "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=700")
    assert kind == "tmpfs" and {"nosuid", "nodev", "noexec", "size=1024k", "mode=700"} <= opts
    kind, opts = mounts_line("/run", "--tmpfs", "/run:size=2m,exec")
    assert kind == "tmpfs" and "size=2048k" in opts and "noexec" not in opts
    out = pc("run", "--rm", "--net", "none", "--mount", "type=volume,source=vt-m,target=/etc",
             "busybox", "cat", "/etc/passwd").stdout  # fmt: skip
    assert out.startswith("root:")  # a new volume, filled from the image
    pc("run", "-d", "--name", "vt-mc", "--net", "none",
       "--mount", f"type=bind,src={host},dst=/m", "--mount", "type=volume,target=/v,ro",
       "--tmpfs", "/run:size=2m", "busybox", "sleep", "600")  # fmt: skip
    doc = pc.inspect("vt-mc")
    assert [m["Type"] for m in doc["Mounts"]] == ["bind", "volume"]
    assert doc["HostConfig"]["Tmpfs"] == {"/run": "size=2m"}
    assert doc["HostConfig"]["Mounts"] == [
        {"Type": "bind", "Source": str(host), "Target": "/m"},
        {"Type": "volume", "Target": "/v", "ReadOnly": True},
    ]
    assert pc("exec", "vt-mc", "cat", "/m/f").stdout == "from host\n"
    pc("rm", "-f", "-v", "vt-mc")
    for args, words in [
        (("--mount", "type=bind,src=/nonexist-pi,dst=/m"), "bind source path does not exist"),
        (("--mount", "type=foo,target=/m"), "mount type unknown"),
        (("--mount", "type=volume"), "target is required"),
        (("--mount", "type=volume,target=/m,bogus=1"), "unexpected key 'bogus'"),
        (("--mount", "type=bind,target=/m"), "Source must not be empty"),
        (("--mount", "type=tmpfs,src=x,target=/m"), "must not be specified"),
        (("--mount", "type=tmpfs,target=/m,tmpfs-size=lots"), "tmpfs-size"),
        (("--mount", "type=bind,src=/tmp,dst=/m,bind-propagation=shared"), "rprivate"),
        (("--tmpfs", "rel"), "must be absolute"),
        (("--tmpfs", "/t:colour=red"), "unknown option"),
        (("-v", f"{host}:/m", "--tmpfs", "/m"), "duplicate mount point: /m"),
    ]:
        r = pc("run", "--net", "none", *args, "busybox", "true", check=False)
        assert r.returncode != 0 and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, (args, r.stderr)
    assert pc("ps", "-aq").stdout == ""
    assert pc("volume", "ls", "-q").stdout == "vt-m\n"
    pc("volume", "rm", "vt-m")


def test_volumes_from_refusals(pc, state_root):
    """--volumes-from names a container that exists, with ro or rw: else one line and
    nothing made."""
    for args, words in [
        (("--volumes-from", "vt-nope"), "vt-nope"),
        (("--volumes-from", "vt-nope:rx"), "expected CONTAINER[:ro|rw]"),
        (("--volumes-from", ":ro"), "expected CONTAINER[:ro|rw]"),
    ]:
        r = pc("run", "--net", "none", *args, "busybox", "true", check=False)
        assert r.returncode != 0 and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, (args, r.stderr)
    assert pc("ps", "-aq").stdout == "" and pc("volume", "ls", "-q").stdout == ""
