"""`push`: a stored image to a registry as a Docker v2 schema 2 manifest.

A layer pulled or pushed before as some blob (the store's blob-digests.json) is first
looked for under that digest (HEAD), or mounted from the repository of the same registry
it was seen in (cross-repository mount): then it is neither compressed nor sent. Others are
gzip'd (mtime 0, so the same layer gives the same blob) into the staging area, HEAD tells
which blobs the registry has already (not sent again), the others are
uploaded monolithically (one PUT) or, past `chunk_size`, in PATCH chunks and a closing
PUT. The config goes byte for byte (its digest is the image id), the manifest last.
"""

import gzip
import hashlib
import json
import shutil
from dataclasses import dataclass

from pyinspect.errors import NotFoundError, UsageError

from .. import imagemeta
from ..image_settings import load_settings
from . import credentials
from .client import RegistryClient
from .reference import parse

CHUNK_SIZE = 16 << 20
GZIP_LEVEL = 6  # Go's (and so Docker's) default: level 9 costs twice the time for ~1%
_DOCKER_TYPES = {
    "gzip": imagemeta.MT_DOCKER_LAYER,
    "tar": "application/vnd.docker.image.rootfs.diff.tar",
}
_OCI_TYPES = {
    "gzip": imagemeta.MT_OCI_LAYER + "+gzip",
    "zstd": imagemeta.MT_OCI_LAYER + "+zstd",
    "tar": imagemeta.MT_OCI_LAYER,
}


def _kind(media_type):
    """'gzip', 'zstd' or 'tar' for a layer media type ('' for one push cannot name)."""
    if media_type.endswith("+zstd"):
        return "zstd"
    if media_type.endswith("gzip"):
        return "gzip"
    if media_type.endswith(".tar") or media_type.endswith(".diff.tar"):
        return "tar"
    return ""


@dataclass
class PushResult:
    reference: str
    tag: str
    digest: str
    size: int  # of the manifest, as Docker prints it


class _HashingWriter:
    def __init__(self, f):
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, data):
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def compress_layer(src_path, out_path):
    """gzip a layer tar deterministically; ('sha256:<hex>', size) of the result."""
    with open(out_path, "wb") as raw:
        hw = _HashingWriter(raw)
        with (
            open(src_path, "rb") as fin,
            gzip.GzipFile(
                filename="", mode="wb", fileobj=hw, mtime=0, compresslevel=GZIP_LEVEL
            ) as gz,
        ):
            shutil.copyfileobj(fin, gz, 1 << 20)
    return f"sha256:{hw.h.hexdigest()}", hw.size


def tags_of(store, name) -> list:
    """Every name:tag the store has in repository `name` (given without tag), sorted."""
    ref = parse(name)
    if ref.digest or ":" in name.rsplit("/", 1)[-1]:
        raise UsageError(f"push --all-tags {name!r}: give the repository without a tag")
    found = sorted(t for t in store._tags() if t.rsplit(":", 1)[0] == ref.familiar)
    if not found:
        raise NotFoundError(
            f"push --all-tags {name!r}: no image has a tag in this repository",
            f"pyinspect tag IMAGE {ref.familiar}:TAG",
        )
    return found


def push(store, ref_str, progress=None, chunk_size=CHUNK_SIZE) -> PushResult:
    """Push NAME[:TAG] (an image the store has under that name); `progress` as for pull."""

    def say(layer, status, current=None, total=None):
        if progress:
            progress(layer, status, current, total)

    ref = parse(ref_str)
    if ref.digest:
        raise UsageError(f"push {ref_str!r}: give NAME[:TAG], not a digest")
    image = store.by_tag(ref.tagged)
    where = f"pushing {ref}"
    settings = load_settings(store.root)
    staging = store._new_staging()
    try:
        with RegistryClient(
            ref.domain, credentials.get(ref.domain), settings.insecure_registries
        ) as client:
            blobs = {}  # diff_id -> (digest, size, kind)
            learned = []
            here = f"{ref.domain}/{ref.path}"
            for d in image.diff_ids:
                if d in blobs:
                    continue
                src = store.blobs / d[7:]
                if not src.exists():
                    raise NotFoundError(
                        f"{where}: layer {d[:19]} is missing from the store",
                        "rmi the image and load or pull it again",
                    )
                for known in store.blob_digests(d):  # pulled or pushed before as this blob
                    kind = _kind(known["mediaType"])
                    kd = known["digest"]
                    if not kind:
                        continue
                    if client.blob_exists(ref.path, kd, f"{where}: layer {kd[:19]}"):
                        blobs[d] = (kd, known["size"], kind)
                        say(kd[7:19], "Layer already exists")
                        break
                    domain, _, repo = str(known.get("source", "")).partition("/")
                    if (
                        domain == ref.domain
                        and repo
                        and repo != ref.path
                        and client.mount_blob(ref.path, kd, repo, f"{where}: layer {kd[:19]}")
                    ):
                        blobs[d] = (kd, known["size"], kind)
                        learned.append((d, kd, known["size"], known["mediaType"], here))
                        say(kd[7:19], f"Mounted from {repo}")
                        break
                if d in blobs:
                    continue
                out = staging / f"{d[7:]}.tar.gz"
                digest, size = compress_layer(src, out)
                short = digest[7:19]
                say(short, "Preparing")
                blobs[d] = (digest, size, "gzip")
                learned.append((d, digest, size, imagemeta.MT_DOCKER_LAYER, here))
                lwhat = f"{where}: layer {digest[:19]}"
                if client.blob_exists(ref.path, digest, lwhat):
                    say(short, "Layer already exists")
                    continue
                say(short, "Pushing", 0, size)
                with open(out, "rb") as f:
                    client.upload_blob(
                        ref.path,
                        digest,
                        f,
                        size,
                        lwhat,
                        chunk_size=chunk_size,
                        progress=lambda n, s=short, t=size: say(s, "Pushing", n, t),
                    )
                say(short, "Pushed")
            store.add_blob_digests(learned)
            cfg_bytes = (store.configs / f"{image.id[7:]}.json").read_bytes()
            cwhat = f"{where}: config {image.id[:19]}"
            if not client.blob_exists(ref.path, image.id, cwhat):
                import io

                client.upload_blob(ref.path, image.id, io.BytesIO(cfg_bytes), len(cfg_bytes), cwhat)
            # Docker v2 schema 2, unless a reused blob is zstd (only OCI manifests name it)
            oci = any(kind == "zstd" for _, _, kind in blobs.values())
            types = _OCI_TYPES if oci else _DOCKER_TYPES
            manifest_type = imagemeta.MT_OCI_MANIFEST if oci else imagemeta.MT_DOCKER_MANIFEST
            manifest = {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": {
                    "mediaType": imagemeta.MT_OCI_CONFIG if oci else imagemeta.MT_DOCKER_CONFIG,
                    "size": len(cfg_bytes),
                    "digest": image.id,
                },
                "layers": [
                    {"mediaType": types[blobs[d][2]], "size": blobs[d][1], "digest": blobs[d][0]}
                    for d in image.diff_ids
                ],
            }
            body = json.dumps(manifest, indent=3).encode()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            client.put_manifest(ref.path, ref.tag, body, manifest_type, f"{where}: manifest")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    store.add_repo_digest(f"{ref.familiar}@{digest}", image.id)
    return PushResult(reference=str(ref), tag=ref.tag, digest=digest, size=len(body))
