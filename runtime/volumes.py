"""Volumes, as Docker's `local` driver keeps them: a directory per volume at
`<root>/volumes/<name>/_data`, its record (`volume.json`) beside it.

`-v` values are parsed here too (`parse_volume`): `HOST:CTR[:MODE]` binds a host path,
`NAME:CTR[:MODE]` mounts a named volume (made when missing), `CTR` alone an anonymous one
(named by 64 random hex digits, removed with its container by `rm -v` and `run --rm`).
`create` resolves them, and the image's VOLUME paths that no `-v` covers, into the
container's mount records (`resolve`). A volume new to this container is filled from the
image's content at its path on the container's first start, as Docker's are (`nocopy`
keeps it empty): `fill_from_image`."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from pyinspect.errors import ConflictError, NotFoundError, UsageError

from .fsutil import atomic_write

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
MODES = {"ro", "rw", "z", "Z", "nocopy"}
RECORD = "volume.json"


def check_name(name: str, context: str) -> None:
    """UsageError (Docker's words after `context`) unless `name` is a volume name."""
    if not NAME_RE.match(name):
        raise UsageError(
            f"{context}: {name!r} includes invalid characters for a local volume name, "
            'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed',
            "give a host directory as an absolute path",
        )


@dataclass(frozen=True)
class VolumeArg:
    """One `-v`, `--mount` or `--tmpfs` value."""

    kind: str  # "bind" | "volume" | "tmpfs"
    source: str  # bind: the host path; volume: its name ("": anonymous); tmpfs: ""
    destination: str
    ro: bool = False
    copy: bool = True  # volume: filled from the image on first use (not with nocopy)
    mode: str = ""  # the -v mode as given (Docker's inspect shows it)
    origin: str = "-v"  # "-v" | "--mount" | "--tmpfs"
    options: str = ""  # tmpfs: the mount's data (size=, mode=, ...)
    flags: tuple[str, ...] = ()  # tmpfs: exec, suid, dev (Docker: noexec, nosuid, nodev)
    labels: tuple[tuple[str, str], ...] = ()  # --mount volume-label: a new volume's labels


def parse_volume(text: str) -> VolumeArg:
    """`HOST:CTR[:MODE]`, `NAME:CTR[:MODE]` or `CTR` (MODE: ro, rw, z, Z, nocopy, joined
    with commas)."""
    parts = text.split(":")
    if len(parts) in (2, 3) and not parts[0]:
        parts = []  # ":/c": neither a source nor the anonymous form
    elif len(parts) == 1:
        parts = ["", parts[0]]
    if len(parts) not in (2, 3) or not parts[1]:
        raise UsageError(f"invalid volume {text!r}: expected [HOST:|NAME:]CONTAINER[:MODE]")
    source, dest = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else ""
    modes = set(mode.split(",")) if mode else set()
    if not modes <= MODES or ({"ro", "rw"} <= modes):
        raise UsageError(f"invalid volume {text!r}: invalid mode {mode!r}", "use ro, rw or nocopy")
    if not dest.startswith("/"):
        raise UsageError(f"invalid volume {text!r}: the container path must be absolute")
    if dest.rstrip("/") == "":
        raise UsageError(f"invalid volume {text!r}: the container path cannot be /")
    if source.startswith("/"):
        if "nocopy" in modes:
            raise UsageError(f"invalid volume {text!r}: nocopy is for volumes, not host paths")
        kind, source = "bind", os.path.normpath(source)
    else:
        if source:
            check_name(source, f"invalid volume {text!r}")
        kind = "volume"
    return VolumeArg(
        kind, source, os.path.normpath(dest), "ro" in modes, "nocopy" not in modes, mode
    )


MOUNT_KEYS = {
    "type", "source", "src", "target", "destination", "dst", "readonly", "ro",
    "volume-nocopy", "volume-label", "bind-propagation", "tmpfs-size", "tmpfs-mode",
}  # fmt: skip
TMPFS_DATA = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks")
TMPFS_FLAGS = ("ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev")


def _flag(text: str, key: str, value: str | None) -> bool:
    """A --mount boolean: bare, or =true/false/1/0."""
    if value is None or value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise UsageError(f"invalid argument {text!r} for --mount: invalid value for {key}: {value!r}")


def parse_mount(text: str) -> VolumeArg:
    """`--mount type=bind|volume|tmpfs,source=,target=[,readonly][,volume-nocopy]
    [,volume-label=K=V][,tmpfs-size=N][,tmpfs-mode=OCTAL]` (type volume by default)."""
    fields: dict[str, str | None] = {}
    labels = []
    for item in text.split(","):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key not in MOUNT_KEYS:
            raise UsageError(
                f"invalid argument {text!r} for --mount: unexpected key {key!r} in {item!r}"
            )
        if key == "volume-label":
            lk, _eq, lv = value.partition("=")
            labels.append((lk, lv))
        fields[key] = value if eq else None
    kind = fields.get("type") or "volume"
    source = fields.get("source") or fields.get("src") or ""
    dest = fields.get("target") or fields.get("destination") or fields.get("dst") or ""
    if not dest:
        raise UsageError(f"invalid argument {text!r} for --mount: target is required")
    if kind not in ("bind", "volume", "tmpfs"):
        raise UsageError(f'invalid mount config for type "{kind}": mount type unknown')
    ro = any(_flag(text, k, fields[k]) for k in ("readonly", "ro") if k in fields)
    if not dest.startswith("/") or os.path.normpath(dest) == "/":
        raise UsageError(f"invalid mount path: {dest!r} mount path must be absolute and not /")
    prop = fields.get("bind-propagation")
    if prop not in (None, "private", "rprivate"):
        raise UsageError(
            f"invalid argument {text!r} for --mount: bind-propagation {prop} is not supported",
            "pyinspect's mounts are rprivate",
        )
    if kind == "bind":
        if not source:
            raise UsageError('invalid mount config for type "bind": field Source must not be empty')
        if not source.startswith("/"):
            raise UsageError(f'invalid mount config for type "bind": {source!r} is not absolute')
        if not os.path.exists(source):
            raise UsageError(
                f'invalid mount config for type "bind": bind source path does not exist: {source}'
            )
        return VolumeArg(
            "bind", os.path.normpath(source), os.path.normpath(dest), ro, origin="--mount"
        )
    if kind == "tmpfs":
        if source:
            raise UsageError(
                'invalid mount config for type "tmpfs": field Source must not be specified'
            )
        data = []
        if fields.get("tmpfs-size"):
            from .cgroups import parse_bytes

            data.append(f"size={parse_bytes(fields['tmpfs-size'] or '', 'tmpfs-size')}")
        if fields.get("tmpfs-mode"):
            mode = fields["tmpfs-mode"] or ""
            if not re.fullmatch(r"[0-7]{1,4}", mode):
                raise UsageError(f"invalid argument {text!r} for --mount: bad tmpfs-mode {mode!r}")
            data.append(f"mode={mode}")
        return VolumeArg(
            "tmpfs", "", os.path.normpath(dest), ro, origin="--mount", options=",".join(data)
        )
    if source:
        check_name(source, f"create {source}")
    nocopy = "volume-nocopy" in fields and _flag(text, "volume-nocopy", fields["volume-nocopy"])
    return VolumeArg(
        "volume",
        source,
        os.path.normpath(dest),
        ro,
        not nocopy,
        origin="--mount",
        labels=tuple(labels),
    )


def parse_tmpfs(text: str) -> VolumeArg:
    """`--tmpfs PATH[:OPTIONS]` (size=, mode=, uid=, gid=, nr_inodes=, nr_blocks= and
    the flags ro, rw, exec, noexec, suid, nosuid, dev, nodev, joined with commas)."""
    dest, _colon, opts = text.partition(":")
    if not dest.startswith("/") or os.path.normpath(dest) == "/":
        raise UsageError(f"invalid mount path: {dest!r} mount path must be absolute and not /")
    data, flags, ro = [], [], False
    for item in opts.split(",") if opts else ():
        key = item.partition("=")[0]
        if item in TMPFS_FLAGS:
            ro = ro or item == "ro"
            flags.append(item)
        elif key in TMPFS_DATA and "=" in item:
            data.append(item)
        else:
            raise UsageError(f"invalid --tmpfs {text!r}: unknown option {item!r}")
    return VolumeArg(
        "tmpfs", "", os.path.normpath(dest), ro, origin="--tmpfs", options=",".join(data),
        flags=tuple(flags), mode=opts,
    )  # fmt: skip


def parse_volumes_from(text: str) -> tuple[str, str | None]:
    """`--volumes-from CONTAINER[:ro|rw]` -> (container, mode or None)."""
    ref, colon, mode = text.partition(":")
    if not ref or (colon and mode not in ("ro", "rw")):
        raise UsageError(f"invalid --volumes-from {text!r}: expected CONTAINER[:ro|rw]")
    return ref, mode or None


def all_args(spec) -> list[VolumeArg]:
    """Every mount `spec` asks for (-v, --mount, --tmpfs); UsageError for a bad one or
    two on one path (Docker's "Duplicate mount point")."""
    args = [parse_volume(v) for v in spec.volumes]
    args += [parse_mount(m) for m in spec.mount]
    args += [parse_tmpfs(t) for t in spec.tmpfs]
    seen = set()
    for a in args:
        if a.destination in seen:
            raise UsageError(f"duplicate mount point: {a.destination}")
        seen.add(a.destination)
    return args


@dataclass
class Volume:
    """A volume's record."""

    name: str
    mountpoint: str
    created_at: str
    labels: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False
    made_by: str = "cli"  # "cli": `volume create` (Docker shows {} labels); "run"

    def document(self) -> dict:
        """`docker volume inspect`'s object."""
        empty: dict | None = {} if self.made_by == "cli" else None
        return {
            "CreatedAt": self.created_at,
            "Driver": "local",
            "Labels": dict(self.labels) if self.labels else empty,
            "Mountpoint": self.mountpoint,
            "Name": self.name,
            "Options": empty,
            "Scope": "local",
        }


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class VolumeStore:
    """The volumes under one pyinspect root."""

    def __init__(self, root: str | os.PathLike):
        self.dir = os.path.join(root, "volumes")

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def create(
        self,
        name: str = "",
        labels: dict[str, str] | None = None,
        made_by: str = "cli",
    ) -> tuple[Volume, bool]:
        """The volume `name` (a new anonymous one when empty), made when missing;
        returns it and whether it is new. An existing one is returned as it is (Docker's)."""
        anonymous = not name
        name = name or os.urandom(32).hex()
        check_name(name, f"create {name}")
        try:
            return self.get(name), False
        except NotFoundError:
            pass
        path = self._path(name)
        os.makedirs(os.path.join(path, "_data"), exist_ok=True)
        vol = Volume(
            name, os.path.join(path, "_data"), _now(), dict(labels or {}), anonymous, made_by
        )
        with atomic_write(os.path.join(path, RECORD), "w") as f:
            json.dump(asdict(vol), f)
        return vol, True

    def get(self, name: str) -> Volume:
        """The volume `name`; NotFoundError when there is none (or its record is unreadable)."""
        if not NAME_RE.match(name or ""):
            raise NotFoundError(f"no such volume: {name}")
        try:
            with open(os.path.join(self._path(name), RECORD)) as f:
                d = json.load(f)
            vol = Volume(
                str(d["name"]),
                str(d["mountpoint"]),
                str(d["created_at"]),
                {str(k): str(v) for k, v in (d.get("labels") or {}).items()},
                bool(d.get("anonymous")),
                str(d.get("made_by") or "cli"),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise NotFoundError(f"no such volume: {name}") from None
        if vol.name != name:
            raise NotFoundError(f"no such volume: {name}")
        return vol

    def list(self) -> list[Volume]:
        """Every volume, by name."""
        try:
            names = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            try:
                out.append(self.get(name))
            except NotFoundError:
                continue  # a half-made one (no record yet), or not ours
        return out

    def remove(self, name: str, users: Sequence[str], force: bool = False) -> Volume | None:
        """Remove volume `name` and its data; ConflictError while containers in `users`
        (their ids) use it. With `force`, a missing volume is no error (None)."""
        try:
            vol = self.get(name)
        except NotFoundError:
            if force:
                return None
            raise
        if users:
            raise ConflictError(
                f"remove {name}: volume is in use - [{', '.join(users)}]",
                "remove the container first",
            )
        path = self._path(name)
        os.unlink(os.path.join(path, RECORD))  # first: a half-removed one is not listed
        shutil.rmtree(path, ignore_errors=True)
        return vol


def mount_record(arg: VolumeArg, vol: Volume | None = None, empty: bool = False) -> dict:
    """What the container's record keeps of one mount (the shim mounts from it); an
    `empty` volume is filled from the image on the container's start (unless nocopy)."""
    if arg.kind == "tmpfs":
        return {
            "type": "tmpfs",
            "source": "",
            "destination": arg.destination,
            "ro": arg.ro,
            "options": arg.options,
            "flags": list(arg.flags),
            "origin": arg.origin,
        }
    if vol is None:
        return {
            "type": "bind",
            "source": arg.source,
            "destination": arg.destination,
            "ro": arg.ro,
            "mode": arg.mode,
            "origin": arg.origin,
        }
    return {
        "type": "volume",
        "name": vol.name,
        "source": vol.mountpoint,
        "destination": arg.destination,
        "ro": arg.ro,
        "mode": arg.mode or ("" if vol.anonymous else "z"),
        "anonymous": vol.anonymous,
        "fill": empty and arg.copy,
        "copy_asked": arg.copy,
        "origin": arg.origin,
    }


def image_volume_args(image_config: dict, taken: set[str]) -> list[VolumeArg]:
    """Anonymous volumes for the image's VOLUME paths not in `taken` (Docker's)."""
    taken = set(taken)
    out = []
    for path in sorted((image_config or {}).get("Volumes") or {}):
        dest = os.path.normpath(path) if str(path).startswith("/") else ""
        if dest and dest != "/" and dest not in taken:
            out.append(VolumeArg("volume", "", dest))
            taken.add(dest)
    return out


def fill_from_image(source_dir: str, mount: dict) -> None:
    """Copy what the image has at the mount's path (`source_dir`, inside the container's
    root, resolved there) into a volume that is still empty: files with their modes,
    owners and times, links as links. Runs in the container's mount namespace before its
    volumes are mounted."""
    data = mount["source"]
    if not mount.get("fill") or not os.path.isdir(source_dir) or os.listdir(data):
        return
    shutil.copytree(source_dir, data, symlinks=True, dirs_exist_ok=True, ignore=_special)
    for path in [data, *_walk(data)]:
        rel = os.path.relpath(path, data)
        src = source_dir if rel == "." else os.path.join(source_dir, rel)
        st = os.lstat(src)
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
        if not os.path.islink(path):
            os.chmod(path, st.st_mode & 0o7777)
    st = os.stat(source_dir)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))


def _special(directory: str, names: list[str]) -> set[str]:
    """Device nodes, fifos and sockets: not copied (a fifo would block the copy)."""
    out = set()
    for n in names:
        mode = os.lstat(os.path.join(directory, n)).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            out.add(n)
    return out


def _walk(top: str):
    for base, dirs, files in os.walk(top):
        for n in dirs + files:
            yield os.path.join(base, n)


def record_mounts(c) -> list[dict]:
    """Container `c`'s mounts: its record's, or (a record made before volumes) its
    `-v` host paths."""
    if c.mounts:
        return list(c.mounts)
    out = []
    for v in c.spec.volumes if c.spec else ():
        try:
            arg = parse_volume(v)
        except UsageError:
            continue
        if arg.kind == "bind":
            out.append(mount_record(arg))
    return out


def users(root: str | os.PathLike, name: str) -> list[str]:
    """The ids of the containers (any state) that mount volume `name`."""
    from . import state

    return [
        c.id
        for c in state.load_all(root)
        if any(m.get("name") == name for m in record_mounts(c) if m.get("type") == "volume")
    ]


def remove_anonymous(root: str | os.PathLike, c) -> list[str]:
    """Remove container `c`'s anonymous volumes that no other container mounts (`rm -v`,
    `run --rm`); returns their names."""
    from . import state

    store = VolumeStore(root)
    anonymous = [
        m["name"] for m in record_mounts(c) if m.get("type") == "volume" and m.get("anonymous")
    ]
    if not anonymous:
        return []
    used = {
        m.get("name")
        for other in state.load_all(root)
        if other.id != c.id
        for m in record_mounts(other)
        if m.get("type") == "volume"
    }  # (one read of the records, not one per volume)
    return [n for n in anonymous if n not in used and store.remove(n, [], force=True)]


@dataclass
class PruneResult:
    """What `volume prune` removed."""

    names: list[str]
    reclaimed: int


def prune(root: str | os.PathLike, labels: tuple[str, ...] = ()) -> PruneResult:
    """Remove every volume no container mounts (Docker 20.10's `volume prune`), those
    carrying all `labels` (KEY or KEY=VALUE) when given."""
    from .fsutil import tree_bytes

    store = VolumeStore(root)
    names, total = [], 0
    for vol in store.list():
        if not all(_has_label(vol, lab) for lab in labels) or users(root, vol.name):
            continue
        size = tree_bytes(vol.mountpoint)
        if store.remove(vol.name, [], force=True):
            names.append(vol.name)
            total += size
    return PruneResult(names, total)


def _has_label(vol: Volume, label: str) -> bool:
    key, eq, value = label.partition("=")
    return key in vol.labels and (not eq or vol.labels[key] == value)


def matches(vol: Volume, filters: list[tuple[str, str]], in_use: bool) -> bool:
    """`volume ls --filter`: dangling=true|false, name=SUBSTRING, label=KEY[=VALUE],
    driver=local."""
    for key, value in filters:
        if key == "dangling":
            if (value.lower() in ("true", "1")) == in_use:
                return False
        elif key == "name":
            if value not in vol.name:
                return False
        elif key == "label":
            if not _has_label(vol, value):
                return False
        elif key == "driver":
            if value != "local":
                return False
    return True


def parse_filters(items: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """KEY=VALUE filters of `volume ls`; UsageError naming a bad one."""
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key not in ("dangling", "name", "label", "driver"):
            raise UsageError(
                f"invalid filter {item!r}", "use dangling=true|false, name=, label= or driver="
            )
        if key == "dangling" and value.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"invalid filter {item!r}: dangling is true or false")
        out.append((key, value))
    return out


def inspect_mounts(mounts: list[dict]) -> list[dict]:
    """`docker inspect`'s Mounts (--tmpfs ones are in HostConfig.Tmpfs only)."""
    return [inspect_mount(m) for m in mounts if m.get("origin") != "--tmpfs"]


def host_config_mounts(mounts: list[dict]) -> list[dict] | None:
    """`docker inspect`'s HostConfig.Mounts: what --mount asked for (None without)."""
    out = []
    for m in mounts:
        if m.get("origin") != "--mount":
            continue
        d = {"Type": m["type"]}
        source = m.get("name") if m["type"] == "volume" and not m.get("anonymous") else None
        source = m["source"] if m["type"] == "bind" else source
        if source:
            d["Source"] = source
        d["Target"] = m["destination"]
        if m.get("ro"):
            d["ReadOnly"] = True
        if m["type"] == "volume" and not m.get("copy_asked", True):
            d["VolumeOptions"] = {"NoCopy": True}
        if m["type"] == "tmpfs" and m.get("options"):
            opts = dict(o.partition("=")[::2] for o in m["options"].split(","))
            tmpfs = {}
            if "size" in opts:
                tmpfs["SizeBytes"] = int(opts["size"])
            if "mode" in opts:
                tmpfs["Mode"] = int(opts["mode"], 8)
            d["TmpfsOptions"] = tmpfs
        out.append(d)
    return out or None


def host_config_tmpfs(spec) -> dict | None:
    """`docker inspect`'s HostConfig.Tmpfs: --tmpfs paths and their options (None without)."""
    out = {}
    for t in spec.tmpfs:
        dest, _colon, opts = t.partition(":")
        out[dest] = opts
    return out or None


def inspect_mount(m: dict) -> dict:
    """One of `docker inspect`'s Mounts."""
    if m.get("type") == "tmpfs":
        return {
            "Type": "tmpfs",
            "Source": "",
            "Destination": m["destination"],
            "Mode": "",
            "RW": not m.get("ro"),
            "Propagation": "",
        }
    if m.get("type") == "volume":
        return {
            "Type": "volume",
            "Name": m["name"],
            "Source": m["source"],
            "Destination": m["destination"],
            "Driver": "local",
            "Mode": m.get("mode", ""),
            "RW": not m.get("ro"),
            "Propagation": "",
        }
    return {
        "Type": "bind",
        "Source": m["source"],
        "Destination": m["destination"],
        "Mode": m.get("mode", "ro" if m.get("ro") else ""),
        "RW": not m.get("ro"),
        "Propagation": "rprivate",
    }


def create_volume(
    root: str | os.PathLike, name: str, labels: tuple[str, ...] | list[str], driver: str
) -> Volume:
    """`volume create`: Docker's checks (the local driver only, names of two characters
    or more), then the volume (an existing one as it is)."""
    if driver != "local":
        raise UsageError(f"create {name}: no such volume driver: {driver}", "use local")
    if name and len(name) < 2:
        raise UsageError(
            f"create {name}: volume name is too short, names should be at least two "
            "alphanumeric characters"
        )
    return VolumeStore(root).create(name, parse_labels(labels))[0]


def parse_labels(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--label KEY=VALUE` (or KEY: an empty value) items."""
    out = {}
    for item in items:
        key, _eq, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid label {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def parse_prune_filters(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`volume prune --filter label=KEY[=VALUE]`: the labels."""
    out = []
    for item in items:
        key, eq, value = item.partition("=")
        if key != "label" or not eq or not value:
            raise UsageError(f"invalid filter {item!r}", "use label=KEY or label=KEY=VALUE")
        out.append(value)
    return tuple(out)


def listing(root: str | os.PathLike, filters: tuple[str, ...] | list[str] = ()) -> list[Volume]:
    """`volume ls`: the volumes that pass `filters` (parse_filters' KEY=VALUE items)."""
    parsed = parse_filters(filters)
    vols = VolumeStore(root).list()
    if not parsed:
        return vols
    from . import state

    used = {
        m.get("name")
        for c in state.load_all(root)
        for m in record_mounts(c)
        if m.get("type") == "volume"
    }
    return [v for v in vols if matches(v, parsed, v.name in used)]


def remove(root: str | os.PathLike, name: str, force: bool = False) -> Volume | None:
    """`volume rm`: volume `name` unless a container (in any state) mounts it."""
    return VolumeStore(root).remove(name, users(root, name), force)
