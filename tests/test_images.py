"""The image store: the embedded busybox image, lookup by name/id, tag, rmi."""

import json
import os
import stat

import pytest

from pyinspect.errors import ConflictError, NotFoundError, UsageError
from pyinspect.runtime.images import ImageStore, parse_reference

pytestmark = pytest.mark.root


@pytest.fixture
def store(state_root):
    return ImageStore(state_root)


def test_busybox_builds_on_first_resolve_and_is_stable(store, tmp_path):
    im = store.resolve("busybox")
    assert im.repo_tags == ["busybox:latest"]
    assert im.config["Cmd"] == ["sh"]
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in im.config["Env"]
    (layer,) = im.layer_dirs
    assert os.readlink(layer / "bin" / "sh") == "busybox"
    assert os.readlink(layer / "usr" / "bin" / "env") == "../../bin/busybox"
    assert (layer / "bin" / "busybox").stat().st_size == os.stat("/bin/busybox").st_size
    assert stat.S_IMODE((layer / "tmp").stat().st_mode) == 0o1777
    assert "root:x:0:0" in (layer / "etc" / "passwd").read_text()
    assert (layer / "var" / "www" / "index.html").exists()
    for d in ("proc", "sys", "dev", "root"):
        assert (layer / d).is_dir()
    # same id again, by every kind of reference, and from a second store (deterministic)
    for ref in ("busybox:latest", im.id, im.id[7:], im.id[7:19], "docker.io/library/busybox"):
        assert store.resolve(ref).id == im.id
    other = ImageStore(tmp_path / "other")
    assert other.resolve("busybox").id == im.id
    assert os.listdir(store.tmp) == []


def test_unknown_image_is_not_found(store):
    with pytest.raises(NotFoundError, match="no such image"):
        store.resolve("nosuchimage")
    with pytest.raises(NotFoundError):
        store.resolve("busybox:other")
    with pytest.raises(UsageError):
        store.resolve("Bad Name")


def test_parse_reference():
    assert parse_reference("busybox") == "busybox:latest"
    assert parse_reference("docker.io/library/alpine:3.19") == "alpine:3.19"
    assert parse_reference("localhost:5000/a/b") == "localhost:5000/a/b:latest"
    for bad in ("", "UPPER", "a:b:c", "x@sha256:00", "a/../b", " a"):
        with pytest.raises(UsageError):
            parse_reference(bad)


def test_tag_untag_and_remove_gc(store):
    im = store.resolve("busybox")
    assert store.tag("busybox", "pm-one:v1") == "pm-one:v1"
    assert store.resolve("pm-one:v1").id == im.id
    assert sorted(store.resolve(im.id).repo_tags) == ["busybox:latest", "pm-one:v1"]
    # by id with two tags needs force
    with pytest.raises(ConflictError, match="several tags"):
        store.remove(im.id)
    assert store.remove("pm-one:v1") == [{"Untagged": "pm-one:v1"}]
    with pytest.raises(NotFoundError):
        store.resolve("pm-one:v1")
    # in use by a container: conflict; force drops only the tag
    cdir = store.root / "containers" / ("a" * 64)
    cdir.mkdir(parents=True)
    (cdir / "config.json").write_text(
        json.dumps({"id": "a" * 64, "name": "pmc", "image_id": im.id})
    )
    with pytest.raises(ConflictError, match="container pmc"):
        store.remove("busybox")
    assert store.remove("busybox", force=True) == [{"Untagged": "busybox:latest"}]
    assert store.resolve(im.id).repo_tags == []
    assert all(p.exists() for p in im.layer_dirs)
    (cdir / "config.json").unlink()
    assert store.remove(im.id) == [{"Deleted": im.id}]
    assert not any(p.exists() for p in im.layer_dirs)
    assert os.listdir(store.layers) == [] and os.listdir(store.blobs) == []
    assert store.list() == []
