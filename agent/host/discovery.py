"""Find every container on the host and attribute pids and namespaces to them.

Sources, in order of precedence (a process claimed by one is not listed again):
1. pyinspect's own containers (`pyinspect.runtime.state.load_all(root)`);
2. OCI runtime state: runc (`/run/runc/<id>/state.json`), and the same files that
   containerd (`/run/containerd/runc/<namespace>/<id>`) and Docker
   (`/run/docker/runtime-runc/moby/<id>`) keep, and crun's (`/run/crun/<id>/status`);
   names from Docker's API when its socket answers, Docker's and Podman's own files,
   or the bundle's annotations (CRI, nerdctl);
3. Docker/containerd/Podman processes recognised by their cgroup paths
   (`.../docker/<id>`, `docker-<id>.scope`, `libpod-<id>.scope`, `cri-containerd-<id>`);
4. any other process whose network or pid namespace differs from the host's, grouped
   by namespace and named after the netns (`ip netns` name) or `netns:<inode>`.

Attribution (`Resolver`) goes by what the kernel says: pid, pid/net namespace inodes
and cgroup ids (inode of the cgroup directory per hierarchy). Names are never parsed
to attribute an event; ambiguity yields None.
"""

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HOST_REF_PIDS = (2, 1)  # kthreadd lives in the initial namespaces; pid 1 may be unreadable
NETNS_DIRS = ("/run/netns", "/var/run/netns")
OCI_STATE_ROOTS = (
    # (directory, source, depth): depth 1 = <dir>/<id>, 2 = <dir>/<namespace>/<id>
    ("/run/runc", "runc", 1),
    ("/run/containerd/runc", "containerd", 2),
    ("/run/docker/runtime-runc", "docker", 2),
)
CRUN_STATE_ROOTS = ("/run/crun",)
DOCKER_SOCK = "/var/run/docker.sock"
DOCKER_LIB = "/var/lib/docker/containers"
PODMAN_DB = "/var/lib/containers/storage/overlay-containers/containers.json"
CGROUP_ID_PATTERNS = (
    (re.compile(r"/docker[-/]([0-9a-f]{64})(?:\.scope)?$"), "docker"),
    (re.compile(r"/libpod-([0-9a-f]{64})(?:\.scope)?$"), "podman"),
    (re.compile(r"/cri-containerd-([0-9a-f]{64})(?:\.scope)?$"), "containerd"),
    (re.compile(r"/crio-([0-9a-f]{64})(?:\.scope)?$"), "cri-o"),
)
_CGROUP_FS = "/sys/fs/cgroup"


@dataclass
class Discovered:
    """One container (or group of processes in non-host namespaces)."""

    id: str
    name: str
    source: str  # pyinspect | runc | containerd | docker | podman | cri-o | netns | pidns
    pid: int = 0  # host pid of the init process, 0 when not running
    pids: list = field(default_factory=list)
    status: str = "running"
    netns: int | None = None
    pidns: int | None = None
    mntns: int | None = None
    netns_path: str | None = None
    cgroups: dict = field(default_factory=dict)  # controller (or "" for v2) -> path
    cgroup_ids: list = field(default_factory=list)  # [hierarchy id, cgroup id]
    detail: dict = field(default_factory=dict)

    def to_dict(self):
        return asdict(self)


# -- namespaces of processes ------------------------------------------------------


def _ns_ino(pid, kind):
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def host_namespaces():
    """Inodes of the initial net, pid and mnt namespaces (from kthreadd, else pid 1, else us)."""
    for pid in HOST_REF_PIDS:
        out = {k: _ns_ino(pid, k) for k in ("net", "pid", "mnt")}
        if out["net"] and out["pid"]:
            return out
    return {k: _ns_ino("self", k) for k in ("net", "pid", "mnt")}


def scan_processes():
    """{pid: {"net": ino, "pid": ino, "mnt": ino}} for every process we can read."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        net = _ns_ino(name, "net")
        if net is None:
            continue  # gone, a kernel-protected process, or not ours to read
        out[int(name)] = {"net": net, "pid": _ns_ino(name, "pid"), "mnt": _ns_ino(name, "mnt")}
    return out


def named_netns():
    """{inode: [names]} of the `ip netns` namespaces (/run/netns)."""
    out: dict[int, list[str]] = {}
    seen = set()
    for d in NETNS_DIRS:
        try:
            real = os.path.realpath(d)
            if real in seen:
                continue
            seen.add(real)
            names = os.listdir(d)
        except OSError:
            continue
        for name in sorted(names):
            try:
                st = os.stat(os.path.join(d, name))
            except OSError:
                continue
            if st.st_dev == _nsfs_dev():
                out.setdefault(st.st_ino, [])
                if name not in out[st.st_ino]:
                    out[st.st_ino].append(name)
    return out


_NSFS_DEV: list[int] = []


def _nsfs_dev():
    if not _NSFS_DEV:
        _NSFS_DEV.append(os.stat("/proc/self/ns/net").st_dev)
    return _NSFS_DEV[0]


def _proc_start_time(pid):
    """Start time (clock ticks) of a live process, None once it is exiting or gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        fields = data[data.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            return None  # a zombie is as good as dead
        if not os.path.exists(f"/proc/{pid}/ns/net"):
            return None  # exiting: namespaces already dropped, not yet a zombie
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _proc_cgroups(pid):
    """[(hierarchy id, controllers, path)] from /proc/<pid>/cgroup."""
    out = []
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                hid, ctrls, path = line.rstrip("\n").split(":", 2)
                out.append((int(hid), ctrls, path))
    except (OSError, ValueError):
        pass
    return out


# -- cgroup ids -------------------------------------------------------------------


def _cgroup_mounts():
    """{controller or "" (v2): mount point} for the mounted cgroup hierarchies."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                fstype, _src, opts = (post.split() + ["", "", ""])[:3]
                mnt = pre.split()[4]
                if fstype == "cgroup2":
                    out.setdefault("", mnt)
                elif fstype == "cgroup":
                    for opt in opts.split(","):
                        if opt in ("rw", "ro") or opt.startswith(
                            ("relatime", "nosuid", "nodev", "noexec")
                        ):
                            continue
                        out.setdefault(opt, mnt)
    except OSError:
        pass
    return out


def _hierarchy_ids():
    """{controller or "" (v2): hierarchy id} from /proc/self/cgroup."""
    out = {}
    for hid, ctrls, _path in _proc_cgroups("self"):
        if hid == 0:
            out[""] = 0
        for c in ctrls.split(","):
            if c:
                out[c] = hid
    return out


def _cgroup_context():
    """(mounts, hierarchy ids, real paths of the hierarchy roots): read once per scan."""
    mounts = _cgroup_mounts()
    return mounts, _hierarchy_ids(), {os.path.realpath(m) for m in mounts.values()}


def cgroup_ids(cgroups, context=None):
    """[[hierarchy id, cgroup id]] for {controller: path} (absolute or hierarchy-relative).

    The id of a cgroup is the inode of its directory: what bpf_get_current_cgroup_id()
    (v2) and the cgroup tracepoints (`id`, with `root` = hierarchy id) report. `context`
    (`_cgroup_context()`) saves reading the mounts again for each container.
    """
    mounts, hids, roots = context or _cgroup_context()
    out, seen = [], set()
    for ctrl, path in (cgroups or {}).items():
        if not path:
            continue
        ctrl = "" if ctrl in ("unified", "cgroup2", "v2") else ctrl
        if not os.path.isabs(path) or not path.startswith(_CGROUP_FS):
            key = (
                ctrl if ctrl in mounts else next((c for c in mounts if ctrl in c.split(",")), None)
            )
            if key is None:
                continue
            path = os.path.join(mounts[key], path.lstrip("/"))
        if os.path.realpath(path) in roots:
            continue  # a hierarchy root is shared by everything: never attribute by it
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        hid = hids.get(ctrl)
        if hid is None:
            continue
        if (hid, ino) not in seen:
            seen.add((hid, ino))
            out.append([hid, ino])
    return out


# -- sources ----------------------------------------------------------------------


def _own(root, errors=None):
    """pyinspect's containers, if the runtime package is there."""
    try:
        from ..runtime import state
    except ImportError:
        if errors is not None:
            errors.append("pyinspect runtime state not available")
        return []
    try:
        records = state.load_all(root)
    except OSError as exc:  # an unreadable state directory must not hide the others
        if errors is not None:
            errors.append(f"cannot read pyinspect state: {exc}")
        return []
    out = []
    for c in records:
        pid = int(getattr(c, "pid", 0) or 0)
        status = getattr(c, "status", "unknown")
        start = getattr(c, "pid_start", 0)
        if status == "running" and (
            not pid
            or (_proc_start_time(pid) != start if start else not os.path.exists(f"/proc/{pid}"))
        ):
            status = "exited"  # the record is stale (the runtime's reconcile will agree)
        network = getattr(c, "network", None) or {}
        d = Discovered(
            id=c.id,
            name=getattr(c, "name", c.id[:12]),
            source="pyinspect",
            pid=pid if status == "running" else 0,
            status=status,
            cgroups=dict(getattr(c, "cgroup", None) or {}),
            detail={
                "image": getattr(c, "image", None),
                "network_mode": network.get("mode"),
                "network": dict(network),
                "oom_killed": bool(getattr(c, "oom_killed", False)),
            },
        )
        out.append(d)
    return out


def _state_roots(engines=()):
    """OCI_STATE_ROOTS and the runc state of every Docker engine run with its own
    --exec-root (`<exec root>/runtime-runc/<namespace>/<id>`)."""
    roots = list(OCI_STATE_ROOTS)
    for e in engines:
        entry = (os.path.join(e.exec_root, "runtime-runc"), "docker", 2)
        if entry not in roots:
            roots.append(entry)
    return roots


def _oci_states(engines=()):
    """(source, namespace, state dict, state dir) from every OCI runtime state root."""
    for base, source, depth in _state_roots(engines):
        dirs: list[tuple[str | None, Path]] = []
        try:
            if depth == 1:
                dirs = [(None, Path(base) / e) for e in os.listdir(base)]
            else:
                for space in os.listdir(base):
                    dirs += [
                        (space, Path(base) / space / e) for e in os.listdir(Path(base) / space)
                    ]
        except OSError:
            continue
        for ns, d in dirs:
            try:
                with open(d / "state.json") as f:
                    st = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(st, dict) and st.get("id"):
                src = "docker" if (source == "containerd" and ns == "moby") else source
                yield src, ns, st, d


def _oci(docker_names, podman_names, engines=()):
    out = []
    for source, ns, st, d in _oci_states(engines):
        cid = st["id"]
        pid = int(st.get("init_process_pid") or 0)
        start = st.get("init_process_start")
        alive = bool(pid) and _proc_start_time(pid) == (int(start) if start else None)
        if alive:
            status = "created" if (d / "exec.fifo").exists() else "running"
        else:
            status, pid = "stopped", 0
        bundle = _bundle(st)
        name = _annotated_name(bundle) or cid
        if cid in docker_names:
            source, name = "docker", docker_names[cid]
        elif cid in podman_names:
            source, name = "podman", podman_names[cid]
        paths = st.get("namespace_paths") or {}
        disc = Discovered(
            id=cid,
            name=name,
            source=source,
            pid=pid,
            status=status,
            cgroups=dict(st.get("cgroup_paths") or {}),
            netns_path=paths.get("NEWNET") if alive else None,
            detail={"state_dir": str(d), "namespace": ns, "bundle": bundle},
        )
        out.append(disc)
    return out + _crun(podman_names)


def _crun(podman_names):
    """Containers in crun's state directories (`<root>/<id>/status`, Podman's default)."""
    out = []
    for base in CRUN_STATE_ROOTS:
        try:
            ids = os.listdir(base)
        except OSError:
            continue
        for cid in ids:
            try:
                with open(os.path.join(base, cid, "status")) as f:
                    st = json.load(f)
            except (OSError, ValueError):
                continue
            if not isinstance(st, dict):
                continue
            pid = int(st.get("pid") or 0)
            start = st.get("process-start-time")
            alive = bool(pid) and _proc_start_time(pid) == (int(start) if start else None)
            cg = st.get("cgroup-path")
            bundle = st.get("bundle")
            podman = podman_names.get(cid)
            out.append(
                Discovered(
                    id=cid,
                    name=podman or _annotated_name(bundle) or cid,
                    source="podman" if podman else "crun",
                    pid=pid if alive else 0,
                    status="running" if alive else "stopped",
                    cgroups={"": cg} if cg else {},
                    detail={"state_dir": os.path.join(base, cid), "bundle": bundle},
                )
            )
    return out


# OCI annotations that carry a human name, most specific first
NAME_ANNOTATIONS = (
    "io.kubernetes.cri.container-name",
    "nerdctl/name",
    "io.kubernetes.container.name",
    "org.opencontainers.container.name",
)


def _annotated_name(bundle):
    """A container name from the bundle's config.json annotations, if it has one."""
    if not bundle:
        return None
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            ann = json.load(f).get("annotations") or {}
    except (OSError, ValueError, AttributeError):
        return None
    for key in NAME_ANNOTATIONS:
        if isinstance(ann.get(key), str) and ann[key]:
            pod = ann.get("io.kubernetes.cri.sandbox-name") or ann.get("io.kubernetes.pod.name")
            return f"{pod}/{ann[key]}" if pod and key.startswith("io.kubernetes") else ann[key]
    return None


def _bundle(st):
    for label in (st.get("config") or {}).get("labels") or []:
        if isinstance(label, str) and label.startswith("bundle="):
            return label[len("bundle=") :]
    return None


def docker_engines():
    """The Docker engines to ask (probes.dockerapi.engines, DOCKER_SOCK the default)."""
    from ..probes import dockerapi

    return dockerapi.engines(default_sock=DOCKER_SOCK)


def _docker_names(engines=None):
    """{id: name} from each Docker engine's API (socket) or, failing that, its config files."""
    from ..probes import dockerapi

    engines = docker_engines() if engines is None else engines
    names = {}
    libs = [DOCKER_LIB]
    for e in engines:
        lib = os.path.join(e.data_root, "containers")
        if lib not in libs:
            libs.append(lib)
        try:
            for c in dockerapi.get(e.sock, "/containers/json?all=1", timeout=1.0):
                n = (c.get("Names") or [c["Id"][:12]])[0].lstrip("/")
                names[c["Id"]] = n
        except (dockerapi.DockerError, KeyError, TypeError, AttributeError):
            pass
    for lib in libs:
        try:
            entries = os.listdir(lib)
        except OSError:
            continue
        for cid in entries:
            if cid in names:
                continue
            try:
                with open(os.path.join(lib, cid, "config.v2.json")) as f:
                    names[cid] = json.load(f).get("Name", cid[:12]).lstrip("/")
            except (OSError, ValueError, AttributeError):
                pass
    return names


def _podman_names():
    try:
        with open(PODMAN_DB) as f:
            return {c["id"]: (c.get("names") or [c["id"][:12]])[0] for c in json.load(f)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


# -- assembly ---------------------------------------------------------------------


def containers(root=None, procs=None, host=None, errors=None):
    """Every container on the host as `Discovered` records (running ones with their pids).

    Pass a list as `errors` to receive why pyinspect's own state could not be read."""
    from ..config import state_root

    root = state_root(root)
    procs = scan_processes() if procs is None else procs
    host = host_namespaces() if host is None else host
    named = named_netns()
    engines = docker_engines()
    docker_names = _docker_names(engines)
    found = _own(root, errors) + _oci(docker_names, _podman_names(), engines)
    known_ids = {d.id for d in found}
    claimed = set()
    cg_context = _cgroup_context()
    for d in found:
        if d.pid and d.pid in procs:
            ns = procs[d.pid]
            d.netns, d.pidns, d.mntns = ns["net"], ns["pid"], ns["mnt"]
            d.netns_path = f"/proc/{d.pid}/ns/net"
        elif d.netns_path:
            d.netns = _stat_ino(d.netns_path)
        _fill_pids(d, procs, host)
        d.cgroup_ids = cgroup_ids(d.cgroups, cg_context)
        claimed.update(d.pids)
    # Docker/containerd/Podman processes seen only through their cgroup paths
    by_id: dict[tuple[str, str], list[int]] = {}
    for pid in procs:
        if pid in claimed:
            continue
        for _hid, _ctrls, path in _proc_cgroups(pid):
            hit = _cgroup_container_id(path)
            if hit and hit[0] not in known_ids:
                by_id.setdefault(hit, []).append(pid)
                break
    for (cid, source), pids in sorted(by_id.items()):
        init = min(pids)
        ns = procs[init]
        d = Discovered(
            id=cid,
            name=docker_names.get(cid, cid[:12]),
            source=source,
            pid=init,
            pids=sorted(pids),
            netns=ns["net"],
            pidns=ns["pid"],
            mntns=ns["mnt"],
            netns_path=f"/proc/{init}/ns/net",
            detail={"via": "cgroup path"},
        )
        found.append(d)
        claimed.update(pids)
    # anything else outside the host's net or pid namespace
    taken_net = {d.netns for d in found if d.netns and d.netns != host["net"]}
    taken_pid = {d.pidns for d in found if d.pidns and d.pidns != host["pid"]}
    groups: dict[tuple[str, int], list[int]] = {}
    for pid, ns in procs.items():
        if pid in claimed or ns["net"] in taken_net or ns["pid"] in taken_pid:
            continue
        if ns["net"] is None or ns["pid"] is None:
            continue  # exited while scanned, or unreadable: nothing to group it by
        if ns["net"] != host["net"]:
            groups.setdefault(("netns", ns["net"]), []).append(pid)
        elif ns["pid"] != host["pid"]:
            groups.setdefault(("pidns", ns["pid"]), []).append(pid)
    for (kind, ino), pids in sorted(groups.items()):
        init = min(pids)
        ns = procs[init]
        names = named.get(ino, []) if kind == "netns" else []
        ident = f"{kind}:{ino}"
        d = Discovered(
            id=ident,
            name=names[0] if names else ident,
            source=kind,
            pid=init,
            pids=sorted(pids),
            netns=ns["net"],
            pidns=ns["pid"],
            mntns=ns["mnt"],
            netns_path=(f"/run/netns/{names[0]}" if names else f"/proc/{init}/ns/net"),
            detail={"netns_names": names, "comm": _comm(init)},
        )
        found.append(d)
    return found


def _stat_ino(path):
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _fill_pids(d, procs, host):
    """The container's processes: its own pid namespace, else its own netns, else cgroup."""
    pids = set()
    if d.status not in ("running", "created"):
        d.pids = []
        return
    if d.pidns and d.pidns != host["pid"]:
        pids = {p for p, ns in procs.items() if ns["pid"] == d.pidns}
    elif d.netns and d.netns != host["net"]:
        pids = {p for p, ns in procs.items() if ns["net"] == d.netns}
    if d.pid:
        pids.add(d.pid)
    for path in d.cgroups.values():
        if pids or not path:
            break
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    d.pids = sorted(pids)


def _cgroup_container_id(path):
    for pattern, source in CGROUP_ID_PATTERNS:
        m = pattern.search(path)
        if m:
            return m.group(1), source
    return None


class Resolver:
    """Attribute a pid / namespace inode / cgroup id to a container: (id, name) or None.

    Built from `containers(root)`; refreshed (at most every `refresh_interval` seconds)
    when a lookup misses, so containers started later are found.
    """

    SOURCE_RANK = {
        "pyinspect": 0,
        "runc": 1,
        "crun": 1,
        "docker": 1,
        "containerd": 1,
        "podman": 1,
        "cri-o": 1,
        "netns": 2,
        "pidns": 2,
    }

    def __init__(self, root=None, refresh_interval=1.0):
        self.root = root
        self.refresh_interval = refresh_interval
        self._built = 0.0
        self.host = host_namespaces()
        self.generation = 0  # scans so far: an answer can change only when it grows
        self.refresh()

    def refresh(self):
        self.found = containers(self.root, host=self.host)
        self._built = time.monotonic()
        self.generation += 1
        Ref = tuple[str, str]  # (id, name)
        self.by_pid: dict[int, Ref] = {}
        self.by_pidns: dict[int, Ref] = {}
        self.by_netns: dict[int, Ref] = {}
        self.by_cgroup: dict[tuple[int, int], set[Ref]] = {}
        # owners that are only a named network/pid namespace (no runtime's container)
        self.bare = {d.id for d in self.found if self.SOURCE_RANK.get(d.source, 3) == 2}
        ranked = sorted(
            self.found,
            key=lambda d: (
                self.SOURCE_RANK.get(d.source, 3),
                str(d.detail.get("network_mode")).startswith("container:"),
                d.name,
            ),
        )
        for d in reversed(ranked):  # the best-ranked owner is written last and wins
            ref = (d.id, d.name)
            for p in d.pids:
                self.by_pid[p] = ref
            if d.pidns and d.pidns != self.host["pid"]:
                self.by_pidns[d.pidns] = ref
            if d.netns and d.netns != self.host["net"]:
                self.by_netns[d.netns] = ref
            for hid, cid in d.cgroup_ids:
                self.by_cgroup.setdefault((hid, cid), set()).add(ref)
        return self.found

    def _lookup(self, pid, netns, pidns, cgroup_id, cgroup_root):
        if pid is not None and pid in self.by_pid:
            return self.by_pid[pid]
        if pidns is not None and pidns in self.by_pidns:
            return self.by_pidns[pidns]
        if cgroup_id is not None:
            if cgroup_root is not None:
                refs = self.by_cgroup.get((cgroup_root, cgroup_id), set())
            else:
                refs = set().union(
                    *[v for (h, c), v in self.by_cgroup.items() if c == cgroup_id] or [set()]
                )
            if len(refs) == 1:
                return next(iter(refs))
        if netns is not None and netns in self.by_netns:
            return self.by_netns[netns]
        return None

    def resolve(self, pid=None, netns=None, pidns=None, cgroup_id=None, cgroup_root=None):
        """(container_id, container_name) for the first key that identifies one, else None.

        Order: pid, pid namespace, cgroup id (unique across hierarchies unless
        `cgroup_root`, the hierarchy id, is given), network namespace. A live pid with no
        namespaces given is looked up by its own namespaces.
        """
        if pid is not None and (netns is None or pidns is None) and pid not in self.by_pid:
            netns = netns if netns is not None else _ns_ino(pid, "net")
            pidns = pidns if pidns is not None else _ns_ino(pid, "pid")
        hit = self._lookup(pid, netns, pidns, cgroup_id, cgroup_root)
        if not self.settled(hit, pidns) and self.refresh_if_due():
            hit = self._lookup(pid, netns, pidns, cgroup_id, cgroup_root)
        return hit

    def refresh_if_due(self):
        """Scan again when the last scan is `refresh_interval` old; True if it did."""
        if time.monotonic() - self._built < self.refresh_interval:
            return False
        self.refresh()
        return True

    def settled(self, hit, pidns=None, cgroup=False):
        """False when a container not found yet may own a record better than `hit` (a
        resolve() answer): no owner, or only a bare named namespace while the record is
        about a cgroup below the root (`cgroup`) or its pid namespace is neither the
        host's nor a known one (a container being made in a named netns, before its
        runtime wrote its state)."""
        if hit is None:
            return False
        if hit[0] not in self.bare:
            return True
        if cgroup:
            return False
        return pidns is None or pidns == self.host["pid"] or pidns in self.by_pidns
