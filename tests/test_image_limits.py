"""Size bombs and malformed metadata: refused in one line while streaming, store unchanged.

The bombs are the ones an adversarial run found: a tiny docker-save archive with a 10 GB
GNU-sparse file, a gzip bomb (here 300 MB of zeros in ~300 kB, enough to pass the 256 MB
floor of the ratio check), the same bomb pulled from a registry; and every metadata field
with the wrong JSON type, in index.json, a manifest, the image config and manifest.json.
"""

import gzip
import hashlib
import json
import os
import subprocess

import pytest
import requests

from conftest import have
from helpers import imagekit as kit
from helpers.registryd import Registry, store_snapshot

pytestmark = pytest.mark.root

BASE = kit.layer(("etc", "dir"), ("etc/pm", "file", b"pm\n"))


@pytest.fixture
def seeded(cli, tmp_path):
    """The CLI on a store that holds one image already; returns the store's snapshot."""
    cli("load", "-i", kit.docker_legacy(tmp_path / "seed.tar", [([BASE], ["pm-seed:1"], None)]))
    return store_snapshot(cli.root)


def refused(cli, before, path, code, *words):
    proc = cli("load", "-i", path, check=False)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert err.startswith("Error: loading") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert store_snapshot(cli.root) == before
    assert not os.listdir(cli.root / "images" / "tmp"), "staging left behind"
    return err


def sparse_bomb_layer(tmp_path, size="10G"):
    d = tmp_path / "sparse"
    d.mkdir()
    subprocess.run(["truncate", "-s", size, str(d / "pm-zeros")], check=True)
    out = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--format=gnu", "--sparse", "-C", str(d), "-cf", str(out), "pm-zeros"], check=True
    )
    return out.read_bytes()


def zero_bomb_layer(tmp_path, mb=300):
    """A layer tar holding `mb` MB of zeros, gzip'd: (tar bytes' sha256, gzip bytes)."""
    path = tmp_path / "zeros.tar.gz"
    h = hashlib.sha256()

    class Tee:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            h.update(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    import tarfile

    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz,
    ):
        tee = Tee(gz)
        with tarfile.open(fileobj=tee, mode="w|") as tf:
            ti = tarfile.TarInfo("pm-zeros")
            ti.size = mb << 20

            class Zeros:
                left = ti.size

                def read(self, n):
                    n = min(n, self.left)
                    self.left -= n
                    return bytes(n)

            tf.addfile(ti, Zeros())
    return h.hexdigest(), path.read_bytes()


def test_sparse_bomb_is_refused_before_writing(cli, seeded, tmp_path):
    layer = sparse_bomb_layer(tmp_path)
    arc = kit.docker_legacy(tmp_path / "bomb.tar", [([layer], ["pm-bomb:1"], None)])
    assert arc.stat().st_size < 100_000
    err = refused(
        cli, seeded, arc, 2, "member 'pm-zeros'", "expands past 100x", "decompression bomb"
    )
    assert "image-limits.max-ratio" in err


def test_gzip_bomb_stops_at_the_ratio_limit(cli, seeded, tmp_path):
    diff_hex, blob = zero_bomb_layer(tmp_path)
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_hex}"]},
        }
    ).encode()
    arc = tmp_path / "gzbomb.tar"
    kit.docker_legacy(arc, [([b"placeholder"], ["pm-gz:1"], cfg)])
    # swap the placeholder layer for the bomb (docker load reads gzip'd layer.tar too)
    import tarfile

    with tarfile.open(arc) as src, tarfile.open(tmp_path / "gzbomb2.tar", "w") as dst:
        for m in src:
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("layer.tar"):
                data = blob
                m.size = len(blob)
            dst.addfile(m, None if data is None else __import__("io").BytesIO(data))
    assert len(blob) < 1_000_000
    refused(cli, seeded, tmp_path / "gzbomb2.tar", 2, "layer 1", "expands past 100x")


def test_limits_are_configurable(cli, seeded, tmp_path):
    layer = kit.layer(("big", "file", os.urandom(300_000)))
    arc = kit.docker_legacy(tmp_path / "a.tar", [([layer], ["pm-big:1"], None)])
    (cli.root / "config.json").write_text(json.dumps({"image-limits": {"max-bytes": 100_000}}))
    refused(cli, seeded, arc, 2, "more than 100kB of image data", "image-limits.max-bytes")
    (cli.root / "config.json").write_text(json.dumps({"image-limits": {"min-free-bytes": 1 << 60}}))
    refused(cli, seeded, arc, 5, "not enough disk space", "min-free-bytes")
    (cli.root / "config.json").write_text(json.dumps({"image-limits": {"max-bytes": "1G"}}))
    proc = cli("load", "-i", arc, check=False)
    assert proc.returncode == 2 and "not a whole number" in proc.stderr
    (cli.root / "config.json").write_text(json.dumps({"image-limits": {"max-bites": 1}}))
    assert "unknown image limit" in cli("load", "-i", arc, check=False).stderr
    (cli.root / "config.json").write_text(
        json.dumps({"image-limits": {"max-bytes": 10_000_000, "max-ratio": 1000}})
    )
    assert cli("load", "-i", arc).stdout == "Loaded image: pm-big:1\n"
    # the sparse bomb passes only when the limits are raised on purpose (not written out)
    big = tmp_path / "b"
    big.mkdir()
    sparse = sparse_bomb_layer(big, "300M")
    (cli.root / "config.json").write_text(json.dumps({"image-limits": {"max-ratio": 100_000}}))
    assert (
        cli(
            "load", "-i", kit.docker_legacy(tmp_path / "s.tar", [([sparse], ["pm-sparse:1"], None)])
        ).returncode
        == 0
    )


@pytest.mark.skipif(not have("docker-registry"), reason="docker-registry (make install)")
def test_pulled_bomb_is_refused(cli, seeded, tmp_path):
    reg = Registry(tmp_path / "reg", auth=False)
    try:
        diff_hex, blob = zero_bomb_layer(tmp_path)
        cfg = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_hex}"]},
            }
        ).encode()

        def upload(data):
            d = "sha256:" + hashlib.sha256(data).hexdigest()
            r = requests.post(f"http://{reg.host}/v2/pm/bomb/blobs/uploads/")
            loc = r.headers["Location"]
            loc = loc if loc.startswith("http") else f"http://{reg.host}{loc}"
            assert requests.put(loc, params={"digest": d}, data=data).status_code == 201
            return {"digest": d, "size": len(data)}

        man = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **upload(cfg)},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **upload(blob)}
            ],
        }
        r = requests.put(
            f"http://{reg.host}/v2/pm/bomb/manifests/1",
            data=json.dumps(man),
            headers={"Content-Type": man["mediaType"]},
        )
        assert r.status_code == 201, r.text
        proc = cli("pull", f"{reg.host}/pm/bomb:1", check=False)
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.strip()
        assert err.startswith("Error: pulling") and "expands past 100x" in err
        assert "\n" not in err
        assert store_snapshot(cli.root) == seeded
    finally:
        reg.close()


# ---- malformed metadata ---------------------------------------------------------------


def _oci(tmp_path, mutate_index=None, mutate_manifest=None, mutate_config=None):
    """An OCI layout whose index, manifest or config a mutator changes (digests follow)."""
    d = tmp_path / "layout"
    kit.oci_layout(d, [([BASE], "pm-oci:1", None)])
    index = json.loads((d / "index.json").read_text())
    blobs = d / "blobs" / "sha256"
    desc = index["manifests"][0]
    man = json.loads((blobs / desc["digest"][7:]).read_text())
    if mutate_config:
        cfg = json.loads((blobs / man["config"]["digest"][7:]).read_text())
        cfg = mutate_config(cfg)
        raw = json.dumps(cfg).encode()
        (blobs / kit.sha(raw)).write_bytes(raw)
        man["config"] = {**man["config"], "digest": f"sha256:{kit.sha(raw)}", "size": len(raw)}
    if mutate_manifest:
        man = mutate_manifest(man)
    raw = json.dumps(man).encode()
    (blobs / kit.sha(raw)).write_bytes(raw)
    index["manifests"][0] = {**desc, "digest": f"sha256:{kit.sha(raw)}", "size": len(raw)}
    if mutate_index:
        index = mutate_index(index)
    (d / "index.json").write_text(json.dumps(index))
    return d


def _set(path, value):
    def f(doc):
        cur = doc
        for k in path[:-1]:
            cur = cur[k]
        cur[path[-1]] = value
        return doc

    return f


MALFORMED_OCI = {
    # the adversarial run's cases (they ended in `internal error: AttributeError`)
    "index-annotations-list": (
        {"mutate_index": _set(["manifests", 0, "annotations"], ["x"])},
        "annotations is not an object",
    ),
    "manifest-config-str": (
        {"mutate_manifest": _set(["config"], "str")},
        "config is not an object",
    ),
    "manifest-is-list": ({"mutate_manifest": lambda m: [m]}, "is not an object"),
    "platform-str": (
        {"mutate_index": _set(["manifests", 0, "platform"], "linux")},
        "platform is not an object",
    ),
    # and the other fields
    "index-not-object": ({"mutate_index": lambda i: [i]}, "index.json is not an object"),
    "index-manifests-str": ({"mutate_index": _set(["manifests"], "x")}, "manifests is not a list"),
    "index-schema-1": ({"mutate_index": _set(["schemaVersion"], 1)}, "schemaVersion 1"),
    "index-schema-str": (
        {"mutate_index": _set(["schemaVersion"], "2")},
        "schemaVersion is not a number",
    ),
    "desc-size-str": (
        {"mutate_index": _set(["manifests", 0, "size"], "12")},
        "size is not a number",
    ),
    "desc-size-negative": (
        {"mutate_index": _set(["manifests", 0, "size"], -1)},
        "size is negative",
    ),
    "desc-digest-sha512": (
        {"mutate_index": _set(["manifests", 0, "digest"], "sha512:" + "a" * 128)},
        "unsupported digest algorithm 'sha512'",
    ),
    "desc-digest-int": ({"mutate_index": _set(["manifests", 0, "digest"], 5)}, "malformed digest"),
    "desc-mediatype-int": (
        {"mutate_index": _set(["manifests", 0, "mediaType"], 5)},
        "malformed mediaType",
    ),
    "annotation-value-int": (
        {"mutate_index": _set(["manifests", 0, "annotations"], {"a": 1})},
        "is not a string",
    ),
    "platform-arch-int": (
        {"mutate_index": _set(["manifests", 0, "platform"], {"architecture": 1, "os": "linux"})},
        "architecture is not a string",
    ),
    "manifest-layers-dict": ({"mutate_manifest": _set(["layers"], {})}, "layers is not a list"),
    "manifest-layer-str": (
        {"mutate_manifest": _set(["layers", 0], "x")},
        "layers[0] is not an object",
    ),
    "manifest-layer-type": (
        {"mutate_manifest": _set(["layers", 0, "mediaType"], "application/x-foo")},
        "unsupported layer mediaType",
    ),
    "manifest-no-config": (
        {"mutate_manifest": lambda m: {k: v for k, v in m.items() if k != "config"}},
        "has no config",
    ),
    "config-not-object": ({"mutate_config": lambda c: ["x"]}, "config is not an object"),
    "config-env-str": (
        {"mutate_config": _set(["config", "Env"], "PATH=/bin")},
        "config.Env is not a list",
    ),
    "config-cmd-ints": (
        {"mutate_config": _set(["config", "Cmd"], [1, 2])},
        "config.Cmd[0] is not a string",
    ),
    "config-entrypoint-str": (
        {"mutate_config": _set(["config", "Entrypoint"], "sh")},
        "config.Entrypoint is not a list",
    ),
    "config-workdir-list": (
        {"mutate_config": _set(["config", "WorkingDir"], ["/"])},
        "config.WorkingDir is not a string",
    ),
    "config-user-int": (
        {"mutate_config": _set(["config", "User"], 0)},
        "config.User is not a string",
    ),
    "config-ports-list": (
        {"mutate_config": _set(["config", "ExposedPorts"], ["80/tcp"])},
        "config.ExposedPorts is not an object",
    ),
    "config-labels-int": (
        {"mutate_config": _set(["config", "Labels"], {"a": 1})},
        "config.Labels['a'] is not a string",
    ),
    "config-config-str": (
        {"mutate_config": _set(["config"], "str")},
        "config.config is not an object",
    ),
    "config-rootfs-str": ({"mutate_config": _set(["rootfs"], "layers")}, "rootfs is not an object"),
    "config-diffids-str": (
        {"mutate_config": _set(["rootfs", "diff_ids"], "sha256:x")},
        "rootfs.diff_ids is not a list",
    ),
    "config-history-str": ({"mutate_config": _set(["history"], "x")}, "history is not a list"),
    "config-arch-int": (
        {"mutate_config": _set(["architecture"], 64)},
        "architecture is not a string",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_OCI))
def test_malformed_oci_metadata(cli, seeded, tmp_path, case):
    kwargs, words = MALFORMED_OCI[case]
    layout = _oci(tmp_path, **kwargs)
    refused(cli, seeded, layout, 2, words)
    refused(cli, seeded, kit.tar_dir(layout, tmp_path / "layout.tar"), 2, words)


MALFORMED_SAVE = {
    "not-list": ({"x": 1}, "manifest.json is not a list"),
    "empty": ([], "manifest.json is an empty list"),
    "entry-str": (["x"], "manifest.json[0] is not an object"),
    "config-int": ([{"Config": 1, "Layers": []}], "manifest.json[0].Config is not a string"),
    "layers-str": ([{"Config": "c.json", "Layers": "l"}], "Layers is not a list"),
    "layers-int": ([{"Config": "c.json", "Layers": [1]}], "Layers[0] is not a string"),
    "tags-str": ([{"Config": "c.json", "Layers": [], "RepoTags": "a:1"}], "RepoTags is not a list"),
    "tags-int": (
        [{"Config": "c.json", "Layers": [], "RepoTags": [1]}],
        "RepoTags[0] is not a string",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_SAVE))
def test_malformed_docker_save_manifest(cli, seeded, tmp_path, case):
    doc, words = MALFORMED_SAVE[case]
    import io
    import tarfile

    arc = tmp_path / "m.tar"
    data = json.dumps(doc).encode()
    with tarfile.open(arc, "w") as tf:
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    refused(cli, seeded, arc, 2, words)


@pytest.fixture
def small_fs(tmp_path):
    """A state root on a tmpfs of 64 MB and 20000 inodes, unmounted afterwards."""
    root = tmp_path / "small-root"
    root.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=20000", "pm-small", str(root)],
        check=True,
    )
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_free_space_and_inodes_of_a_small_filesystem(small_fs, tmp_path):
    from conftest import Cli

    cli = Cli(small_fs)
    config = small_fs / "config.json"
    config.write_text(json.dumps({"image-limits": {"min-free-bytes": 0}}))
    cli("load", "-i", kit.docker_legacy(tmp_path / "seed.tar", [([BASE], ["pm-seed:1"], None)]))
    config.unlink()
    before = store_snapshot(small_fs)
    # bytes: the default min-free-bytes (512 MiB) cannot stay free on a 64 MB filesystem
    big = kit.layer(("big", "file", os.urandom(1 << 20)))
    err = refused(
        cli,
        before,
        kit.docker_legacy(tmp_path / "b.tar", [([big], ["pm-b:1"], None)]),
        5,
        "not enough disk space",
    )
    assert "min-free-bytes" in err
    # inodes: 15000 empty files would leave fewer than 10000 of the 20000
    config.write_text(json.dumps({"image-limits": {"min-free-bytes": 0}}))
    before = store_snapshot(small_fs)
    many = kit.layer(*[(f"f{i}", "file", b"") for i in range(15000)])
    refused(
        cli,
        before,
        kit.docker_legacy(tmp_path / "m.tar", [([many], ["pm-m:1"], None)]),
        5,
        "not enough free inodes",
    )
