"""`pull`: a manifest (or index: linux/<host arch>), its config and layers into the store.

Every blob is hashed while it streams: the manifest against the reference's digest and
the registry's Docker-Content-Digest, the config and layers against their descriptors,
the decompressed layers against the config's diff_ids. Layers are staged in the store's
staging area and the image is committed only when all of them passed, so a refused pull
leaves the store as it was. Extraction limits (image_settings.ExtractLimits) apply to
the pulled blobs as to loaded archives.
"""

import hashlib
import json
import shutil
from dataclasses import dataclass, field

from pyinspect.errors import CorruptInputError, NotFoundError

from .. import imagemeta
from ..image_settings import load_settings
from ..layerstream import Budget, decompress_to
from . import credentials
from .client import RegistryAuthError, RegistryClient, RegistryUnavailable
from .reference import DEFAULT_DOMAIN, parse

ACCEPT = (
    imagemeta.MT_OCI_INDEX,
    imagemeta.MT_DOCKER_LIST,
    imagemeta.MT_OCI_MANIFEST,
    imagemeta.MT_DOCKER_MANIFEST,
)
MAX_CONFIG = 16 << 20


@dataclass
class PullResult:
    image: object  # images.Image
    reference: str  # what was pulled, fully qualified as Docker prints it
    digest: str  # the manifest's digest (of the index when there was one)
    downloaded: bool  # False: every layer and the config were already stored
    notes: list = field(default_factory=list)  # what extraction skipped (device nodes)


def _check_digest(raw, expected, what):
    got = "sha256:" + hashlib.sha256(raw).hexdigest()
    if expected and got != expected:
        raise CorruptInputError(
            f"{what}: content digest {got[:19]} does not match {expected[:19]}",
            "the registry sent other bytes than it named; nothing was stored",
        )
    return got


def _json(raw, what):
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise CorruptInputError(f"{what}: not valid JSON: {exc}") from None


def _fetch_manifest(client, ref, target, what, expect=""):
    raw, ctype, header_digest = client.get_manifest(ref.path, target, ACCEPT, what)
    digest = _check_digest(raw, expect, what)
    if header_digest.startswith("sha256:") and header_digest != digest:
        raise CorruptInputError(
            f"{what}: content digest {digest[:19]} does not match the "
            f"registry's Docker-Content-Digest {header_digest[:19]}"
        )
    doc = _json(raw, what)
    if not isinstance(doc, dict):
        raise CorruptInputError(f"{what} is not an object")
    return doc, ctype, digest


def _read_blob(client, ref, desc, limit, what):
    if desc.size > limit:
        raise CorruptInputError(f"{what}: {desc.size} bytes is more than {limit}")
    reader = client.open_blob(ref.path, desc.digest, what)
    try:
        raw = reader.read(desc.size + 1)
    finally:
        reader.close()
    if len(raw) != desc.size:
        raise CorruptInputError(f"{what}: {len(raw)} bytes, its descriptor says {desc.size}")
    _check_digest(raw, desc.digest, what)
    return raw


class _Counting:
    """A blob stream that reports how many bytes went through it."""

    def __init__(self, reader, report, step=1 << 20):
        self.reader, self.report, self.step = reader, report, step
        self.n = self.last = 0

    def read(self, n=1 << 20):
        data = self.reader.read(n)
        self.n += len(data)
        if self.n - self.last >= self.step:
            self.last = self.n
            self.report(self.n)
        return data


def pull(store, ref_str, progress=None) -> PullResult:
    """Pull NAME[:TAG|@DIGEST] into `store`; `progress(id12, status, current, total)`.

    Docker Hub images go through the configured registry-mirrors first, in order; a
    mirror that is down, refuses or lacks the image passes to the next, then to docker.io.
    """
    ref = parse(ref_str)
    settings = load_settings(store.root)
    if ref.domain == DEFAULT_DOMAIN:
        for scheme, host in settings.registry_mirrors:
            try:
                with RegistryClient(
                    host, credentials.get(host), settings.insecure_registries, scheme=scheme
                ) as client:
                    return _pull_from(client, store, ref, settings, progress)
            except (RegistryUnavailable, NotFoundError, RegistryAuthError):
                continue
    with RegistryClient(
        ref.domain, credentials.get(ref.domain), settings.insecure_registries
    ) as client:
        return _pull_from(client, store, ref, settings, progress)


def _pull_from(client, store, ref, settings, progress) -> PullResult:
    """The pull itself, through `client` (the image's registry or a mirror of it)."""

    def say(layer, status, current=None, total=None):
        if progress:
            progress(layer, status, current, total)

    where = f"pulling {ref}"
    try:
        doc, ctype, top_digest = _fetch_manifest(
            client, ref, ref.target, f"{where}: manifest", ref.digest
        )
    except NotFoundError as exc:
        detail = exc.message.rsplit(": ", 1)[-1]
        raise NotFoundError(
            f"{where}: no such repository or tag ({detail})",
            "check the name; pyinspect login first if it is private",
        ) from None
    declared = doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else ctype
    if imagemeta.is_index(doc, declared if declared in imagemeta.INDEX_TYPES else ""):
        descs = imagemeta.index(doc, f"{where}: index")
        pick = imagemeta.pick_platform(descs, imagemeta.host_arch(), f"{where}: index")
        doc, ctype, _ = _fetch_manifest(
            client, ref, pick.digest, f"{where}: manifest {pick.digest[:19]}", pick.digest
        )
    man = imagemeta.manifest(doc, f"{where}: manifest", ctype)
    cfg_what = f"{where}: config {man.config.digest[:19]}"
    config_bytes = _read_blob(client, ref, man.config, MAX_CONFIG, cfg_what)
    diff_ids = imagemeta.image_config(_json(config_bytes, cfg_what), cfg_what)
    if len(diff_ids) != len(man.layers):
        raise CorruptInputError(
            f"{where}: the manifest lists {len(man.layers)} layers, "
            f"the config {len(diff_ids)} diff_ids"
        )
    budget = Budget(
        settings.limits,
        sum(d.size for d in man.layers) + len(config_bytes),
        store.dir if store.dir.exists() else store.root,
    )
    staging = store._new_staging()
    downloaded = not (store.configs / f"{man.config.hex}.json").exists()
    try:
        staged = set()
        fetched = []
        notes: list[str] = []
        for i, (desc, diff_id) in enumerate(zip(man.layers, diff_ids, strict=True)):
            diff_hex = diff_id[7:]
            short = desc.hex[:12]
            if diff_hex in staged or (store.layers / diff_hex).exists():
                say(short, "Already exists")
                continue
            downloaded = True
            lwhat = f"{where}: layer {i + 1} ({desc.digest[:19]})"
            say(short, "Pulling fs layer", 0, desc.size)
            blob = staging / f"{diff_hex}.tar"
            reader = client.open_blob(ref.path, desc.digest, lwhat)
            try:
                counted = _Counting(
                    reader, lambda n, s=short, t=desc.size: say(s, "Downloading", n, t)
                )
                raw_hex, plain_hex, raw_size = decompress_to(
                    counted, blob, lwhat, budget, max_input=desc.size
                )
            finally:
                reader.close()
            say(short, "Verifying Checksum", desc.size, desc.size)
            if raw_size != desc.size:
                raise CorruptInputError(
                    f"{lwhat}: {raw_size} bytes, its descriptor says {desc.size}"
                )
            if raw_hex != desc.hex:
                raise CorruptInputError(
                    f"{lwhat}: content digest sha256:{raw_hex[:12]} "
                    f"does not match sha256:{desc.hex[:12]}",
                    "the registry sent other bytes than it named; nothing was stored",
                )
            if plain_hex != diff_hex:
                raise CorruptInputError(
                    f"{lwhat}: uncompressed digest sha256:"
                    f"{plain_hex[:12]} does not match the config's "
                    f"diff_id sha256:{diff_hex[:12]}"
                )
            say(short, "Extracting")
            try:
                store._stage_layer(staging, blob, diff_hex, budget=budget, notes=notes)
            except CorruptInputError as exc:
                raise CorruptInputError(f"{lwhat}: {exc.message}", exc.hint) from None
            staged.add(diff_hex)
            fetched.append(
                (
                    diff_id,
                    desc.digest,
                    desc.size,
                    desc.media_type or imagemeta.MT_DOCKER_LAYER,
                    f"{ref.domain}/{ref.path}",
                )
            )
            say(short, "Pull complete")
        names = [ref.tagged] if ref.tag else []
        digests = [f"{ref.familiar}@{top_digest}"]
        image = store._commit(staging, [(config_bytes, names)], digests=digests)[0]
        store.add_blob_digests(fetched)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shown = (
        str(ref)
        if ref.domain != "docker.io"
        else f"docker.io/{ref.path}"
        + (f":{ref.tag}" if ref.tag else "")
        + (f"@{ref.digest}" if ref.digest else "")
    )
    return PullResult(
        image=image, reference=shown, digest=top_digest, downloaded=downloaded, notes=notes
    )
