"""`pyinspect stats`: each container's CPU, memory, network, block I/O and pids, like
`docker stats`, for every runtime's containers (pyinspect's, Docker's, Podman's,
containerd's, plain runc's) from their cgroups (v1, v2 or hybrid) and their network
namespace's /proc/<pid>/net/dev.

    sampler = Sampler(root)
    rows = sampler.sample()        # one StatsRow per running container
    format_stats(rows, fmt)        # the lines `stats` prints

CPU % is the CPU time used between two samples over the wall time between them (100%
is one CPU, as Docker shows it); the first sample of a container is taken against a
reading made `warmup` seconds earlier.
"""

import time
from dataclasses import asdict, dataclass

from ..dockerfmt import gotemplate
from ..errors import ConflictError, NotFoundError
from ..probes import cgroupstat
from ..units import binary_size, decimal_size

STATS_DEFAULT = (
    "table {{.ID}}\t{{.Name}}\t{{.CPUPerc}}\t{{.MemUsage}}\t{{.MemPerc}}\t{{.NetIO}}"
    "\t{{.BlockIO}}\t{{.PIDs}}"
)
STATS_HEADERS = {
    "ID": "CONTAINER ID",
    "Container": "CONTAINER",
    "Name": "NAME",
    "CPUPerc": "CPU %",
    "MemUsage": "MEM USAGE / LIMIT",
    "MemPerc": "MEM %",
    "NetIO": "NET I/O",
    "BlockIO": "BLOCK I/O",
    "PIDs": "PIDS",
    "Runtime": "RUNTIME",
}
NOT_CONTAINERS = ("netns", "pidns")  # discovery's groups of processes, not containers


@dataclass
class StatsRow:
    """One container's reading; raw numbers (None: not available) and Docker's texts."""

    id: str
    name: str
    runtime: str
    pid: int
    ts: float  # time.time() of the reading
    cpu_percent: float | None
    mem_usage: int | None
    mem_limit: int | None  # the host's memory when the container has no limit (as Docker)
    mem_limited: bool
    mem_percent: float | None
    net_rx: int | None
    net_tx: int | None
    blk_read: int | None
    blk_write: int | None
    pids: int | None
    pids_limit: int | None
    cpus_limit: float | None
    cgroup_version: str

    def to_dict(self) -> dict:
        return asdict(self)

    def docker_row(self) -> dict:
        """The keys `docker stats --format` templates use."""
        return {
            "ID": self.id[:12],
            "Container": self.name or self.id[:12],
            "Name": self.name,
            "CPUPerc": "--" if self.cpu_percent is None else f"{self.cpu_percent:.2f}%",
            "MemUsage": f"{binary_size(self.mem_usage)} / {binary_size(self.mem_limit)}",
            "MemPerc": "--" if self.mem_percent is None else f"{self.mem_percent:.2f}%",
            "NetIO": f"{decimal_size(self.net_rx)} / {decimal_size(self.net_tx)}",
            "BlockIO": f"{decimal_size(self.blk_read)} / {decimal_size(self.blk_write)}",
            "PIDs": "--" if self.pids is None else str(self.pids),
            "Runtime": self.runtime,
        }


@dataclass
class _Reading:
    t: float  # monotonic
    cpu_ns: int | None


def select(found: list, names: list[str] | None) -> list:
    """The running containers among discovery records: all real containers, or those
    `names` name (by name, id or an id prefix of 4+); NotFoundError for an unknown name,
    ConflictError for one that is not running."""
    running = [d for d in found if d.pid and d.status == "running"]
    if not names:
        return [d for d in running if d.source not in NOT_CONTAINERS]
    out = []
    for n in names:
        hit = [d for d in found if n in (d.name, d.id)] or [
            d for d in found if len(n) >= 4 and d.id.startswith(n)
        ]
        if not hit:
            raise NotFoundError(f"No such container: {n}")
        live = [d for d in hit if d.pid and d.status == "running"]
        if not live:
            raise ConflictError(f"container {n} is not running")
        if live[0] not in out:
            out.append(live[0])
    return out


class Sampler:
    """Readings of containers' cgroups; keeps the last one per container for CPU %."""

    def __init__(self, root=None, warmup: float = 0.5) -> None:
        self.root = root
        self.warmup = warmup
        self._last: dict[str, _Reading] = {}
        self._host_mem = cgroupstat.host_memory()

    def sample(self, names: list[str] | None = None, found: list | None = None) -> list[StatsRow]:
        """A row per running container (or per container of `names`)."""
        from . import discovery

        targets = select(discovery.containers(self.root) if found is None else found, names)
        mnts = cgroupstat.mounts()
        paths = {d.id: cgroupstat.paths_of_pid(d.pid, mnts) for d in targets}
        fresh = [d for d in targets if d.id not in self._last]
        if fresh and self.warmup > 0:
            for d in fresh:
                self._last[d.id] = _Reading(time.monotonic(), cgroupstat.read(paths[d.id]).cpu_ns)
            time.sleep(self.warmup)
        rows = []
        for d in targets:
            rows.append(self._row(d, paths[d.id]))
        gone = set(self._last) - {d.id for d in targets}
        for cid in gone:
            del self._last[cid]
        return rows

    def _row(self, d, paths: dict[str, str]) -> StatsRow:
        now = time.monotonic()
        s = cgroupstat.read(paths)
        prev = self._last.get(d.id)
        cpu = None
        if prev and prev.cpu_ns is not None and s.cpu_ns is not None and now > prev.t:
            cpu = max(0.0, (s.cpu_ns - prev.cpu_ns) / ((now - prev.t) * 1e9) * 100.0)
        self._last[d.id] = _Reading(now, s.cpu_ns)
        limit = s.mem_limit if s.mem_limit is not None else self._host_mem
        used = s.mem_usage
        if limit is not None and self._host_mem is not None:
            limit = min(limit, self._host_mem)
        net = cgroupstat.net_dev(d.pid)
        return StatsRow(
            id=d.id,
            name=d.name,
            runtime=d.source,
            pid=d.pid,
            ts=time.time(),
            cpu_percent=cpu,
            mem_usage=s.mem_usage,
            mem_limit=limit,
            mem_limited=s.mem_limit is not None,
            mem_percent=(used / limit * 100.0) if used is not None and limit else None,
            net_rx=net[0] if net else None,
            net_tx=net[1] if net else None,
            blk_read=s.blk_read,
            blk_write=s.blk_write,
            pids=s.pids,
            pids_limit=s.pids_limit,
            cpus_limit=s.cpus_limit,
            cgroup_version=s.version,
        )


def format_stats(rows: list[StatsRow], fmt: str | None = None) -> list[str]:
    """The lines `stats --format FMT` prints: `table` (default), `json`, `table TEMPLATE`
    or a Go template. gotemplate.TemplateError when the template is invalid."""
    import json

    from ..dockerfmt.psformat import tabwrite

    data = [r.docker_row() for r in rows]
    if fmt:
        fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")
    if fmt in (None, "", "table"):
        fmt = STATS_DEFAULT
    if fmt == "json":
        return [json.dumps(r) for r in data]
    if fmt.startswith("table"):
        body = fmt[len("table") :].lstrip(" ")
        tmpl = gotemplate.parse(body)
        header = tmpl.render(dict(STATS_HEADERS))
        return tabwrite("\n".join([header] + [tmpl.render(r) for r in data]).split("\n"))
    tmpl = gotemplate.parse(fmt)
    return [tmpl.render(r) for r in data]
