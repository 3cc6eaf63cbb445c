"""Validation of image metadata from archives and registries: every field, one-line errors.

OCI image index / Docker manifest list, OCI image manifest / Docker v2 schema 2 manifest,
descriptors, the image config and docker-save's manifest.json. Each check returns the
typed value it vouches for and raises CorruptInputError naming the file and the field,
so code after it never meets a list where it expects an object.
"""

import re
from dataclasses import dataclass, field

from pyinspect.errors import CorruptInputError

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MT_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
LAYER_TYPES = (
    MT_DOCKER_LAYER,
    "application/vnd.docker.image.rootfs.diff.tar",
    MT_OCI_LAYER,
    MT_OCI_LAYER + "+gzip",
    MT_OCI_LAYER + "+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_MEDIA_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/"
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)


@dataclass
class Descriptor:
    media_type: str
    digest: str  # sha256:<hex>
    size: int
    annotations: dict = field(default_factory=dict)
    platform: dict = field(default_factory=dict)

    @property
    def hex(self):
        return self.digest[7:]


@dataclass
class Manifest:
    media_type: str
    config: Descriptor
    layers: list  # [Descriptor]


def _type(value, kind, where):
    names = {dict: "an object", list: "a list", str: "a string", int: "a number"}
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise CorruptInputError(f"{where} is not {names[kind]}")
    return value


def _str_map(value, where):
    _type(value, dict, where)
    for k, v in value.items():
        if not isinstance(v, str):
            raise CorruptInputError(f"{where}[{k!r}] is not a string")
    return value


def _str_list(value, where, allow_null=True):
    if value is None and allow_null:
        return []
    _type(value, list, where)
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise CorruptInputError(f"{where}[{i}] is not a string")
    return value


def digest(value, where):
    """A 'sha256:<64 hex>' digest; other algorithms are refused by name."""
    if isinstance(value, str) and _DIGEST.match(value):
        return value
    if isinstance(value, str) and _ANY_DIGEST.match(value):
        raise CorruptInputError(
            f"{where}: unsupported digest algorithm {value.split(':', 1)[0]!r} (only sha256)"
        )
    raise CorruptInputError(f"{where}: malformed digest {value!r}"[:300])


def media_type(value, where, required=False):
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not _MEDIA_TYPE.match(value):
        raise CorruptInputError(f"{where}: malformed mediaType {value!r}"[:300])
    return value


def platform(value, where):
    if value is None:
        return {}
    _type(value, dict, where)
    for key in ("architecture", "os"):
        if key not in value:
            raise CorruptInputError(f"{where} has no {key!r}")
    for key in ("architecture", "os", "variant", "os.version"):
        if key in value:
            _type(value[key], str, f"{where}.{key}")
    if "os.features" in value:
        _str_list(value["os.features"], f"{where}.os.features", allow_null=False)
    if "features" in value:
        _str_list(value["features"], f"{where}.features", allow_null=False)
    return value


def descriptor(value, where, need_type=False) -> Descriptor:
    """A content descriptor {mediaType, digest, size, annotations?, platform?, urls?}."""
    _type(value, dict, where)
    mt = media_type(value.get("mediaType"), f"{where}.mediaType", required=need_type)
    d = digest(value.get("digest"), f"{where}.digest")
    if "size" not in value:
        raise CorruptInputError(f"{where} has no 'size'")
    size = _type(value["size"], int, f"{where}.size")
    if size < 0:
        raise CorruptInputError(f"{where}.size is negative")
    ann = _str_map(value.get("annotations") or {}, f"{where}.annotations")
    plat = platform(value.get("platform"), f"{where}.platform")
    if value.get("urls") is not None:
        _str_list(value["urls"], f"{where}.urls")
    return Descriptor(media_type=mt, digest=d, size=size, annotations=ann, platform=plat)


def _schema2(doc, where):
    if "schemaVersion" not in doc:
        raise CorruptInputError(f"{where} has no schemaVersion")
    sv = _type(doc["schemaVersion"], int, f"{where}.schemaVersion")
    if sv != 2:
        raise CorruptInputError(
            f"{where}: schemaVersion {sv} is not supported (only 2)",
            "Docker schema 1 images must be converted (skopeo copy)",
        )


def is_index(doc, declared_type=""):
    """Whether a manifest document (already known to be an object) is an index/list."""
    mt = declared_type or (doc.get("mediaType") if isinstance(doc.get("mediaType"), str) else "")
    if mt in INDEX_TYPES:
        return True
    return not mt and "manifests" in doc and "layers" not in doc


def index(doc, where) -> list:
    """[Descriptor] of an OCI image index or Docker manifest list."""
    _type(doc, dict, where)
    _schema2(doc, where)
    media_type(doc.get("mediaType"), f"{where}.mediaType")
    if "annotations" in doc:
        _str_map(doc["annotations"] or {}, f"{where}.annotations")
    manifests = _type(doc.get("manifests"), list, f"{where}.manifests")
    if not manifests:
        raise CorruptInputError(f"{where}: manifests list is empty")
    return [descriptor(m, f"{where}.manifests[{i}]") for i, m in enumerate(manifests)]


def manifest(doc, where, declared_type="") -> Manifest:
    """An OCI image manifest or Docker v2 schema 2 manifest."""
    _type(doc, dict, where)
    mt = media_type(doc.get("mediaType"), f"{where}.mediaType")
    mt = mt or declared_type
    if mt in MT_SCHEMA1:
        raise CorruptInputError(
            f"{where}: Docker schema 1 manifests are not supported",
            "convert the image (skopeo copy) or push it with a newer Docker",
        )
    _schema2(doc, where)
    if mt and mt not in MANIFEST_TYPES:
        raise CorruptInputError(f"{where}: unsupported manifest mediaType {mt!r}")
    if "annotations" in doc:
        _str_map(doc["annotations"] or {}, f"{where}.annotations")
    if "config" not in doc:
        raise CorruptInputError(f"{where} has no config")
    config = descriptor(doc["config"], f"{where}.config")
    layers_raw = _type(doc.get("layers"), list, f"{where}.layers")
    layers = []
    for i, raw in enumerate(layers_raw):
        d = descriptor(raw, f"{where}.layers[{i}]")
        if d.media_type == MT_DOCKER_FOREIGN or "foreign" in d.media_type:
            raise CorruptInputError(
                f"{where}.layers[{i}]: foreign (Windows) layers are not supported"
            )
        if d.media_type and d.media_type not in LAYER_TYPES:
            raise CorruptInputError(
                f"{where}.layers[{i}]: unsupported layer mediaType {d.media_type!r}"
            )
        layers.append(d)
    return Manifest(media_type=mt, config=config, layers=layers)


def host_arch():
    """The machine's architecture in OCI/Go terms (amd64, arm64, ...)."""
    import os

    m = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(m, m)


def pick_platform(descs, arch, where, os_name="linux"):
    """The descriptor for os/arch among an index's entries (Docker's choice), else error."""
    for d in descs:
        p = d.platform
        if p.get("os") == os_name and p.get("architecture") == arch:
            return d
    if all(not d.platform for d in descs):
        return descs[0]  # an index without platforms (single-image OCI layouts)
    have = ", ".join(
        sorted(
            {
                f"{d.platform.get('os')}/{d.platform.get('architecture')}"
                for d in descs
                if d.platform
            }
        )
    )
    raise CorruptInputError(f"{where}: no image for {os_name}/{arch} (it has {have})")


_CONFIG_LISTS = ("Env", "Cmd", "Entrypoint", "Shell", "OnBuild")
_CONFIG_STRS = ("User", "WorkingDir", "StopSignal", "Hostname", "Domainname", "Image")
_CONFIG_MAPS = ("ExposedPorts", "Volumes")


def image_config(doc, where) -> list:
    """Validate an image config; returns its rootfs.diff_ids."""
    _type(doc, dict, where)
    for key in ("architecture", "os", "created", "author", "variant", "os.version"):
        if doc.get(key) is not None:
            _type(doc[key], str, f"{where}.{key}")
    cfg = doc.get("config")
    if cfg is not None:
        _type(cfg, dict, f"{where}.config")
        for key in _CONFIG_LISTS:
            if cfg.get(key) is not None:
                _str_list(cfg[key], f"{where}.config.{key}")
        for key in _CONFIG_STRS:
            if cfg.get(key) is not None:
                _type(cfg[key], str, f"{where}.config.{key}")
        for key in _CONFIG_MAPS:
            if cfg.get(key) is not None:
                _type(cfg[key], dict, f"{where}.config.{key}")
        if cfg.get("Labels") is not None:
            _str_map(cfg["Labels"], f"{where}.config.Labels")
        if cfg.get("Healthcheck") is not None:
            _type(cfg["Healthcheck"], dict, f"{where}.config.Healthcheck")
        for i, item in enumerate(cfg.get("Env") or []):
            if "=" not in item and item.strip() == "":
                raise CorruptInputError(f"{where}.config.Env[{i}] is empty")
    rootfs = doc.get("rootfs")
    _type(rootfs, dict, f"{where}.rootfs")
    if rootfs.get("type") != "layers":
        raise CorruptInputError(f"{where}: rootfs.type is not 'layers'")
    diff_ids = _type(rootfs.get("diff_ids"), list, f"{where}.rootfs.diff_ids")
    for i, d in enumerate(diff_ids):
        digest(d, f"{where}.rootfs.diff_ids[{i}]")
    if doc.get("history") is not None:
        hist = _type(doc["history"], list, f"{where}.history")
        for i, h in enumerate(hist):
            _type(h, dict, f"{where}.history[{i}]")
            for key in ("created", "created_by", "author", "comment"):
                if h.get(key) is not None:
                    _type(h[key], str, f"{where}.history[{i}].{key}")
            if "empty_layer" in h and not isinstance(h["empty_layer"], bool):
                raise CorruptInputError(f"{where}.history[{i}].empty_layer is not a boolean")
    return diff_ids


@dataclass
class SaveEntry:
    """One entry of docker-save's manifest.json."""

    config: str
    repo_tags: list
    layers: list


def save_manifest(doc, where="manifest.json") -> list:
    """[SaveEntry] of docker-save's manifest.json."""
    _type(doc, list, where)
    if not doc:
        raise CorruptInputError(f"{where} is an empty list")
    out = []
    for i, entry in enumerate(doc):
        w = f"{where}[{i}]"
        _type(entry, dict, w)
        config = _type(entry.get("Config"), str, f"{w}.Config")
        tags = _str_list(entry.get("RepoTags"), f"{w}.RepoTags")
        layers = _str_list(entry.get("Layers"), f"{w}.Layers", allow_null=False)
        if entry.get("LayerSources") is not None:
            _type(entry["LayerSources"], dict, f"{w}.LayerSources")
        out.append(SaveEntry(config=config, repo_tags=tags, layers=layers))
    return out
