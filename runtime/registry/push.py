"""`push`: a stored image to a registry as a Docker v2 schema 2 manifest.

Layers are gzip'd (mtime 0, so the same layer gives the same blob) into the staging
area, HEAD tells which blobs the registry has already (not sent again), the others are
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


@dataclass
class PushResult:
    reference: str
    tag: str
    digest: str
    size: int          # of the manifest, as Docker prints it


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
        with open(src_path, "rb") as fin, gzip.GzipFile(filename="", mode="wb", fileobj=hw,
                                                        mtime=0) as gz:
            shutil.copyfileobj(fin, gz, 1 << 20)
    return f"sha256:{hw.h.hexdigest()}", hw.size


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
        with RegistryClient(ref.domain, credentials.get(ref.domain),
                            settings.insecure_registries) as client:
            blobs = {}   # diff_id -> (digest, size, path)
            for d in image.diff_ids:
                if d in blobs:
                    continue
                src = store.blobs / d[7:]
                if not src.exists():
                    raise NotFoundError(f"{where}: layer {d[:19]} is missing from the store",
                                        "rmi the image and load or pull it again")
                out = staging / f"{d[7:]}.tar.gz"
                digest, size = compress_layer(src, out)
                say(digest[7:19], "Preparing")
                blobs[d] = (digest, size, out)
            for digest, size, path in blobs.values():
                short = digest[7:19]
                lwhat = f"{where}: layer {digest[:19]}"
                if client.blob_exists(ref.path, digest, lwhat):
                    say(short, "Layer already exists")
                    continue
                say(short, "Pushing", 0, size)
                with open(path, "rb") as f:
                    client.upload_blob(ref.path, digest, f, size, lwhat, chunk_size=chunk_size,
                                       progress=lambda n, s=short, t=size: say(s, "Pushing", n, t))
                say(short, "Pushed")
            cfg_bytes = (store.configs / f"{image.id[7:]}.json").read_bytes()
            cwhat = f"{where}: config {image.id[:19]}"
            if not client.blob_exists(ref.path, image.id, cwhat):
                import io
                client.upload_blob(ref.path, image.id, io.BytesIO(cfg_bytes), len(cfg_bytes),
                                   cwhat)
            manifest = {
                "schemaVersion": 2, "mediaType": imagemeta.MT_DOCKER_MANIFEST,
                "config": {"mediaType": imagemeta.MT_DOCKER_CONFIG, "size": len(cfg_bytes),
                           "digest": image.id},
                "layers": [{"mediaType": imagemeta.MT_DOCKER_LAYER, "size": blobs[d][1],
                            "digest": blobs[d][0]} for d in image.diff_ids]}
            body = json.dumps(manifest, indent=3).encode()
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            client.put_manifest(ref.path, ref.tag, body, imagemeta.MT_DOCKER_MANIFEST,
                                f"{where}: manifest")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    store.add_repo_digest(f"{ref.familiar}@{digest}", image.id)
    return PushResult(reference=str(ref), tag=ref.tag, digest=digest, size=len(body))
