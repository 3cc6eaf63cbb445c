"""Build real image archives with tarfile for the image tests (no network, no docker)."""

import gzip
import hashlib
import io
import json
import os
import tarfile


def sha(data):
    return hashlib.sha256(data).hexdigest()


def layer(*entries):
    """An uncompressed layer tar from (name, kind, arg) tuples.

    kind: file (arg=bytes), dir, sym (arg=target), hard (arg=target), chr, blk, fifo.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for entry in entries:
            name, kind = entry[0], entry[1]
            arg = entry[2] if len(entry) > 2 else b""
            ti = tarfile.TarInfo(name)
            ti.mtime = 1700000000
            ti.mode = 0o755 if kind == "dir" else 0o644
            data = None
            if kind == "file":
                data = arg if isinstance(arg, bytes) else arg.encode()
                ti.size = len(data)
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, arg
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, arg
            elif kind in ("chr", "blk"):
                ti.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def config(layers, cmd=("sh",), **extra):
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": {
            "Env": ["PATH=/bin", "PM=1"],
            "Cmd": list(cmd),
            "WorkingDir": "/w",
            "ExposedPorts": {"80/tcp": {}},
            **extra,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(x)}" for x in layers]},
    }
    return json.dumps(cfg, sort_keys=True).encode()


def _add(tf, name, data=None, kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = link
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    if data is not None:
        ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def docker_legacy(path, images, gz_layers=False, share_by_symlink=True, raw_members=()):
    """A legacy `docker save` tar: <id>/layer.tar, <config hex>.json, manifest.json.

    images: [(layers, tags, cfg_bytes_or_None)]. A layer shared between images is a
    symlink member, as docker writes it. raw_members: extra (name, data) members.
    """
    manifest, repos, done = [], {}, {}
    with tarfile.open(path, "w") as tf:
        for layers, tags, cfg in images:
            cfg = cfg or config(layers)
            _add(tf, f"{sha(cfg)}.json", cfg)
            paths = []
            for data in layers:
                lid = sha(data + b"v1")
                blob = gzip.compress(data, mtime=0) if gz_layers else data
                if lid not in done:
                    _add(tf, lid, kind=tarfile.DIRTYPE)
                    _add(tf, f"{lid}/layer.tar", blob)
                    _add(tf, f"{lid}/VERSION", b"1.0")
                    done[lid] = True
                    paths.append(f"{lid}/layer.tar")
                elif share_by_symlink:  # docker links a repeated layer back to its first copy
                    alias = sha(lid.encode() + cfg)
                    _add(tf, alias, kind=tarfile.DIRTYPE)
                    _add(tf, f"{alias}/layer.tar", kind=tarfile.SYMTYPE, link=f"../{lid}/layer.tar")
                    paths.append(f"{alias}/layer.tar")
                else:
                    paths.append(f"{lid}/layer.tar")
            manifest.append({"Config": f"{sha(cfg)}.json", "RepoTags": tags, "Layers": paths})
            for t in tags or []:
                repo, tag = t.rsplit(":", 1)
                repos.setdefault(repo, {})[tag] = sha(layers[-1] + b"v1")
        for name, data in raw_members:
            _add(tf, name, data)
        _add(tf, "manifest.json", json.dumps(manifest).encode())
        _add(tf, "repositories", json.dumps(repos).encode())
    return path


def oci_layout(directory, images, gz_layers=True, nested_index=False):
    """An OCI image layout directory; images: [(layers, ref_name or None, cfg or None)]."""
    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        with open(os.path.join(blobs, sha(data)), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{sha(data)}", "size": len(data)}

    entries = []
    for layers, ref, cfg in images:
        cfg = cfg or config(layers)
        lt = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if gz_layers else "")
        man = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(cfg)},
            "layers": [
                {"mediaType": lt, **put(gzip.compress(x, mtime=0) if gz_layers else x)}
                for x in layers
            ],
        }
        desc = {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            **put(json.dumps(man).encode()),
        }
        if nested_index:
            other = dict(desc, platform={"architecture": "s390x", "os": "linux"})
            mine = dict(desc, platform={"architecture": "amd64", "os": "linux"})
            idx = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [other, mine],
            }
            desc = {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                **put(json.dumps(idx).encode()),
            }
        if ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        entries.append(desc)
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": entries}, f)
    with open(os.path.join(directory, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return directory


def tar_dir(directory, out, gz=False):
    with tarfile.open(out, "w:gz" if gz else "w") as tf:
        for name in sorted(os.listdir(directory)):
            tf.add(os.path.join(directory, name), arcname=name)
    return out


def tree(root):
    """{relative path: (kind, detail)} of a directory, for comparing extracted layers."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", st.st_mode)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = ("file", st.st_mode, sha(f.read()))
            else:
                out[rel] = ("other", st.st_mode, st.st_rdev)
    return out
