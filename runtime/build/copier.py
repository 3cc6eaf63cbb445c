"""COPY and ADD: find the sources, digest them for the cache, and move them as a tar stream.

The sending side resolves the sources (exact paths or Docker globs) under a root: the
build context on the host (never leaving it, `.dockerignore` applied) or `/` of a
chrooted `--from` stage or image. It writes one tar stream whose first member `meta`
(JSON) says how many sources there are; then `d/<path>` members are the contents of a
directory source, `f/<name>` a file or symlink source, `x/<name>` a local archive
that ADD unpacks. The receiving side runs chrooted in the step's new upper dir and
places them the way Docker does (a directory source's contents into the destination,
a file into a destination directory when it ends with `/` or is one), owned by 0:0
or `--chown`. Content digests leave out modification times, so touching a file does
not invalidate the cache, as in Docker.
"""

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass

from pyinspect.errors import UsageError

from .patterns import IgnoreRules, has_magic, to_regex

_ARCHIVE_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


@dataclass
class Source:
    """One resolved source: its path under the root and whether it is a directory."""

    rel: str  # '/'-separated, relative to the root ('' is the root itself)
    path: str  # the path to read
    is_dir: bool


def _outside(msg):
    return UsageError(msg)


def resolve(
    root: str, patterns: Sequence[str], ignore: IgnoreRules | None = None, in_context: bool = True
) -> list[Source]:
    """The Sources the patterns name under `root`; UsageError for a missing source or
    (in the context) one outside it."""
    root = os.path.realpath(root)
    out = []
    for pattern in patterns:
        norm = os.path.normpath(pattern.lstrip("/") or ".")
        if norm == ".." or norm.startswith("../"):
            if in_context:
                raise _outside(f"{pattern}: outside the build context")
            norm = os.path.normpath("/" + norm).lstrip("/") or "."
        rel = "" if norm in (".", "/") else norm.lstrip("/")
        if has_magic(rel):
            rx = to_regex(rel)
            found = []
            for top, dirs, files in os.walk(root):
                dirs.sort()
                for name in sorted(dirs + files):
                    p = os.path.join(top, name)
                    r = os.path.relpath(p, root)
                    if rx.match(r) and not (ignore and ignore.excluded(r)):
                        found.append(r)
            if not found:
                raise UsageError(f"{pattern}: no source files were specified (nothing matches)")
            rels = found
        else:
            rels = [rel]
        for r in rels:
            path = os.path.join(root, r) if r else root
            if ignore and r and ignore.excluded(r):
                raise UsageError(
                    f"{pattern}: no such file or directory in the build context "
                    f"(.dockerignore excludes it)"
                )
            if not os.path.lexists(path):
                where = "the build context" if in_context else "the source image"
                raise UsageError(f"{pattern}: no such file or directory in {where}")
            real = os.path.realpath(path)
            if in_context and real != root and not real.startswith(root + os.sep):
                raise _outside(f"{pattern}: outside the build context (a symlink leads out)")
            out.append(
                Source(
                    rel=r, path=real if os.path.isdir(real) else path, is_dir=os.path.isdir(real)
                )
            )
    return out


def _walk(src, ignore):
    """(relative name inside the source, path) of a directory source's entries, sorted;
    `.dockerignore` applies to their context paths."""
    base = src.path
    for top, dirs, files in os.walk(base):
        dirs.sort()
        keep = []
        for name in dirs:
            rel_ctx = os.path.normpath(
                os.path.join(src.rel, os.path.relpath(os.path.join(top, name), base))
            )
            if ignore and ignore.excluded(rel_ctx) and not ignore.has_exceptions:
                continue
            keep.append(name)
        dirs[:] = keep
        for name in sorted(dirs + files):
            p = os.path.join(top, name)
            inner = os.path.relpath(p, base)
            rel_ctx = os.path.normpath(os.path.join(src.rel, inner))
            if ignore and ignore.excluded(rel_ctx):
                continue
            yield inner, p


def is_archive(path: str) -> bool:
    """True for a local file ADD unpacks: a tar, maybe gzip/bzip2/xz compressed."""
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return False
    if any(head.startswith(m) for m in _ARCHIVE_MAGIC):
        try:
            with tarfile.open(path, "r:*") as tf:
                tf.next()
            return True
        except (tarfile.TarError, EOFError, OSError):
            return False
    return tarfile.is_tarfile(path) if os.path.isfile(path) else False


def _entries(sources, ignore, unpack):
    """(member name, path) in stream order."""
    for src in sources:
        if src.is_dir:
            yield "d", src.path
            for inner, p in _walk(src, ignore):
                yield f"d/{inner}", p
        else:
            base = os.path.basename(src.rel) or os.path.basename(src.path)
            kind = "x" if unpack and not os.path.islink(src.path) and is_archive(src.path) else "f"
            yield f"{kind}/{base}", src.path


def digest(sources: list[Source], ignore: IgnoreRules | None = None, unpack: bool = False) -> str:
    """sha256 over the sources' names, types, modes, link targets and contents."""
    h = hashlib.sha256()
    for name, p in _entries(sources, ignore, unpack):
        st = os.lstat(p)
        h.update(
            f"{name}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode(
                "utf-8", "surrogateescape"
            )
        )
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(p).encode("utf-8", "surrogateescape"))
        elif stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\1")
    return h.hexdigest()


def send(
    sources: list[Source], out, ignore: IgnoreRules | None = None, unpack: bool = False
) -> None:
    """Write the tar stream for `sources` to the binary file `out`."""
    meta = json.dumps({"n": len(sources)}).encode()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("meta")
        ti.size = len(meta)
        tf.addfile(ti, io.BytesIO(meta))
        for name, p in _entries(sources, ignore, unpack):
            st = os.lstat(p)
            ti = tarfile.TarInfo(name)
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif stat.S_ISLNK(st.st_mode):
                ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(p)
                tf.addfile(ti)
            elif stat.S_ISREG(st.st_mode):
                ti.size = st.st_size
                with open(p, "rb") as f:
                    tf.addfile(ti, f)
            # devices, fifos, sockets: not copied (as docker cp)


# ---- the receiving side (runs chrooted in the step's rootfs) -------------------------------


def _lookup(path, name, want_id):
    """uid/gid of `name` in the image's /etc/passwd or /etc/group (numeric passes)."""
    if name.isdigit():
        return int(name)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) > 3 and fields[0] == name:
                    return int(fields[2]) if want_id == "id" else int(fields[3])
    except (OSError, ValueError):
        pass
    raise UsageError(
        f"--chown: unable to find {'user' if 'passwd' in path else 'group'} {name!r} in the image"
    )


def parse_chown(text: str | None) -> tuple[int, int]:
    """(uid, gid) for a --chown value, read in the current (chrooted) root."""
    if not text:
        return 0, 0
    user, _, group = text.partition(":")
    uid = _lookup("/etc/passwd", user, "id")
    if group:
        gid = _lookup("/etc/group", group, "id")
    elif user.isdigit():
        gid = uid
    else:
        gid = _lookup("/etc/passwd", user, "gid")
    return uid, gid


def _place(tf, m, target, uid, gid, chmod):
    parent = os.path.dirname(target)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    if os.path.lexists(target):
        if os.path.isdir(target) and not os.path.islink(target):
            if not m.isdir():
                raise UsageError(f"cannot replace the directory {target} with a file")
        else:
            os.unlink(target)
    if m.isdir():
        if not os.path.isdir(target):
            os.mkdir(target, 0o755)
    elif m.issym():
        os.symlink(m.linkname, target)
        os.lchown(target, uid, gid)
        return
    elif m.isreg():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            src = tf.extractfile(m)
            for chunk in iter(lambda: src.read(1 << 20), b""):
                out.write(chunk)
    else:
        return
    os.lchown(target, uid, gid)
    os.chmod(target, chmod if chmod is not None else (m.mode & 0o7777))
    os.utime(target, (m.mtime, m.mtime))


def _unpack(fileobj, dest, uid_gid=None):
    """ADD: unpack a (compressed) tar into `dest`, keeping its owners unless --chown."""
    from pyinspect.errors import CorruptInputError
    from pyinspect.runtime.archive import clean_member_name

    with tarfile.open(fileobj=fileobj, mode="r|*") as inner:
        links: dict[tuple, str] = {}
        for m in inner:
            try:
                parts = clean_member_name(m.name)
            except CorruptInputError:
                raise UsageError(f"ADD archive member {m.name!r}: unsafe name") from None
            if not parts:
                continue
            target = os.path.join(dest, *parts)
            uid, gid = uid_gid if uid_gid else (m.uid, m.gid)
            if m.islnk():
                src = links.get(tuple(clean_member_name(m.linkname)))
                if src is None:
                    raise UsageError(
                        f"ADD archive member {m.name!r}: hard link to a file not in the archive"
                    )
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if os.path.lexists(target):
                    os.unlink(target)
                os.link(src, target)
                continue
            _place(inner, m, target, uid, gid, None)
            if m.isreg():
                links[parts] = target


def receive(inp, dest: str, chown: str | None = None, chmod: str | None = None) -> None:
    """Place the stream from `inp` at `dest` (absolute) in the current (chrooted) root."""
    uid, gid = parse_chown(chown)
    mode = int(chmod, 8) if chmod else None
    with tarfile.open(fileobj=inp, mode="r|") as tf:
        first = tf.next()
        header = tf.extractfile(first) if first is not None and first.name == "meta" else None
        if header is None:
            raise UsageError("copy stream: no header")
        n = json.loads(header.read())["n"]
        dest_dir = dest.endswith("/") or n > 1
        if n > 1 and not dest.endswith("/"):
            raise UsageError(
                f"with more than one source the destination must be a "
                f"directory and end with a /: {dest}"
            )
        dest = os.path.normpath(dest)
        if os.path.isdir(dest):
            dest_dir = True
        for m in tf:
            kind, _, rest = m.name.partition("/")
            if kind == "d":
                target = os.path.join(dest, rest) if rest else dest
                if not rest and not os.path.isdir(dest):
                    os.makedirs(dest, exist_ok=True)
                    os.lchown(dest, uid, gid)
                    continue
                if not rest:
                    continue
                _place(tf, m, target, uid, gid, mode)
            elif kind == "f":
                target = os.path.join(dest, rest) if dest_dir else dest
                if dest_dir and not os.path.isdir(dest):
                    os.makedirs(dest, exist_ok=True)
                _place(tf, m, target, uid, gid, mode)
            elif kind == "x":
                os.makedirs(dest, exist_ok=True)
                _unpack(tf.extractfile(m), dest, (uid, gid) if chown else None)
