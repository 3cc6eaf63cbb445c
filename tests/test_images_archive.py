"""Loading and saving real image archives: formats, dedupe, round trips, hostile input."""

import gzip
import json
import os
import stat
import subprocess
import tarfile

import pytest

from pyinspect.errors import CorruptInputError, NotFoundError
from pyinspect.runtime.images import ImageStore

from helpers import imagekit as kit

pytestmark = pytest.mark.root

BASE = kit.layer(
    ("etc", "dir"),
    ("etc/os-release", "file", b"ID=pm\n"),
    ("bin", "dir"),
    ("bin/tool", "file", b"#!/bin/sh\necho hi\n"),
    ("bin/alias", "sym", "tool"),
    ("bin/hard", "hard", "bin/tool"),
)
APP = kit.layer(("app", "dir"), ("app/main", "file", b"main"), ("etc/.wh.os-release", "file"))
OTHER = kit.layer(("srv", "dir"), ("srv/x", "file", b"x"))


@pytest.fixture
def store(state_root):
    return ImageStore(state_root)


def assert_empty(store):
    """No image, layer, blob or staging dir left in the store."""
    assert store.list() == []
    for d in (store.layers, store.blobs, store.configs, store.tmp):
        assert not d.exists() or os.listdir(d) == [], d


def test_docker_legacy_archive_two_images_share_a_layer(store, tmp_path):
    arc = kit.docker_legacy(
        tmp_path / "a.tar",
        [([BASE, APP], ["pm-app:1"], None), ([BASE, OTHER], ["pm-other:2", "pm-o:x"], None)],
    )
    loaded = store.load(arc)
    assert [im.repo_tags for im in loaded] == [["pm-app:1"], ["pm-o:x", "pm-other:2"]]
    app = store.resolve("pm-app:1")
    assert app.id == f"sha256:{kit.sha(kit.config([BASE, APP]))}"
    assert app.config["Cmd"] == ["sh"] and app.config["WorkingDir"] == "/w"
    assert app.config["ExposedPorts"] == {"80/tcp": {}}
    assert app.layer_dirs[0] == store.resolve("pm-other:2").layer_dirs[0]  # base first, shared
    assert len(os.listdir(store.layers)) == 3 and len(os.listdir(store.blobs)) == 3
    base, top = app.layer_dirs
    assert (base / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.readlink(base / "bin" / "alias") == "tool"
    assert (base / "bin" / "hard").stat().st_ino == (base / "bin" / "tool").stat().st_ino
    wh = (top / "etc" / "os-release").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    # Docker's size: file bytes (6 + 18 + 4), a symlink's target (4), a hard link and a
    # whiteout nothing
    assert app.size == 6 + 18 + 4 + 4
    # a second load stores nothing new and does not re-extract the shared base
    ino = base.stat().st_ino
    again = store.load(kit.docker_legacy(tmp_path / "b.tar", [([BASE], ["pm-base:1"], None)]))
    assert again[0].layer_dirs[0].stat().st_ino == ino
    assert len(os.listdir(store.layers)) == 3
    assert os.listdir(store.tmp) == []


def test_gzip_layers_and_gzip_archive(store, tmp_path):
    arc = kit.docker_legacy(tmp_path / "a.tar", [([BASE, APP], ["pm-gz:1"], None)], gz_layers=True)
    gz = tmp_path / "a.tar.gz"
    gz.write_bytes(gzip.compress(arc.read_bytes()))
    (im,) = store.load(gz)
    assert im.diff_ids == [f"sha256:{kit.sha(BASE)}", f"sha256:{kit.sha(APP)}"]
    assert (store.blobs / kit.sha(APP)).read_bytes() == APP  # stored uncompressed, verifiable


@pytest.mark.parametrize("form", ["dir", "tar", "tar.gz", "plain-layers", "nested-index"])
def test_oci_layouts(store, tmp_path, form):
    layout = kit.oci_layout(
        tmp_path / "oci",
        [([BASE, APP], "pm-oci:7", None), ([OTHER], None, None)],
        gz_layers=form != "plain-layers",
        nested_index=form == "nested-index",
    )
    src = layout
    if form in ("tar", "tar.gz"):
        src = kit.tar_dir(layout, tmp_path / f"oci.{form}", gz=form == "tar.gz")
    first, second = store.load(src)
    assert first.repo_tags == ["pm-oci:7"] and second.repo_tags == []
    assert first.id == f"sha256:{kit.sha(kit.config([BASE, APP]))}"
    assert (first.layer_dirs[1] / "app" / "main").read_bytes() == b"main"
    assert store.resolve(second.id).diff_ids == [f"sha256:{kit.sha(OTHER)}"]


def test_save_load_round_trip_keeps_ids_tags_and_content(store, tmp_path):
    store.load(kit.docker_legacy(tmp_path / "a.tar", [([BASE, APP], ["pm-rt:1"], None)]))
    store.resolve("busybox")
    store.tag("pm-rt:1", "pm-rt:2")
    out = tmp_path / "saved.tar"
    store.save(["pm-rt:1", "pm-rt:2", "busybox"], out)
    # the archive is docker's own format: manifest.json + OCI index + blobs by digest
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
        manifest = json.load(tf.extractfile("manifest.json"))
        index = json.load(tf.extractfile("index.json"))
    assert {"manifest.json", "index.json", "oci-layout", "repositories"} <= names
    assert sorted(t for m in manifest for t in m["RepoTags"]) == [
        "busybox:latest",
        "pm-rt:1",
        "pm-rt:2",
    ]
    assert all(p in names for m in manifest for p in [m["Config"], *m["Layers"]])
    assert len(index["manifests"]) == 3
    store.save(["pm-rt:2", "pm-rt:1", "busybox"], tmp_path / "again.tar")
    assert (tmp_path / "again.tar").read_bytes() == out.read_bytes()  # deterministic

    fresh = ImageStore(tmp_path / "fresh")
    loaded = {im.id: im for im in fresh.load(out)}
    for ref in ("pm-rt:1", "busybox"):
        old, new = store.resolve(ref), fresh.resolve(ref)
        assert new.id == old.id and new.id in loaded
        assert new.repo_tags == old.repo_tags
        assert new.diff_ids == old.diff_ids
        for a, b in zip(old.layer_dirs, new.layer_dirs, strict=True):
            assert kit.tree(a) == kit.tree(b)
    # and the OCI view of the same archive (index.json only) loads to the same ids
    with tarfile.open(out) as tf:
        members = [m for m in tf.getmembers() if m.name != "manifest.json"]
        tf.extractall(tmp_path / "ocionly", members=members)
    oci_ids = {im.id for im in ImageStore(tmp_path / "third").load(tmp_path / "ocionly")}
    assert oci_ids == set(loaded)


def test_whiteouts_hide_lower_files_in_a_real_overlay_mount(store, tmp_path):
    lower = kit.layer(
        ("a", "dir"),
        ("a/keep", "file", b"k"),
        ("a/gone", "file", b"g"),
        ("d", "dir"),
        ("d/x", "file", b"x"),
        ("d/sub", "dir"),
        ("d/sub/y", "file", b"y"),
    )
    upper = kit.layer(
        ("a", "dir"),
        ("a/.wh.gone", "file"),
        ("d", "dir"),
        ("d/.wh..wh..opq", "file"),
        ("d/new", "file", b"n"),
        ("e/.wh..wh..opq", "file"),
    )
    (im,) = store.load(kit.docker_legacy(tmp_path / "w.tar", [([lower, upper], ["pm-wh:1"], None)]))
    low, up = im.layer_dirs
    assert os.getxattr(up / "d", "trusted.overlay.opaque") == b"y"
    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={up}:{low}", str(merged)], check=True
    )
    try:
        assert sorted(os.listdir(merged / "a")) == ["keep"]
        assert sorted(os.listdir(merged / "d")) == ["new"]
        assert (merged / "d" / "new").read_bytes() == b"n"
        assert not (merged / "a" / "gone").exists()
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert (low / "a" / "gone").read_bytes() == b"g"  # the lower layer itself is untouched


HOSTILE = {
    "dotdot": [("../pm-escape", "file", b"x")],
    "dotdot-deep": [("a/../../pm-escape", "file", b"x")],
    "absolute": [("/OUTSIDE/pm-escape", "file", b"x")],
    "symlink-abs-write-through": [("lnk", "sym", "/OUTSIDE"), ("lnk/pm-escape", "file", b"x")],
    "symlink-rel-write-through": [
        ("d", "dir"),
        ("d/lnk", "sym", "../../../../../../../OUTSIDE"),
        ("d/lnk/pm-escape", "file", b"x"),
    ],
    "hardlink-outside": [("h", "hard", "../../../../OUTSIDE/victim")],
    "hardlink-absolute": [("h", "hard", "/OUTSIDE/victim")],
    "hardlink-not-yet": [("h", "hard", "later"), ("later", "file", b"x")],
    "hardlink-through-symlink": [("lnk", "sym", "/OUTSIDE"), ("h", "hard", "lnk/victim")],
    "hardlink-to-dir": [("d", "dir"), ("h", "hard", "d")],
    "whiteout-empty": [(".wh.", "file")],
    "whiteout-dotdot": [("a/.wh...", "file")],
    "whiteout-dot": [("a/.wh..", "file")],
    "whiteout-dir": [("a/.wh.x", "dir")],
    "whiteout-and-file": [("a/f", "file", b"x"), ("a/.wh.f", "file")],
    "whiteout-escape": [("../.wh.pm-escape", "file")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_are_rejected_leaving_nothing(store, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("victim")

    def real(text):  # /OUTSIDE -> the absolute outside dir; OUTSIDE -> it without the '/'
        return text.replace("/OUTSIDE", str(outside)).replace("OUTSIDE", str(outside)[1:])

    entries = [tuple(real(x) if isinstance(x, str) else x for x in e) for e in HOSTILE[case]]
    bad = kit.layer(*entries)
    good = kit.layer(("ok", "file", b"fine"))
    arc = kit.docker_legacy(
        tmp_path / "evil.tar", [([good], ["pm-good:1"], None), ([good, bad], ["pm-evil:1"], None)]
    )
    with pytest.raises(CorruptInputError) as err:
        store.load(arc)
    assert "\n" not in str(err.value) and "layer 2" in str(err.value)
    assert_empty(store)  # not even the first, valid image of the archive
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "victim"
    assert not (tmp_path / "pm-escape").exists()
    assert not (store.root / "pm-escape").exists() and not (store.dir / "pm-escape").exists()


def test_a_symlink_replaced_by_a_directory_is_never_followed(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = kit.layer(
        ("lnk", "sym", str(outside)),
        ("lnk", "dir"),
        ("lnk/f", "file", b"in"),
        ("f2", "sym", str(outside / "f2")),
        ("f2", "file", b"in2"),
    )
    (im,) = store.load(kit.docker_legacy(tmp_path / "r.tar", [([bad], ["pm-r:1"], None)]))
    (layer,) = im.layer_dirs
    assert (layer / "lnk").is_dir() and not (layer / "lnk").is_symlink()
    assert (layer / "lnk" / "f").read_bytes() == b"in"
    assert not (layer / "f2").is_symlink() and (layer / "f2").read_bytes() == b"in2"
    assert os.listdir(outside) == []


def _good(tmp_path):
    return kit.docker_legacy(tmp_path / "good.tar", [([BASE, APP], ["pm-c:1"], None)])


def _corruptions(tmp_path):
    good = _good(tmp_path).read_bytes()
    cfg = kit.config([BASE, APP])
    out = {
        "empty": b"",
        "not-a-tar": b"hello, this is not an archive\n" * 40,
        "truncated-tar": good[: len(good) // 2],
        "truncated-gzip": gzip.compress(good)[:-200],
        "gzip-garbage": b"\x1f\x8b\x08\x00" + b"\x00garbage" * 100,
        "zstd": b"\x28\xb5\x2f\xfd" + b"\x00" * 100,
    }
    # a layer that does not match the config's diff_id
    out["diff-id-mismatch"] = kit.docker_legacy(
        tmp_path / "m.tar", [([BASE, APP], ["pm-c:1"], kit.config([BASE, OTHER]))]
    ).read_bytes()
    # a config whose file name (its digest) does not match its content
    p = tmp_path / "cfgname.tar"
    with tarfile.open(p, "w") as tf:
        for name, data in (
            (f"{'0' * 64}.json", cfg),
            ("l/layer.tar", BASE),
            (
                "manifest.json",
                json.dumps(
                    [
                        {
                            "Config": f"{'0' * 64}.json",
                            "RepoTags": ["pm-c:1"],
                            "Layers": ["l/layer.tar"],
                        }
                    ]
                ).encode(),
            ),
        ):
            kit._add(tf, name, data)
    out["config-digest-mismatch"] = p.read_bytes()
    for label, manifest in (
        ("manifest-not-json", b"[{"),
        ("manifest-wrong-shape", b'{"Config": 1}'),
        (
            "manifest-layer-escape",
            json.dumps(
                [
                    {
                        "Config": f"{kit.sha(cfg)}.json",
                        "RepoTags": [],
                        "Layers": ["../../etc/passwd", "x"],
                    }
                ]
            ).encode(),
        ),
        (
            "manifest-missing-layer",
            json.dumps(
                [
                    {
                        "Config": f"{kit.sha(cfg)}.json",
                        "RepoTags": [],
                        "Layers": ["nope/layer.tar", "x"],
                    }
                ]
            ).encode(),
        ),
        (
            "bad-tag",
            json.dumps(
                [{"Config": f"{kit.sha(cfg)}.json", "RepoTags": ["BAD TAG"], "Layers": []}]
            ).encode(),
        ),
    ):
        p = tmp_path / f"{label}.tar"
        with tarfile.open(p, "w") as tf:
            kit._add(tf, f"{kit.sha(cfg)}.json", cfg)
            kit._add(tf, "manifest.json", manifest)
        out[label] = p.read_bytes()
    p = tmp_path / "outer-escape.tar"
    with tarfile.open(p, "w") as tf:
        kit._add(tf, "../pm-escape", b"x")
        kit._add(tf, "manifest.json", b"[]")
    out["outer-member-escape"] = p.read_bytes()
    p = tmp_path / "neither.tar"
    with tarfile.open(p, "w") as tf:
        kit._add(tf, "hello.txt", b"x")
    out["neither-format"] = p.read_bytes()
    return out


CORRUPTIONS = [
    "empty",
    "not-a-tar",
    "truncated-tar",
    "truncated-gzip",
    "gzip-garbage",
    "zstd",
    "diff-id-mismatch",
    "config-digest-mismatch",
    "manifest-not-json",
    "manifest-wrong-shape",
    "manifest-layer-escape",
    "manifest-missing-layer",
    "bad-tag",
    "outer-member-escape",
    "neither-format",
]


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupt_input_is_one_line_error_and_leaves_nothing(store, tmp_path, case):
    path = tmp_path / "input.tar"
    path.write_bytes(_corruptions(tmp_path)[case])
    with pytest.raises(CorruptInputError) as err:
        store.load(path)
    assert "\n" not in str(err.value)
    assert_empty(store)
    assert not (tmp_path / "pm-escape").exists()


def test_oci_blob_digest_mismatch_and_layout_symlink_escape(store, tmp_path):
    layout = kit.oci_layout(tmp_path / "oci", [([BASE], "pm-d:1", None)])
    blobs = layout / "blobs" / "sha256"
    layer_blob = blobs / kit.sha(gzip.compress(BASE, mtime=0))
    data = layer_blob.read_bytes()
    layer_blob.write_bytes(gzip.compress(BASE + b"\0" * 512, mtime=0))
    with pytest.raises(CorruptInputError, match="does not match"):
        store.load(layout)
    assert_empty(store)
    layer_blob.unlink()
    (tmp_path / "secret").write_bytes(data)
    layer_blob.symlink_to(tmp_path / "secret")  # a layout blob pointing outside the layout
    with pytest.raises(CorruptInputError, match="outside"):
        store.load(layout)
    assert_empty(store)


def test_missing_input_file_is_not_found(store, tmp_path):
    with pytest.raises(NotFoundError):
        store.load(tmp_path / "nope.tar")


def test_concurrent_processes_build_busybox_and_tag_without_losing_updates(state_root):
    code = (
        "import sys; from pyinspect.runtime.images import ImageStore as S; "
        "s=S(sys.argv[1]); im=s.resolve('busybox'); s.tag(im.id, 'pm-c' + sys.argv[2]); "
        "print(im.id)"
    )
    import sys

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(state_root), str(i)], stdout=subprocess.PIPE, text=True
        )
        for i in range(6)
    ]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    store = ImageStore(state_root)
    (im,) = store.list()
    assert ids == {im.id}
    assert im.repo_tags == ["busybox:latest"] + [f"pm-c{i}:latest" for i in range(6)]
    assert len(os.listdir(store.layers)) == 1 and os.listdir(store.tmp) == []


@pytest.mark.parametrize(
    "entries",
    [
        [("h", "file", b"x"), ("h", "hard", "h")],  # link to itself
        [("x" * 300, "file", b"x")],  # name too long for the fs
        [("f", "file", b"x"), ("f/child", "file", b"y")],  # a file used as a directory
    ],
    ids=["self-hardlink", "name-too-long", "file-as-parent"],
)
def test_filesystem_errors_on_odd_members_are_corrupt_input(store, tmp_path, entries):
    arc = kit.docker_legacy(tmp_path / "o.tar", [([kit.layer(*entries)], ["pm-o:1"], None)])
    with pytest.raises(CorruptInputError):
        store.load(arc)
    assert_empty(store)
