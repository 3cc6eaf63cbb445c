"""Image contents Docker accepts, made with the standard tools, loaded and run.

A Debian system as debootstrap lays it out cannot be made here (debootstrap needs a
mirror, and this machine reaches none), so the tests build what such an image holds
with GNU tar from a real directory tree instead: device nodes in /dev, a fifo, hard
links, a sparse file, xattrs, names longer than 100 characters (GNU and PAX headers),
file and opaque-directory whiteouts in an upper layer; layers uncompressed, gzip'd
(`gzip -n`) and zstd'd (`zstd`). skopeo and umoci make the OCI variants.
"""

import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import Cli, have
from helpers import imagekit as kit
from helpers.registryd import store_snapshot

pytestmark = pytest.mark.root

LONG_DIR = "usr/share/" + "d" * 60 + "/" + "e" * 60
LONG_FILE = "f" * 140
SPARSE_SIZE = 64 << 20
SPARSE_AT = 32 << 20


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def debian_like_root(root):
    """A root filesystem with what a debootstrap'd Debian holds that simple images lack."""
    for d in ("bin", "dev", "run", "usr/bin", "var/log", "etc/opq", LONG_DIR):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    os.symlink("busybox", root / "bin/sh")
    os.mknod(root / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "dev/loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(root / "run/initctl", 0o600)
    (root / "usr/bin/pm-hard1").write_text("hard\n")
    os.link(root / "usr/bin/pm-hard1", root / "usr/bin/pm-hard2")
    (root / "usr/bin/pm-gone").write_text("whited out above\n")
    for n in ("a", "b"):
        (root / "etc/opq" / n).write_text(n)
    with open(root / "var/log/pm-sparse", "wb") as f:
        f.seek(SPARSE_AT)
        f.write(b"pm-sparse")
        f.truncate(SPARSE_SIZE)
    (root / "etc/pm-xattr").write_text("x\n")
    os.setxattr(root / "etc/pm-xattr", "user.pm", b"hello")
    (root / LONG_DIR / LONG_FILE).write_text("long name\n")


def upper_root(root):
    """An upper layer: an opaque /etc/opq with a new file, /usr/bin/pm-gone whited out."""
    (root / "etc/opq").mkdir(parents=True)
    (root / "etc/opq/.wh..wh..opq").write_bytes(b"")
    (root / "etc/opq/c").write_text("c")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/.wh.pm-gone").write_bytes(b"")
    (root / LONG_DIR).mkdir(parents=True)
    (root / LONG_DIR / ("g" * 120)).write_text("pax long name\n")
    (root / "var/log").mkdir(parents=True)
    with open(root / "var/log/pm-sparse-pax", "wb") as f:  # PAX sparse 1.0 (--format=posix)
        f.seek(SPARSE_AT)
        f.write(b"pax-holes")
        f.truncate(SPARSE_SIZE)


def gnu_tar(src, out, fmt):
    sh(
        "tar",
        f"--format={fmt}",
        "--sparse",
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "--sort=name",
        "-C",
        str(src),
        "-cf",
        str(out),
        ".",
    )
    return out.read_bytes()


def compress(data, how, tmp):
    if how == "none":
        return data
    p = tmp / f"layer.{how}"
    p.write_bytes(data)
    sh(*({"gzip": ["gzip", "-n", "-k", "-f"], "zstd": ["zstd", "-q", "-f", "-k"]}[how]), str(p))
    return (tmp / f"layer.{how}.{'gz' if how == 'gzip' else 'zst'}").read_bytes()


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("contents")
    lower, upper = tmp / "lower", tmp / "upper"
    lower.mkdir()
    upper.mkdir()
    debian_like_root(lower)
    upper_root(upper)
    return gnu_tar(lower, tmp / "lower.tar", "gnu"), gnu_tar(upper, tmp / "upper.tar", "posix")


def layer_dir(cli, image, index):
    (ins,) = json.loads(cli("inspect", image).stdout)
    return ins["GraphDriver"]["Data"]["LowerDirs"][index]


def check_lower_on_host(d):
    st = os.lstat(os.path.join(d, "dev/console"))
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 5 and os.minor(st.st_rdev) == 1
    st = os.lstat(os.path.join(d, "dev/loop0"))
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0)
    assert stat.S_ISFIFO(os.lstat(os.path.join(d, "run/initctl")).st_mode)
    st = os.stat(os.path.join(d, "var/log/pm-sparse"))
    assert st.st_size == SPARSE_SIZE and st.st_blocks * 512 < (1 << 20), "holes kept"
    assert os.getxattr(os.path.join(d, "etc/pm-xattr"), "user.pm") == b"hello"


def check_in_container(cli, image):
    script = (
        "stat -c '%h %i' /usr/bin/pm-hard1 /usr/bin/pm-hard2; "
        f"dd if=/var/log/pm-sparse bs=1048576 skip={SPARSE_AT >> 20} count=1 2>/dev/null"
        " | head -c 9; echo; stat -c %s /var/log/pm-sparse; "
        f"dd if=/var/log/pm-sparse-pax bs=1048576 skip={SPARSE_AT >> 20} count=1 "
        "2>/dev/null | head -c 9; echo; "
        f"cat /{LONG_DIR}/{LONG_FILE} /{LONG_DIR}/{'g' * 120}; ls /etc/opq; "
        "test -e /usr/bin/pm-gone && echo gone-is-there; echo end"
    )
    out = cli("run", "--rm", "--net", "none", image, "sh", "-c", script).stdout.splitlines()
    h1, h2 = out[0].split(), out[1].split()
    assert h1[0] == "2" and h1 == h2, out  # one inode, two names
    assert out[2:5] == ["pm-sparse", str(SPARSE_SIZE), "pax-holes"], out
    assert out[5:7] == ["long name", "pax long name"], out
    assert out[7:] == ["c", "end"], out  # opaque dir and file whiteout


@pytest.mark.parametrize("how", ["none", "gzip", "zstd"])
def test_debian_like_docker_save_loads_and_runs(cli, layers, tmp_path, how):
    lower, upper = layers
    arc = tmp_path / "debian.tar"
    kit.docker_legacy(
        arc,
        [
            (
                [compress(lower, how, tmp_path), compress(upper, how, tmp_path)],
                ["pm-debian:1"],
                kit.config([lower, upper]),
            )
        ],
    )
    proc = cli("load", "-i", arc)
    assert proc.stdout == "Loaded image: pm-debian:1\n" and proc.stderr == ""
    check_lower_on_host(layer_dir(cli, "pm-debian:1", 0))
    st = os.stat(os.path.join(layer_dir(cli, "pm-debian:1", 1), "var/log/pm-sparse-pax"))
    assert st.st_size == SPARSE_SIZE and st.st_blocks * 512 < (1 << 20)
    check_in_container(cli, "pm-debian:1")


def test_skopeo_oci_zstd_and_docker_archive_of_it(cli, layers, tmp_path):
    if not have("skopeo"):
        pytest.skip("skopeo (make install)")
    lower, upper = layers
    arc = kit.docker_legacy(
        tmp_path / "d.tar", [([lower, upper], ["pm-debian:1"], kit.config([lower, upper]))]
    )
    oci = tmp_path / "oci"
    r = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-compress",
            "--dest-compress-format",
            "zstd",
            f"docker-archive:{arc}",
            f"oci:{oci}:1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    man_desc = json.loads((oci / "index.json").read_text())["manifests"][0]
    man = json.loads((oci / "blobs/sha256" / man_desc["digest"][7:]).read_text())
    assert {x["mediaType"] for x in man["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    out = cli("load", "-i", oci).stdout
    assert out.startswith("Loaded image ID: sha256:")  # skopeo names only the tag "1"
    image = out.split()[-1]
    check_lower_on_host(layer_dir(cli, image, 0))
    check_in_container(cli, image)
    # skopeo's own docker-archive of the image (docker archives cannot hold zstd layers)
    arc2 = tmp_path / "skopeo-docker.tar"
    r = subprocess.run(
        ["skopeo", "copy", f"docker-archive:{arc}", f"docker-archive:{arc2}:pm-sk:2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    other = Cli(tmp_path / "other")
    assert other("load", "-i", arc2).stdout == "Loaded image: pm-sk:2\n"
    check_in_container(other, "pm-sk:2")


def test_umoci_layers_with_whiteouts_and_a_device(cli, tmp_path):
    if not have("umoci"):
        pytest.skip("umoci (make install)")
    layout, bundle = tmp_path / "L", tmp_path / "B"
    sh("umoci", "init", "--layout", str(layout))
    sh("umoci", "new", "--image", f"{layout}:t")
    sh("umoci", "unpack", "--image", f"{layout}:t", str(bundle))
    rootfs = bundle / "rootfs"
    for d in ("bin", "d", "o"):
        (rootfs / d).mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
    os.symlink("busybox", rootfs / "bin/sh")
    (rootfs / "d/a").write_text("a")
    (rootfs / "o/1").write_text("1")
    (rootfs / "x").write_text("x")
    os.mknod(rootfs / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    sh("umoci", "repack", "--image", f"{layout}:t", str(bundle))
    shutil.rmtree(bundle)
    sh("umoci", "unpack", "--image", f"{layout}:t", str(bundle))
    os.unlink(rootfs / "d/a")
    os.unlink(rootfs / "x")
    shutil.rmtree(rootfs / "o")
    (rootfs / "o").mkdir()
    (rootfs / "o/2").write_text("2")
    sh("umoci", "repack", "--image", f"{layout}:t", str(bundle))
    image = cli("load", "-i", layout).stdout.split()[-1]
    out = cli(
        "run",
        "--rm",
        "--net",
        "none",
        image,
        "sh",
        "-c",
        "ls /d /o; test -e /x || echo no-x; ls -l /console | cut -c1",
    ).stdout.split()
    assert out == ["/d:", "/o:", "2", "no-x", "c"], out


def test_device_nodes_skipped_with_a_note_where_mknod_is_refused(tmp_path, layers):
    """In a user namespace mknod fails (EPERM): the nodes are skipped with a note, as
    Docker does without root; everything else of the layer is stored."""
    if not have("unshare"):
        pytest.skip("unshare")
    lower, _ = layers
    arc = kit.docker_legacy(tmp_path / "l.tar", [([lower], ["pm-userns:1"], kit.config([lower]))])
    root = tmp_path / "root"
    cli = Cli(root)
    proc = subprocess.run(
        ["unshare", "-Ur", *cli.argv("load", "-i", arc)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Loaded image: pm-userns:1\n"
    note = proc.stderr.strip()
    assert note.startswith("note: skipped 3 device node(s) (") and "mknod" in note, note
    assert "\n" not in note
    d = layer_dir(cli, "pm-userns:1", 0)
    assert not os.path.lexists(os.path.join(d, "dev/console"))
    assert stat.S_ISFIFO(os.lstat(os.path.join(d, "run/initctl")).st_mode)
    assert os.stat(os.path.join(d, "usr/bin/pm-hard1")).st_nlink == 2


HOSTILE_TAR = {
    # made with GNU tar options that write what a hostile archive holds
    "absolute": ["-P", "--transform=s|^.*pm-evil$|/tmp/pm-evil-abs|"],
    "dotdot": ["-P", "--transform=s|^.*pm-evil$|../../pm-evil|"],
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TAR))
def test_hostile_tar_made_with_gnu_tar_stays_refused(cli, tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pm-evil").write_text("evil")
    layer = tmp_path / "evil.tar"
    sh("tar", *HOSTILE_TAR[case], "-cf", str(layer), str(src / "pm-evil"))
    data = layer.read_bytes()
    cli(
        "load",
        "-i",
        kit.docker_legacy(
            tmp_path / "ok.tar", [([kit.layer(("ok", "file", b"x"))], ["pm-ok:1"], None)]
        ),
    )
    before = store_snapshot(cli.root)
    proc = cli(
        "load",
        "-i",
        kit.docker_legacy(tmp_path / "e.tar", [([data], ["pm-e:1"], None)]),
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("Error: loading"), proc.stderr
    assert "\n" not in proc.stderr.strip()
    assert store_snapshot(cli.root) == before
    assert not os.path.exists("/tmp/pm-evil-abs")


def test_device_nodes_of_an_image_are_inert_in_the_container(cli, tmp_path):
    """The image root is mounted nodev: a device node an image holds (here 1,3 = null, at
    /pm-null) cannot be opened in the container; the container's own /dev/null can."""
    layer = kit.layer(("pm-null", "chr"))
    cli("tag", "busybox", "pm-bb:1")  # busybox's layer below, the device layer above
    (bb,) = json.loads(cli("inspect", "pm-bb:1").stdout)
    bb_tar = cli.root / "images" / "blobs" / "sha256" / bb["RootFS"]["Layers"][0][7:]
    arc = kit.docker_legacy(
        tmp_path / "both.tar", [([bb_tar.read_bytes(), layer], ["pm-devbb:1"], None)]
    )
    cli("load", "-i", arc)
    out = cli(
        "run",
        "--rm",
        "--net",
        "none",
        "pm-devbb:1",
        "sh",
        "-c",
        "ls -l /pm-null | cut -c1; (echo x > /pm-null) 2>/dev/null && echo opened "
        "|| echo refused; echo x > /dev/null && echo own-dev-ok",
    ).stdout.split()
    assert out == ["c", "refused", "own-dev-ok"], out
