"""login/logout/pull/push against a real registry (Debian's docker-registry on 127.0.0.1
with a bcrypt htpasswd file), skopeo both ways, and every bad input with the store unchanged.
"""

import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest
import requests

from conftest import Cli, have
from helpers import imagekit as kit
from helpers.registryd import PASSWORD, USER, Registry, store_snapshot

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (have("docker-registry") and have("htpasswd")),
        reason="docker-registry and htpasswd (make install)",
    ),
]

BASE = kit.layer(("etc", "dir"), ("etc/pm-base", "file", b"base layer\n"))
TOP = kit.layer(("app", "dir"), ("app/data", "file", os.urandom(5000)))


@pytest.fixture
def registry(tmp_path):
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.close()


@pytest.fixture
def dconf(tmp_path):
    """A Docker config directory of the test's own (DOCKER_CONFIG)."""
    d = tmp_path / "docker-config"
    return d


class RCli(Cli):
    """The CLI with DOCKER_CONFIG pointing at the test's own directory."""

    def __init__(self, root, dconf, netns=None):
        super().__init__(root, netns)
        self.dconf = dconf

    def __call__(self, *args, env=None, **kw):
        return super().__call__(*args, env={"DOCKER_CONFIG": str(self.dconf), **(env or {})}, **kw)


@pytest.fixture
def rcli(state_root, dconf):
    return RCli(state_root, dconf)


def one_line_error(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("Error: ") and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in err, err


def login(cli, host, password=PASSWORD):
    return cli("login", "-u", USER, "--password-stdin", host, input=password + "\n", check=False)


def skopeo(*args):
    return subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=120, check=False
    )


def creds_args(prefix):
    return [f"--{prefix}tls-verify=false", f"--{prefix}creds", f"{USER}:{PASSWORD}"]


def test_login_wrong_password_then_right_one(rcli, registry, dconf):
    one_line_error(login(rcli, registry.host, "wrong"), 1, "incorrect username or password")
    assert not (dconf / "config.json").exists()
    proc = login(rcli, registry.host)
    assert proc.returncode == 0 and proc.stdout.strip() == "Login Succeeded", proc.stderr
    cfg = dconf / "config.json"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    auth = json.loads(cfg.read_text())["auths"][registry.host]["auth"]
    import base64

    assert base64.b64decode(auth).decode() == f"{USER}:{PASSWORD}"
    # Docker's own key for Docker Hub, and other keys of the file, are kept untouched
    data = json.loads(cfg.read_text())
    data["pm-unknown-key"] = {"kept": True}
    cfg.write_text(json.dumps(data))
    assert (
        rcli("logout", registry.host).stdout.strip()
        == f"Removing login credentials for {registry.host}"
    )
    data = json.loads(cfg.read_text())
    assert data["auths"] == {} and data["pm-unknown-key"] == {"kept": True}
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert rcli("logout", registry.host).stdout.strip() == f"Not logged in to {registry.host}"


def test_push_skopeo_inspect_pull_and_run(rcli, registry, tmp_path, dconf):
    assert login(rcli, registry.host).returncode == 0
    name = f"{registry.host}/pm/app:v1"
    arc = kit.docker_legacy(tmp_path / "a.tar", [([BASE, TOP], [name], None)])
    rcli("load", "-i", arc)
    out = rcli("push", name).stdout.splitlines()
    assert out[0] == f"The push refers to repository [{registry.host}/pm/app]"
    assert sum(line.endswith(": Pushed") for line in out) == 2, out
    digest = out[-1].split()[2]
    assert out[-1].startswith("v1: digest: sha256:") and out[-1].split()[-2] == "size:"
    # skopeo reads what pyinspect pushed
    info = skopeo("inspect", *creds_args(""), f"docker://{name}")
    assert info.returncode == 0, info.stderr
    info = json.loads(info.stdout)
    assert info["Digest"] == digest and len(info["Layers"]) == 2
    raw = json.loads(skopeo("inspect", "--raw", *creds_args(""), f"docker://{name}").stdout)
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    cfg = json.loads(skopeo("inspect", "--config", *creds_args(""), f"docker://{name}").stdout)
    assert cfg["rootfs"]["diff_ids"] == [f"sha256:{kit.sha(BASE)}", f"sha256:{kit.sha(TOP)}"]
    # a second push sends no blob again (HEAD first)
    again = rcli("push", name).stdout
    assert again.count("Layer already exists") == 2 and "Pushed" not in again
    assert again.splitlines()[-1].split()[2] == digest
    # to another repository of the same registry: mounted from the first, not sent again
    rcli("tag", name, f"{registry.host}/pm/app-copy:v1")
    mounted = rcli("push", f"{registry.host}/pm/app-copy:v1").stdout
    assert mounted.count("Mounted from pm/app") == 2 and "Pushed" not in mounted, mounted
    assert mounted.splitlines()[-1].split()[2] == digest
    # pull into another store: the same image id, tags and RepoDigests
    other = RCli(tmp_path / "other", dconf)
    pulled = other("pull", name).stdout.splitlines()
    assert pulled[0] == "v1: Pulling from pm/app"
    assert f"Digest: {digest}" in pulled and pulled[-1] == name
    assert f"Status: Downloaded newer image for {name}" in pulled
    image_id = f"sha256:{kit.sha(kit.config([BASE, TOP]))}"
    (ins,) = json.loads(other("inspect", name).stdout)
    assert ins["Id"] == image_id and ins["RepoTags"] == [name]
    assert ins["RepoDigests"] == [f"{registry.host}/pm/app@{digest}"]
    table = other("images", "--digests").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "DIGEST", "IMAGE", "ID", "CREATED", "SIZE"]
    assert table[1].split()[:4] == [f"{registry.host}/pm/app", "v1", digest, image_id[7:19]]
    (row,) = json.loads(other("images", "--format", "json").stdout)
    assert row["Digest"] == digest
    assert f"Status: Image is up to date for {name}" in other("pull", name).stdout
    # by digest, then run by digest
    by_digest = f"{registry.host}/pm/app@{digest}"
    third = RCli(tmp_path / "third", dconf)
    assert third("pull", "-q", by_digest).stdout.strip() == by_digest
    (ins,) = json.loads(third("inspect", by_digest).stdout)
    assert ins["Id"] == image_id and ins["RepoTags"] == []


def test_run_pulls_a_missing_image(rcli, registry, tmp_path, dconf):
    assert login(rcli, registry.host).returncode == 0
    name = f"{registry.host}/pm/busybox:run"
    rcli("tag", "busybox", name)
    rcli("push", name)
    fresh = RCli(tmp_path / "fresh", dconf)
    never = fresh("run", "--rm", "--net", "none", name, "true", check=False)  # the suite's
    assert never.returncode == 3 and "no such image" in never.stderr  # PYINSPECT_PULL=never
    proc = fresh(
        "run",
        "--rm",
        "--net",
        "none",
        name,
        "sh",
        "-c",
        "echo pm-pulled-$((6*7))",
        env={"PYINSPECT_PULL": "missing"},
    )
    assert proc.stdout == "pm-pulled-42\n"
    assert f"Unable to find image '{name}' locally" in proc.stderr
    assert "Pull complete" in proc.stderr
    assert fresh("images", "--format", "json").stdout.count(f"{registry.host}/pm/busybox") == 1


def test_chunked_upload_and_pull_back(rcli, registry, tmp_path, dconf):
    assert login(rcli, registry.host).returncode == 0
    big = kit.layer(("blob", "file", os.urandom(300_000)))
    name = f"{registry.host}/pm/chunks:1"
    rcli("load", "-i", kit.docker_legacy(tmp_path / "c.tar", [([big], [name], None)]))
    rcli("push", "--chunk-size", "65536", name)
    other = RCli(tmp_path / "other", dconf)
    other("pull", name)
    (ins,) = json.loads(other("inspect", name).stdout)
    assert ins["RootFS"]["Layers"] == [f"sha256:{kit.sha(big)}"]


def test_skopeo_copy_in_then_pull_and_run(rcli, registry, tmp_path, state_root):
    if not have("skopeo"):
        pytest.skip("skopeo (make install)")
    rcli("save", "-o", tmp_path / "bb.tar", "busybox")
    assert login(rcli, registry.host).returncode == 0
    dest = f"{registry.host}/pm/skopeo-v2s2:1"
    cp = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"{USER}:{PASSWORD}",
        "--format",
        "v2s2",
        f"docker-archive:{tmp_path / 'bb.tar'}",
        f"docker://{dest}",
    )
    assert cp.returncode == 0, cp.stderr
    fresh = RCli(tmp_path / "fresh", rcli.dconf)
    fresh("pull", dest)
    proc = fresh("run", "--rm", "--net", "none", dest, "sh", "-c", "echo pm-skopeo")
    assert proc.stdout == "pm-skopeo\n"
    (a,) = json.loads(fresh("inspect", dest).stdout)
    (b,) = json.loads(rcli("inspect", "busybox").stdout)
    assert a["RootFS"] == b["RootFS"] and a["Id"] == b["Id"]


def test_skopeo_zstd_oci_image_pulled(rcli, registry, tmp_path):
    """An OCI image with zstd layers (skopeo compresses them into an OCI layout, then
    copies that to the registry; fresh content, so skopeo's blob cache has no gzip twin)."""
    if not have("skopeo"):
        pytest.skip("skopeo (make install)")
    layers = [kit.layer(("z", "dir"), ("z/data", "file", os.urandom(20000) + b"\0" * 50000))]
    name = f"{registry.host}/pm/zstd:1"
    rcli("load", "-i", kit.docker_legacy(tmp_path / "z.tar", [(layers, ["pm-z:1"], None)]))
    rcli("save", "-o", tmp_path / "z-saved.tar", "pm-z:1")
    oci = tmp_path / "oci-zstd"
    cp = skopeo(
        "copy",
        "--dest-compress-format",
        "zstd",
        "--dest-compress",
        f"docker-archive:{tmp_path / 'z-saved.tar'}",
        f"oci:{oci}:1",
    )
    assert cp.returncode == 0, cp.stderr
    cp = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        f"{USER}:{PASSWORD}",
        f"oci:{oci}:1",
        f"docker://{name}",
    )
    assert cp.returncode == 0, cp.stderr
    raw = json.loads(skopeo("inspect", "--raw", *creds_args(""), f"docker://{name}").stdout)
    assert raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert login(rcli, registry.host).returncode == 0
    other = RCli(tmp_path / "other", rcli.dconf)
    other("pull", name)
    (ins,) = json.loads(other("inspect", name).stdout)
    assert ins["RootFS"]["Layers"] == [f"sha256:{kit.sha(layers[0])}"]  # skopeo rewrote the
    # config as an OCI one: the id differs, the layers may not
    # pushed back under another tag: the zstd blob it was pulled as is found (HEAD), not
    # recompressed, and the manifest is an OCI one (Docker's schema 2 cannot name zstd)
    again = f"{registry.host}/pm/zstd:2"
    other("tag", name, again)
    out = other("push", again).stdout
    assert "Layer already exists" in out and "Preparing" not in out and "Pushed" not in out
    raw2 = json.loads(skopeo("inspect", "--raw", *creds_args(""), f"docker://{again}").stdout)
    assert raw2["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert raw2["layers"] == [dict(raw["layers"][0], mediaType=raw2["layers"][0]["mediaType"])]
    assert raw2["layers"][0]["mediaType"].endswith("+zstd")
    # the same OCI layout (zstd layers) loads directly too
    third = RCli(tmp_path / "third", rcli.dconf)
    third("load", "-i", oci)
    (ins,) = json.loads(third("inspect", ins["Id"]).stdout)
    assert ins["RootFS"]["Layers"] == [f"sha256:{kit.sha(layers[0])}"]


def test_index_picks_linux_amd64(rcli, registry, tmp_path, dconf):
    """A Docker manifest list and an OCI index naming an s390x image first and the amd64
    one second: pull takes the amd64 one; an index without it is one line."""
    assert login(rcli, registry.host).returncode == 0
    other = kit.layer(("s390x", "file", b"not for this machine"))
    repo = f"{registry.host}/pm/multi"
    rcli(
        "load",
        "-i",
        kit.docker_legacy(
            tmp_path / "m.tar",
            [
                ([BASE, TOP], [f"{repo}:amd64"], None),
                (
                    [other],
                    [f"{repo}:s390x"],
                    json.dumps(
                        dict(json.loads(kit.config([other])), architecture="s390x")
                    ).encode(),
                ),
            ],
        ),
    )
    desc = {}
    for arch in ("s390x", "amd64"):
        line = rcli("push", f"{repo}:{arch}").stdout.splitlines()[-1].split()
        desc[arch] = {
            "digest": line[2],
            "size": int(line[4]),
            "platform": {"architecture": arch, "os": "linux"},
        }
    for kind, mt, mmt in (
        (
            "list",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
        (
            "index",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ):
        doc = {
            "schemaVersion": 2,
            "mediaType": mt,
            "manifests": [{"mediaType": mmt, **desc["s390x"]}, {"mediaType": mmt, **desc["amd64"]}],
        }
        body = json.dumps(doc).encode()
        r = requests.put(
            f"http://{registry.host}/v2/pm/multi/manifests/{kind}",
            data=body,
            auth=(USER, PASSWORD),
            headers={"Content-Type": mt},
        )
        assert r.status_code == 201, r.text
        fresh = RCli(tmp_path / f"fresh-{kind}", dconf)
        out = fresh("pull", f"{repo}:{kind}").stdout
        assert f"Digest: sha256:{hashlib.sha256(body).hexdigest()}" in out
        (ins,) = json.loads(fresh("inspect", f"{repo}:{kind}").stdout)
        assert ins["Id"] == f"sha256:{kit.sha(kit.config([BASE, TOP]))}", kind
    # an index without linux/amd64
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    **desc["s390x"],
                }
            ],
        }
    )
    r = requests.put(
        f"http://{registry.host}/v2/pm/multi/manifests/s390x-only",
        data=body,
        auth=(USER, PASSWORD),
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert r.status_code == 201, r.text
    fresh = RCli(tmp_path / "fresh-none", dconf)
    proc = fresh("pull", f"{repo}:s390x-only", check=False)
    one_line_error(proc, 2, "no image for linux/amd64", "linux/s390x")
    assert not (tmp_path / "fresh-none" / "images" / "configs").exists() or not os.listdir(
        tmp_path / "fresh-none" / "images" / "configs"
    )


def _seeded(rcli, tmp_path):
    """A store holding one image, and its snapshot."""
    rcli("load", "-i", kit.docker_legacy(tmp_path / "seed.tar", [([BASE], ["pm-seed:1"], None)]))
    return store_snapshot(rcli.root)


def test_bad_pulls_are_one_line_and_leave_the_store_unchanged(rcli, registry, tmp_path, dconf):
    assert login(rcli, registry.host).returncode == 0
    name = f"{registry.host}/pm/victim:1"
    pusher = RCli(tmp_path / "pusher", dconf)
    pusher("load", "-i", kit.docker_legacy(tmp_path / "v.tar", [([BASE, TOP], [name], None)]))
    pushed = pusher("push", name).stdout
    before = _seeded(rcli, tmp_path)

    # missing repository / tag
    one_line_error(rcli("pull", f"{registry.host}/pm/nosuch:1", check=False), 3, "unknown")
    one_line_error(rcli("pull", f"{registry.host}/pm/victim:nosuch", check=False), 3)
    assert store_snapshot(rcli.root) == before
    # wrong password stored
    cfg = json.loads((dconf / "config.json").read_text())
    good = cfg["auths"][registry.host]["auth"]
    import base64

    cfg["auths"][registry.host]["auth"] = base64.b64encode(f"{USER}:nope".encode()).decode()
    (dconf / "config.json").write_text(json.dumps(cfg))
    one_line_error(rcli("pull", name, check=False), 1, "incorrect username or password")
    # no credentials at all
    one_line_error(
        rcli("pull", name, check=False, env={"DOCKER_CONFIG": str(tmp_path / "x")}),
        1,
        "authentication required",
        "pyinspect login",
    )
    cfg["auths"][registry.host]["auth"] = good
    (dconf / "config.json").write_text(json.dumps(cfg))
    assert store_snapshot(rcli.root) == before
    # a tampered blob: the registry serves other bytes than the digest it names
    layer_digest = [line.split(":")[0] for line in pushed.splitlines() if line.endswith(": Pushed")]
    raw = json.loads(
        requests.get(
            f"http://{registry.host}/v2/pm/victim/manifests/1",
            auth=(USER, PASSWORD),
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        ).content
    )
    top_layer = raw["layers"][1]["digest"]
    assert top_layer[7:19] in layer_digest
    path = registry.blob_path(top_layer)
    original = path.read_bytes()
    # the same layer compressed with another gzip header: only the blob digest can tell
    same_content = gzip.compress(TOP, compresslevel=6, mtime=12345)  # push uses level 6
    assert len(same_content) == len(original) and same_content != original
    path.write_bytes(same_content)
    one_line_error(
        rcli("pull", name, check=False), 2, "does not match", f"sha256:{top_layer[7:19]}"
    )
    assert store_snapshot(rcli.root) == before
    # bytes that are not even the layer
    tampered = gzip.compress(
        kit.layer(("app", "dir"), ("app/data", "file", b"evil" * 1250)), mtime=0
    )
    path.write_bytes(tampered[: len(original)].ljust(len(original), b"\0"))
    one_line_error(rcli("pull", name, check=False), 2, "does not match")
    assert store_snapshot(rcli.root) == before
    path.write_bytes(original)
    # registry down
    registry.close()
    one_line_error(rcli("pull", name, check=False), 5, "cannot connect", "refused")
    one_line_error(
        rcli("push", f"{registry.host}/pm/untagged:1", check=False), 3, "no image has this tag"
    )
    rcli("tag", "pm-seed:1", name)
    before = store_snapshot(rcli.root)
    one_line_error(rcli("push", name, check=False), 5, "cannot connect")
    one_line_error(login(rcli, registry.host), 5, "cannot connect")
    assert store_snapshot(rcli.root) == before


def _upload(host, repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    r = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/", auth=(USER, PASSWORD))
    loc = r.headers["Location"]
    loc = loc if loc.startswith("http") else f"http://{host}{loc}"
    r = requests.put(
        loc,
        params={"digest": d},
        data=data,
        auth=(USER, PASSWORD),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    return {"digest": d, "size": len(data)}


@pytest.mark.parametrize(
    "case",
    [
        "env-not-list",
        "cmd-number",
        "labels-list",
        "rootfs-str",
        "diff-id-bad",
        "diff-ids-count",
        "config-not-object",
    ],
)
def test_malformed_pulled_config_is_refused(rcli, registry, tmp_path, case):
    """The registry does not check a config's fields: pyinspect does, in one line."""
    layer = gzip.compress(BASE, mtime=0)
    cfg = json.loads(kit.config([BASE]))
    if case == "env-not-list":
        cfg["config"]["Env"] = "PATH=/bin"
    elif case == "cmd-number":
        cfg["config"]["Cmd"] = [1]
    elif case == "labels-list":
        cfg["config"]["Labels"] = ["x"]
    elif case == "rootfs-str":
        cfg["rootfs"] = "layers"
    elif case == "diff-id-bad":
        cfg["rootfs"]["diff_ids"] = ["sha256:xyz"]
    elif case == "diff-ids-count":
        cfg["rootfs"]["diff_ids"] *= 2
    elif case == "config-not-object":
        cfg["config"] = "str"
    cfg_bytes = json.dumps(cfg).encode()
    repo = "pm/malformed"
    man = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            **_upload(registry.host, repo, cfg_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                **_upload(registry.host, repo, layer),
            }
        ],
    }
    r = requests.put(
        f"http://{registry.host}/v2/{repo}/manifests/{case}",
        data=json.dumps(man),
        auth=(USER, PASSWORD),
        headers={"Content-Type": man["mediaType"]},
    )
    assert r.status_code == 201, r.text
    assert login(rcli, registry.host).returncode == 0
    before = _seeded(rcli, tmp_path)
    one_line_error(rcli("pull", f"{registry.host}/{repo}:{case}", check=False), 2, "config")
    assert store_snapshot(rcli.root) == before


def test_reference_rules():
    from pyinspect.runtime.registry.reference import parse

    r = parse("busybox")
    assert (r.domain, r.path, r.tag, r.familiar) == (
        "docker.io",
        "library/busybox",
        "latest",
        "busybox",
    )
    assert parse("docker.io/library/busybox:1").tagged == "busybox:1"
    assert parse("index.docker.io/user/app").familiar == "user/app"
    r = parse("localhost:5000/team/app:v2")
    assert (r.domain, r.path, r.tag) == ("localhost:5000", "team/app", "v2")
    assert parse("localhost/app").domain == "localhost"
    assert parse("registry.lan/app").domain == "registry.lan"
    assert parse("user/app").domain == "docker.io"
    d = "sha256:" + "a" * 64
    r = parse(f"127.0.0.1:5000/app@{d}")
    assert (r.tag, r.digest, r.target) == ("", d, d)
    from pyinspect.errors import UsageError

    for bad in ("UPPER/app", "app:", "app@sha256:12", "a//b", " app", "app:bad tag"):
        with pytest.raises(UsageError):
            parse(bad)


def test_plain_http_only_for_loopback_or_listed():
    from pyinspect.runtime.registry.client import is_insecure, parse_challenge

    assert is_insecure("127.0.0.1:5000") and is_insecure("localhost:5000")
    assert is_insecure("[::1]:5000") and is_insecure("127.3.4.5")
    assert not is_insecure("registry.lan:5000") and not is_insecure("10.1.2.3:5000")
    assert is_insecure("registry.lan:5000", ("registry.lan:5000",))
    assert is_insecure("10.1.2.3:5000", ("10.0.0.0/8",))
    assert parse_challenge(
        'Bearer realm="https://auth/token",service="reg",scope="repository:a/b:pull,push"'
    ) == (
        "bearer",
        {"realm": "https://auth/token", "service": "reg", "scope": "repository:a/b:pull,push"},
    )
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


@pytest.fixture
def token_registry(tmp_path):
    from helpers.tokenauth import TokenService

    (tmp_path / "treg").mkdir()
    tokens = TokenService(tmp_path / "treg", USER, PASSWORD)
    try:
        reg = Registry(tmp_path / "treg", token=tokens.config())
    except BaseException:
        tokens.close()
        raise
    yield reg, tokens
    reg.close()
    tokens.close()


def test_bearer_token_challenge(rcli, token_registry, tmp_path, dconf):
    """A registry that answers 401 with `Bearer realm=...,service=...`: tokens per scope."""
    reg, tokens = token_registry
    www = requests.get(f"http://{reg.host}/v2/").headers["WWW-Authenticate"]
    assert www.startswith("Bearer realm=")
    one_line_error(login(rcli, reg.host, "wrong"), 1, "incorrect username or password")
    assert login(rcli, reg.host).returncode == 0
    name = f"{reg.host}/pm/bearer:1"
    rcli("load", "-i", kit.docker_legacy(tmp_path / "b.tar", [([BASE, TOP], [name], None)]))
    rcli("push", name)
    assert any("scope=repository%3Apm%2Fbearer%3Apull%2Cpush" in p for p in tokens.requests)
    rcli("tag", name, f"{reg.host}/pm/bearer-copy:1")  # a mount asks for both scopes
    assert rcli("push", f"{reg.host}/pm/bearer-copy:1").stdout.count("Mounted from") == 2
    assert any(
        "scope=repository%3Apm%2Fbearer-copy%3Apull%2Cpush&scope=repository%3Apm%2F"
        "bearer%3Apull" in p
        for p in tokens.requests
    ), tokens.requests
    other = RCli(tmp_path / "other", dconf)
    other("pull", name)
    assert any(
        p.endswith("scope=repository%3Apm%2Fbearer%3Apull&account=" + USER)
        or "scope=repository%3Apm%2Fbearer%3Apull&" in p
        for p in tokens.requests
    )
    (ins,) = json.loads(other("inspect", name).stdout)
    assert ins["Id"] == f"sha256:{kit.sha(kit.config([BASE, TOP]))}"
    if have("skopeo"):
        info = skopeo("inspect", *creds_args(""), f"docker://{name}")
        assert info.returncode == 0, info.stderr
    before = store_snapshot(tmp_path / "third")
    one_line_error(
        RCli(tmp_path / "third", tmp_path / "nocreds")("pull", name, check=False),
        1,
        "credentials needed",
    )
    assert store_snapshot(tmp_path / "third") == before


def test_progress_per_layer_on_a_terminal(rcli, registry, tmp_path, dconf):
    """On a terminal each layer has one line, redrawn in place with a bar and bytes; off a
    terminal (the other tests) only the changes of state are printed."""
    import pty
    import select

    assert login(rcli, registry.host).returncode == 0
    name = f"{registry.host}/pm/progress:1"
    big = kit.layer(("blob", "file", os.urandom(3 << 20)))
    rcli("load", "-i", kit.docker_legacy(tmp_path / "p.tar", [([BASE, big], [name], None)]))
    rcli("push", name)
    other = RCli(tmp_path / "other", dconf)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        other.argv("pull", name),
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "DOCKER_CONFIG": str(dconf)},
    )
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=30) == 0, out
    text = out.decode()
    assert "\x1b[" in text and "Downloading [" in text and "MB/3." in text, text
    assert text.count("Pulling fs layer") == 2
    assert text.count("Pull complete") == 2


def test_https_unless_loopback_or_listed_insecure(make_netns, tmp_path, dconf):
    """A registry on a non-loopback address (10.254.7.1 on the lo of a netns of the test's
    own) gets HTTPS with verification only: a plain-HTTP one and one with a self-signed
    certificate are refused in one line until insecure-registries lists the address."""
    ns = make_netns("pr")
    ns.sh("ip addr add 10.254.7.1/32 dev lo")
    cli = RCli(tmp_path / "root", dconf, netns=ns.name)
    cfg = tmp_path / "root" / "config.json"
    cfg.parent.mkdir()
    plain = Registry(tmp_path / "plain", auth=False, netns=ns, ip="10.254.7.1")
    try:
        host = plain.host
        one_line_error(
            cli("pull", f"{host}/pm/x:1", check=False), 5, "TLS failed", "insecure-registries"
        )
        cfg.write_text(json.dumps({"insecure-registries": ["10.254.0.0/16"]}))
        one_line_error(
            cli("pull", f"{host}/pm/x:1", check=False), 3, "no such repository or tag"
        )  # spoke HTTP to it
        cfg.unlink()
    finally:
        plain.close()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=10.254.7.1",
            "-addext",
            "subjectAltName=IP:10.254.7.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    tls = Registry(tmp_path / "tls", auth=False, netns=ns, ip="10.254.7.1", tls=(cert, key))
    try:
        one_line_error(
            cli("pull", f"{host}/pm/x:1", check=False), 5, "TLS failed", "certificate verify failed"
        )
        cfg.write_text(json.dumps({"insecure-registries": [host]}))
        one_line_error(
            cli("pull", f"{host}/pm/x:1", check=False), 3, "no such repository or tag"
        )  # HTTPS, certificate not verified
    finally:
        tls.close()


def test_credentials_file_forms(tmp_path, monkeypatch):
    """Docker's keys: docker.io under https://index.docker.io/v1/, others by host:port;
    `auth` (base64 user:password) or username/password fields; a broken file is one line."""
    from pyinspect.errors import CorruptInputError
    from pyinspect.runtime.registry import credentials
    from pyinspect.runtime.registry.reference import registry_key

    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    assert (
        registry_key("docker.io")
        == registry_key("index.docker.io")
        == "https://index.docker.io/v1/"
    )
    assert registry_key("localhost:5000") == "localhost:5000"
    assert credentials.get("docker.io") is None
    path = credentials.store("docker.io", credentials.Credentials("u", "p:w"))
    assert (
        json.loads(path.read_text())["auths"]["https://index.docker.io/v1/"]["auth"] == "dTpwOnc="
    )
    assert credentials.get("registry-1.docker.io") == credentials.Credentials("u", "p:w")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text(json.dumps({"auths": {"r.lan:5000": {"username": "a", "password": "b"}}}))
    assert credentials.get("r.lan:5000") == credentials.Credentials("a", "b")
    for broken in ("{", '{"auths": []}', '{"auths": {"r.lan:5000": {"auth": "%%%"}}}'):
        path.write_text(broken)
        with pytest.raises(CorruptInputError) as err:
            credentials.get("r.lan:5000")
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_pull_notes_device_nodes_skipped_without_mknod(tmp_path):
    """Pulled in a user namespace (mknod refused): the nodes are skipped with a note."""
    if not have("unshare"):
        pytest.skip("unshare")
    reg = Registry(tmp_path / "open", auth=False)
    try:
        name = f"{reg.host}/pm/devices:1"
        devs = kit.layer(
            ("dev", "dir"),
            ("dev/pm-null", "chr"),
            ("dev/pm-blk", "blk"),
            ("etc", "dir"),
            ("etc/pm", "file", b"x"),
        )
        pusher = Cli(tmp_path / "pusher")
        pusher("load", "-i", kit.docker_legacy(tmp_path / "d.tar", [([devs], [name], None)]))
        pusher("push", name)
        root = tmp_path / "userns-root"
        proc = subprocess.run(
            ["unshare", "-Ur", *Cli(root).argv("pull", name)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        notes = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
        assert len(notes) == 1 and "skipped 2 device node(s)" in notes[0], proc.stderr
        (ins,) = json.loads(Cli(root)("inspect", name).stdout)
        layer = ins["GraphDriver"]["Data"]["LowerDirs"][0]
        assert os.path.isfile(os.path.join(layer, "etc/pm"))
        assert not os.path.lexists(os.path.join(layer, "dev/pm-null"))
    finally:
        reg.close()


def test_registry_mirror_serves_docker_hub_names(tmp_path, dconf):
    """`registry-mirrors` in the root's config.json: `pull pm-mirrored:1` (a Docker Hub
    name) and `run` of a missing Hub image go to the mirror first (here a registry on
    127.0.0.1 holding library/pm-mirrored), and the image is stored under its Hub name.
    A mirror that is down is passed over (the first one here)."""
    reg = Registry(tmp_path / "mirror", auth=False)
    try:
        seed = RCli(tmp_path / "seed", dconf)
        seed("tag", "busybox", f"{reg.host}/library/pm-mirrored:1")
        seed("push", f"{reg.host}/library/pm-mirrored:1")
        cli = RCli(tmp_path / "root", dconf)
        (tmp_path / "root").mkdir()
        (tmp_path / "root" / "config.json").write_text(
            json.dumps({"registry-mirrors": ["http://127.0.0.1:9", f"http://{reg.host}/"]})
        )
        out = cli("pull", "pm-mirrored:1").stdout.splitlines()
        assert out[0] == "1: Pulling from library/pm-mirrored"
        assert out[-1] == "docker.io/library/pm-mirrored:1"
        (ins,) = json.loads(cli("inspect", "pm-mirrored:1").stdout)
        assert ins["RepoTags"] == ["pm-mirrored:1"]
        assert ins["RepoDigests"][0].startswith("pm-mirrored@sha256:")
        cli("rmi", "pm-mirrored:1")
        proc = cli(
            "run",
            "--rm",
            "--net",
            "none",
            "pm-mirrored:1",
            "echo",
            "via-mirror",
            env={"PYINSPECT_PULL": "missing"},
        )
        assert proc.stdout == "via-mirror\n"
        (tmp_path / "root" / "config.json").write_text(
            json.dumps({"registry-mirrors": ["ftp://x"]})
        )
        one_line_error(cli("pull", "pm-mirrored:1", check=False), 2, "ftp://x")
    finally:
        reg.close()


def test_push_all_tags(rcli, registry, tmp_path, dconf):
    assert login(rcli, registry.host).returncode == 0
    repo = f"{registry.host}/pm/alltags"
    rcli(
        "load",
        "-i",
        kit.docker_legacy(
            tmp_path / "a.tar", [([BASE], [f"{repo}:1"], None), ([TOP], [f"{repo}:2"], None)]
        ),
    )
    rcli("tag", f"{repo}:1", f"{registry.host}/pm/other:1")  # another repository: not pushed
    out = rcli("push", "--all-tags", repo).stdout.splitlines()
    assert [line.split(":")[0] for line in out if ": digest: " in line] == ["1", "2"]
    r = requests.get(f"http://{registry.host}/v2/pm/alltags/tags/list", auth=(USER, PASSWORD))
    assert sorted(r.json()["tags"]) == ["1", "2"]
    r = requests.get(f"http://{registry.host}/v2/pm/other/tags/list", auth=(USER, PASSWORD))
    assert r.status_code == 404
    one_line_error(rcli("push", "-a", f"{repo}:1", check=False), 2, "without a tag")
    one_line_error(
        rcli("push", "-a", f"{registry.host}/pm/none", check=False), 3, "no image has a tag"
    )


def test_credential_helper(rcli, registry, tmp_path, dconf):
    """credsStore names a helper as Docker's config does: login stores through it (the
    file keeps an empty auths entry), pull gets from it, logout erases. The helper is a
    small program of the test's own speaking the docker-credential protocol."""
    bindir, vault = tmp_path / "bin", tmp_path / "vault.json"
    bindir.mkdir()
    helper = bindir / "docker-credential-pmtest"
    helper.write_text(f"""#!{sys.executable}
import json, sys
path = {str(vault)!r}
try:
    vault = json.load(open(path))
except OSError:
    vault = {{}}
action, data = sys.argv[1], sys.stdin.read()
if action == "store":
    d = json.loads(data)
    vault[d["ServerURL"]] = [d["Username"], d["Secret"]]
elif action == "get":
    if data.strip() not in vault:
        print("credentials not found in native keychain")
        sys.exit(1)
    user, secret = vault[data.strip()]
    print(json.dumps({{"ServerURL": data.strip(), "Username": user, "Secret": secret}}))
elif action == "erase":
    vault.pop(data.strip(), None)
json.dump(vault, open(path, "w"))
""")
    helper.chmod(0o755)
    dconf.mkdir()
    (dconf / "config.json").write_text(json.dumps({"auths": {}, "credsStore": "pmtest"}))
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    proc = rcli("login", "-u", USER, "--password-stdin", registry.host, input=PASSWORD, env=env)
    assert proc.stdout.strip() == "Login Succeeded"
    assert json.loads(vault.read_text()) == {registry.host: [USER, PASSWORD]}
    assert json.loads((dconf / "config.json").read_text())["auths"] == {registry.host: {}}
    name = f"{registry.host}/pm/helper:1"
    rcli("tag", "busybox", name)
    rcli("push", name, env=env)
    assert rcli("logout", registry.host, env=env).returncode == 0
    assert json.loads(vault.read_text()) == {}
    one_line_error(rcli("pull", name, check=False, env=env), 1, "authentication required")
    one_line_error(rcli("pull", name, check=False), 5, "docker-credential-pmtest", "not installed")


def test_search_lists_a_registrys_repositories(rcli, registry, dconf, make_netns):
    """`search HOST/TEXT` reads the Distribution registry's catalog (it has no search
    API, where `docker search` fails): the repositories whose names hold TEXT, Docker's
    table, --format, --limit and --filter; without credentials the registry's refusal
    is one line. Docker Hub out of reach (a netns with no route) is one line too."""
    assert login(rcli, registry.host).returncode == 0
    host = registry.host
    for name in ("pm-search-web", "pm-search-api", "pm-other"):
        rcli("tag", "busybox", f"{host}/{name}:1")
        rcli("push", f"{host}/{name}:1")
    out = rcli("search", f"{host}/pm-search").stdout.splitlines()
    assert out[0].split() == ["NAME", "DESCRIPTION", "STARS", "OFFICIAL", "AUTOMATED"]
    assert [line.split() for line in out[1:]] == [
        [f"{host}/pm-search-api", "0"],
        [f"{host}/pm-search-web", "0"],
    ]
    one = rcli("search", "--format", "{{.Name}} {{.StarCount}}", "--limit", "1", f"{host}/SEARCH")
    assert one.stdout == f"{host}/pm-search-api 0\n"  # (case-insensitive; the catalog's order)
    none = rcli("search", "--filter", "stars=1", f"{host}/pm").stdout.splitlines()
    assert [line.split() for line in none] == [out[0].split()]  # the header alone
    unofficial = rcli("search", "--filter", "is-official=false", f"{host}/pm").stdout
    assert len(unofficial.splitlines()) == 4  # the header and all three
    for args, code, word in (
        (("--limit", "0", f"{host}/pm"), 2, "--limit"),
        (("--filter", "pm-bogus=1", f"{host}/pm"), 2, "pm-bogus"),
        (("--filter", "stars=many", f"{host}/pm"), 2, "stars=many"),
        ((f"{host}/",), 2, "nothing to search for"),
    ):
        one_line_error(rcli("search", *args, check=False), code, word)
    rcli("logout", host)
    proc = rcli("search", f"{host}/pm", check=False)
    assert proc.returncode != 0 and "unauthorized" in proc.stderr and proc.stdout == "", proc
    offline = RCli(rcli.root, dconf, netns=make_netns("pm-srch").name)
    proc = offline("search", "busybox", check=False)
    one_line_error(proc, 5, "cannot connect")
