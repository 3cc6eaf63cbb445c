"""What the dashboard shows of a container, whichever runtime started it.

Each field comes from the runtime's own record where there is one, else from the
kernel:
- pyinspect: its state record (image, network: IP, ports, host veth; limits);
- Docker: the Engine API of every engine found (`/containers/json`: image, command,
  IPs, published ports), or its config.v2.json on disk when the API does not answer;
- Podman: its storage's containers.json and images.json (image name, created);
- containerd: its API (`probes.containerdapi`: containerd's own client on each running
  containerd's socket) for the image and creation time;
- containerd / plain runc / crun: the bundle's config.json (image from its annotations,
  the command, the resource limits it asked for);
- every runtime: IPs and the veth pair from the veth map (netlink, every namespace),
  published ports from the DNAT rules of the namespace holding the host-side veth, and
  limits from the cgroup files (probes.cgroupstat).
Groups of processes that only live in another network or pid namespace (discovery's
`netns`/`pidns` records) are namespaces, not containers: `is_container` is False.
"""

import contextlib
import ipaddress
import json
import os
import time
from dataclasses import asdict, dataclass, field

from ..probes import cgroupstat, containerdapi
from ..runtime.cgroups import frozen_by

PODMAN_STORAGE = "/var/lib/containers/storage"
IMAGE_ANNOTATIONS = (
    "io.kubernetes.cri.image-name",
    "nerdctl/image",
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
)


@dataclass
class PortMap:
    """A host port published to the container."""

    host_ip: str  # '' = every address
    host_port: int
    container_port: int
    proto: str = "tcp"

    def text(self) -> str:
        return f"{self.host_ip or '0.0.0.0'}:{self.host_port}->{self.container_port}/{self.proto}"


@dataclass
class ContainerInfo:
    """One container (or namespace) as the Containers and container pages show it."""

    id: str
    name: str
    runtime: str
    status: str
    pid: int = 0
    pids: list[int] = field(default_factory=list)
    is_container: bool = True
    image: str = ""
    command: str = ""
    created: str = ""
    ips: list[str] = field(default_factory=list)
    ports: list[PortMap] = field(default_factory=list)
    veth_host: str = ""  # host-side ifname
    veth_host_netns: str = ""  # where the host side lives (netns name)
    veth_container: str = ""  # the container's side (eth0)
    netns: int | None = None
    netns_name: str = ""
    cgroups: dict[str, str] = field(default_factory=dict)
    memory_limit: int | None = None
    cpus_limit: float | None = None
    pids_limit: int | None = None
    oom_killed: bool | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field -> where it came from

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ports"] = [p.text() for p in self.ports]
        return d

    def row(self, mounts: dict[str, str] | None = None) -> dict:
        """The Containers table's row (short texts); `mounts`: cgroupstat.mounts(), once."""
        from ..units import binary_size

        limits = []
        if self.memory_limit is not None:
            limits.append(f"memory {binary_size(self.memory_limit)}")
        if self.cpus_limit is not None:
            limits.append(f"cpus {self.cpus_limit:g}")
        if self.pids_limit is not None:
            limits.append(f"pids {self.pids_limit}")
        return {
            "id": self.id,
            "id_short": self.id[:12] if self.is_container else self.id,
            "name": self.name,
            "source": self.runtime,
            "status": self.status,
            "is_container": self.is_container,
            "image": self.image,
            "pid": self.pid,
            "ip": ", ".join(self.ips),
            "ports": ", ".join(p.text() for p in self.ports),
            "veth": (
                f"{self.veth_host} <-> {self.veth_container}"
                if self.veth_host and self.veth_container
                else ""
            ),
            "cgroup": _common_cgroup(self.cgroups, mounts),
            "cgroups": dict(self.cgroups),
            "limits": ", ".join(limits),
            "oom_killed": "" if self.oom_killed is None else ("yes" if self.oom_killed else "no"),
        }


def _common_cgroup(cgroups: dict[str, str], mounts: dict[str, str] | None = None) -> str:
    """The cgroup path shared by every hierarchy, relative to its mount ('' if none)."""
    rel = set()
    mounts = cgroupstat.mounts() if mounts is None else mounts
    for ctrl, path in cgroups.items():
        base = mounts.get(ctrl) or mounts.get("" if ctrl == "unified" else ctrl) or ""
        rel.add(path[len(base) :] if base and path.startswith(base) else path)
    if len(rel) == 1:
        return next(iter(rel))
    return min(rel, key=len) + " (+)" if rel else ""


def _docker_containers(engines) -> dict[str, dict]:
    """{id: the Engine API's /containers/json entry} over every engine that answers."""
    from ..probes import dockerapi

    out: dict[str, dict] = {}
    for e in engines:
        try:
            for c in dockerapi.get(e.sock, "/containers/json?all=1", timeout=1.0):
                if isinstance(c, dict) and c.get("Id"):
                    out[c["Id"]] = c
        except dockerapi.DockerError:
            continue
    return out


def _docker_from_disk(engines, cid: str) -> dict | None:
    """Docker's own record of a container on disk (config.v2.json + hostconfig.json)."""
    from ..probes.dockerapi import DEFAULT_DATA_ROOT

    roots = {DEFAULT_DATA_ROOT} | {e.data_root for e in engines}
    for root in roots:
        d = os.path.join(root, "containers", cid)
        try:
            with open(os.path.join(d, "config.v2.json")) as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            continue
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(d, "hostconfig.json")) as f:
                cfg["HostConfig"] = json.load(f)
        return cfg
    return None


def _podman_images() -> dict[str, str]:
    try:
        with open(os.path.join(PODMAN_STORAGE, "overlay-images", "images.json")) as f:
            return {i["id"]: (i.get("names") or [i["id"][:12]])[0] for i in json.load(f)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _podman_containers() -> dict[str, dict]:
    try:
        with open(os.path.join(PODMAN_STORAGE, "overlay-containers", "containers.json")) as f:
            return {c["id"]: c for c in json.load(f)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _bundle_config(bundle: str | None) -> dict:
    if not bundle:
        return {}
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            cfg = json.load(f)
        return cfg if isinstance(cfg, dict) else {}
    except (OSError, ValueError):
        return {}


def _dnat_ports(netns_path: str, ips: set[str], cache: dict) -> list[PortMap]:
    """Ports DNATed to `ips` by the nat rules (both iptables backends) of a namespace."""
    from ..probes import iptsave

    if netns_path not in cache:
        by_ip: dict[str, list[PortMap]] = {}
        for backend, (save, _restore) in iptsave.BACKENDS.items():
            text, _err = iptsave.run_save(save, counters=False, netns=netns_path)
            if not text:
                continue
            nat = {t: c for t, c in iptsave.parse_save(text, backend).items() if t == "nat"}
            for rule in iptsave.Ruleset(backend, nat).rules():
                tgt = iptsave.dnat_target(rule)
                hport = rule.get("dport")
                if not tgt or not hport or not hport.isdigit():
                    continue
                dst = rule.get("dst") or ""
                pm = PortMap(
                    dst[:-3] if dst.endswith("/32") else "",
                    int(hport),
                    tgt[1] or int(hport),
                    rule.get("proto") or "tcp",
                )
                if pm not in by_ip.setdefault(tgt[0], []):
                    by_ip[tgt[0]].append(pm)
        cache[netns_path] = by_ip
    return [pm for ip in sorted(ips) for pm in cache[netns_path].get(ip, [])]


def collect(root, found=None, links=None, dnat: bool = True) -> list[ContainerInfo]:
    """Every container (and bare namespace) with what its runtime and the kernel say.

    `found` (discovery records) and `links` (veth map rows) save a second scan; `dnat`
    False skips reading iptables for runtimes that keep no port record of their own."""
    from ..host import discovery, vethmap
    from ..runtime import state

    procs = discovery.scan_processes()
    host = discovery.host_namespaces()
    if found is None:
        found = discovery.containers(root, procs=procs, host=host)
    if links is None:
        links = vethmap.build(root, found=found, procs=procs, host=host)
    own = {c.id: c for c in state.load_all(root)}
    engines = discovery.docker_engines()
    docker = _docker_containers(engines) if any(d.source == "docker" for d in found) else {}
    podman = _podman_containers() if any(d.source == "podman" for d in found) else {}
    podman_images = _podman_images() if podman else {}
    mounts = cgroupstat.mounts()
    by_netns: dict[int, list[dict]] = {}
    for r in links:
        by_netns.setdefault(r["netns"], []).append(r)
    netns_paths: dict[int, str] = {}
    for d in found:
        if d.pid:
            netns_paths.setdefault(d.netns, f"/proc/{d.pid}/ns/net")
    dnat_cache: dict = {}
    ctd_socks: list[str] | None = None  # containerd's sockets, found when first needed
    out = []
    for d in found:
        info = ContainerInfo(
            id=d.id,
            name=d.name,
            runtime=d.source,
            status=d.status,
            pid=d.pid,
            pids=list(d.pids),
            is_container=d.source not in ("netns", "pidns"),
            netns=d.netns,
        )
        if not info.is_container:
            info.status = f"{d.source} ({len(d.pids)} process{'es' if len(d.pids) != 1 else ''})"
        _cgroups(info, d, mounts)
        if info.is_container and d.status == "running" and d.pid and frozen_by(d.pid):
            info.status = "paused"  # pyinspect's, Docker's or another runtime's freezer
        _network_from_links(info, by_netns.get(d.netns, []) if d.netns else [])
        c = own.get(d.id)
        if c is not None:
            _from_pyinspect(info, c)
        elif d.source == "docker":
            _from_docker(info, docker.get(d.id) or _docker_from_disk(engines, d.id))
        elif d.source == "podman":
            _from_podman(info, podman.get(d.id), podman_images)
        elif d.source == "containerd":
            if ctd_socks is None:
                ctd_socks = containerdapi.sockets()
            _from_containerd(info, (d.detail or {}).get("namespace") or "default", ctd_socks)
        if d.source not in ("pyinspect", "docker", "netns", "pidns"):
            _from_bundle(info, _bundle_config((d.detail or {}).get("bundle")))
        if (
            dnat
            and not info.ports
            and info.is_container
            and info.ips
            and d.source not in ("pyinspect", "docker")
            and info.veth_host
        ):
            host_ns = next(
                (r["peer_netns"] for r in by_netns.get(d.netns, []) if r.get("peer_netns")), None
            )
            path = (netns_paths.get(host_ns) if host_ns is not None else None) or (
                f"/run/netns/{info.veth_host_netns}" if info.veth_host_netns else None
            )
            if path and os.path.exists(path):
                info.ports = _dnat_ports(path, set(info.ips), dnat_cache)
                if info.ports:
                    info.sources["ports"] = "DNAT rules"
        out.append(info)
    for cid, c in own.items():  # records discovery did not report
        if not any(i.id == cid for i in out):
            info = ContainerInfo(id=c.id, name=c.name, runtime="pyinspect", status=c.status)
            _from_pyinspect(info, c)
            out.append(info)
    return out


def _cgroups(info: ContainerInfo, d, mounts) -> None:
    paths = cgroupstat.paths_of_pid(d.pid, mounts) if d.pid else {}
    if not paths and d.cgroups:
        paths = {("" if k == "unified" else k): v for k, v in d.cgroups.items() if v}
        for k, v in list(paths.items()):
            if not os.path.isabs(v) and mounts.get(k):
                paths[k] = os.path.join(mounts[k], v.lstrip("/"))
    if not info.is_container:
        info.cgroups = paths
        return
    info.cgroups = paths
    if paths:
        s = cgroupstat.read(paths)
        info.memory_limit, info.cpus_limit, info.pids_limit = (
            s.mem_limit,
            s.cpus_limit,
            s.pids_limit,
        )
        if s.oom_kills is not None:
            info.oom_killed = s.oom_kills > 0
        info.sources["limits"] = f"cgroup {s.version}".strip()


def _network_from_links(info: ContainerInfo, rows: list[dict]) -> None:
    for r in rows:
        if r.get("kind") == "loopback":
            continue
        for a in r.get("addrs") or []:
            ip = a.split("/")[0]
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(ip).is_link_local:
                    continue
            if ip not in info.ips:
                info.ips.append(ip)
        if r.get("kind") == "veth" and r.get("peer_ifname") and r.get("peer_netns") != r["netns"]:
            if not info.veth_host:
                info.veth_host = r["peer_ifname"]
                info.veth_host_netns = r.get("peer_netns_name") or ""
                info.veth_container = r["ifname"]
        info.netns_name = info.netns_name or r.get("netns_name") or ""
    if info.ips:
        info.sources["ips"] = "netlink"


def _from_pyinspect(info: ContainerInfo, c) -> None:
    net = c.network or {}
    info.image = c.image or ""
    info.created = getattr(c, "created", "") or ""
    if net.get("ip") and net["ip"] not in info.ips:
        info.ips.insert(0, net["ip"])
    info.ports = [
        PortMap(p.get("host_ip") or "", int(p["host_port"]), int(p["container_port"]), p["proto"])
        for p in net.get("ports") or []
    ]
    if net.get("veth_host"):
        info.veth_host = net["veth_host"]
        info.veth_container = info.veth_container or "eth0"
    spec = c.spec
    if spec is not None:
        from ..runtime.cgroups import parse_memory

        if spec.memory and info.memory_limit is None:
            with contextlib.suppress(Exception):
                info.memory_limit = parse_memory(spec.memory)
        if spec.cpus and info.cpus_limit is None:
            info.cpus_limit = float(spec.cpus)
        if spec.pids_limit and info.pids_limit is None:
            info.pids_limit = int(spec.pids_limit)
        info.command = " ".join(getattr(spec, "command", None) or [])
    if info.oom_killed is None:
        info.oom_killed = bool(c.oom_killed)
    info.sources.update(image="pyinspect state", ports="pyinspect state")


def _from_docker(info: ContainerInfo, c: dict | None) -> None:
    if not c:
        return
    if "Names" in c:  # the API's list entry
        info.image = c.get("Image") or ""
        info.command = c.get("Command") or ""
        if c.get("Created"):
            info.created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["Created"]))
        nets = (c.get("NetworkSettings") or {}).get("Networks") or {}
        for n in nets.values():
            ip = (n or {}).get("IPAddress")
            if ip and ip not in info.ips:
                info.ips.insert(0, ip)
        for p in c.get("Ports") or []:
            if p.get("PublicPort") and ":" not in (p.get("IP") or ""):
                pm = PortMap(
                    "" if p.get("IP") in (None, "0.0.0.0") else p["IP"],
                    int(p["PublicPort"]),
                    int(p["PrivatePort"]),
                    p.get("Type") or "tcp",
                )
                if pm not in info.ports:
                    info.ports.append(pm)
        info.sources.update(image="Docker API", ports="Docker API")
        return
    cfg = c.get("Config") or {}  # config.v2.json
    info.image = cfg.get("Image") or c.get("Image") or ""
    info.command = " ".join([c.get("Path") or ""] + list(c.get("Args") or [])).strip()
    info.created = (c.get("Created") or "")[:19].replace("T", " ")
    for n in ((c.get("NetworkSettings") or {}).get("Networks") or {}).values():
        ip = (n or {}).get("IPAddress")
        if ip and ip not in info.ips:
            info.ips.insert(0, ip)
    bindings = (c.get("HostConfig") or {}).get("PortBindings") or {}
    for key, binds in bindings.items():
        cport, _, proto = key.partition("/")
        for b in binds or []:
            if b.get("HostPort"):
                info.ports.append(
                    PortMap(b.get("HostIp") or "", int(b["HostPort"]), int(cport), proto or "tcp")
                )
    info.sources.update(image="Docker config.v2.json", ports="Docker hostconfig.json")


def _from_containerd(info: ContainerInfo, namespace: str, socks: list[str]) -> None:
    """Image and creation time from containerd's API (`ctr containers info`)."""
    for sock in socks:
        c = containerdapi.container_info(sock, namespace, info.id)
        if c is None:
            continue
        info.image = c.get("Image") or info.image
        info.created = (c.get("CreatedAt") or "")[:19].replace("T", " ") or info.created
        info.sources["image"] = f"containerd API ({sock}, namespace {namespace})"
        return


def _from_podman(info: ContainerInfo, c: dict | None, images: dict[str, str]) -> None:
    if not c:
        return
    info.image = images.get(c.get("image") or "", c.get("image", "")[:12])
    info.created = (c.get("created") or "")[:19].replace("T", " ")
    info.sources["image"] = "Podman storage"


def _from_bundle(info: ContainerInfo, cfg: dict) -> None:
    if not cfg:
        return
    ann = cfg.get("annotations") or {}
    for key in IMAGE_ANNOTATIONS:
        if isinstance(ann.get(key), str) and ann[key] and not info.image:
            info.image = ann[key]
            info.sources["image"] = f"bundle annotation {key}"
    args = (cfg.get("process") or {}).get("args") or []
    if args and not info.command:
        info.command = " ".join(map(str, args))
    res = (cfg.get("linux") or {}).get("resources") or {}
    mem = (res.get("memory") or {}).get("limit")
    if mem and info.memory_limit is None:
        info.memory_limit = int(mem)
    pids = (res.get("pids") or {}).get("limit")
    if pids and pids > 0 and info.pids_limit is None:
        info.pids_limit = int(pids)
    cpu = res.get("cpu") or {}
    if cpu.get("quota") and cpu.get("period") and info.cpus_limit is None:
        info.cpus_limit = cpu["quota"] / cpu["period"]


@dataclass
class Proc:
    """One process of a container's tree."""

    pid: int
    ppid: int
    comm: str
    cmdline: str
    depth: int = 0


def process_tree(pids: list[int]) -> list[Proc]:
    """The processes `pids` as a tree, depth-first (children under their parent)."""
    procs: dict[int, Proc] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as fb:
                cmd = fb.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        procs[pid] = Proc(pid, ppid, comm, cmd or f"[{comm}]")
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: list[Proc] = []

    def walk(pid: int, depth: int) -> None:
        p = procs[pid]
        p.depth = depth
        out.append(p)
        for c in sorted(children.get(pid, [])):
            walk(c, depth + 1)

    for p in sorted(procs.values(), key=lambda p: p.pid):
        if p.ppid not in procs:
            walk(p.pid, 0)
    return out
