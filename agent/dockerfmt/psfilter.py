"""`ps --filter KEY=VALUE`: Docker's container filters, over pyinspect's records.

As in Docker, the values given for one key are alternatives and every key given must
match. `name` and `id` match as Docker's do: the value equals the name (with its leading
`/`) or id, or is a regular expression found in it (`name=web`, `name=^/web1$`).
`status` lists stopped containers too (as `-a`; a damaged record is `dead`); `exited=N`
keeps stopped containers that exited with N. `publish` takes host ports, `expose`
container ports (`80`, `80/tcp`, `8000-8090/udp`; tcp unless a protocol is named);
`ancestor` an image (by name or id) or one made on top of it (a build FROM it, a commit);
`network` a network name; `before`/`since` a container. pyinspect containers carry no
labels, so `label=...` matches none, as in Docker for an unlabelled container.
"""

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import NotFoundError, UsageError
from .psformat import container_ports, docker_state

KEYS = ("ancestor", "before", "expose", "exited", "id", "label", "name", "network",
        "publish", "since", "status")  # fmt: skip
STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def _matches(value: str, source: str) -> bool:
    """Docker's filters.Args.Match: equal, or a regular expression found in `source`."""
    if value == source:
        return True
    try:
        return re.search(value, source) is not None
    except re.error:
        return False


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int
    proto: str  # tcp unless the value names one (as Docker's)

    @classmethod
    def parse(cls, key: str, text: str) -> "PortRange":
        ports, _, proto = text.partition("/")
        low, _, high = ports.partition("-")
        if not (low.isdigit() and (high == "" or high.isdigit())) or proto not in (
            "",
            "tcp",
            "udp",
        ):
            raise UsageError(f"invalid filter '{key}={text}': expected PORT[-PORT][/tcp|udp]")
        lo, hi = int(low), int(high or low)
        if not 0 < lo <= hi <= 65535:
            raise UsageError(f"invalid filter '{key}={text}': ports are 1-65535, low to high")
        return cls(lo, hi, proto or "tcp")

    def holds(self, port: int, proto: str) -> bool:
        return self.low <= port <= self.high and self.proto == proto


@dataclass
class PsFilter:
    values: dict[str, list[str]] = field(default_factory=dict)
    ports: dict[str, list[PortRange]] = field(default_factory=dict)  # publish, expose

    @classmethod
    def parse(cls, args: Iterable[str]) -> "PsFilter":
        """From `--filter` arguments; UsageError names a malformed one."""
        values: dict[str, list[str]] = {}
        ports: dict[str, list[PortRange]] = {}
        for arg in args:
            key, eq, value = arg.partition("=")
            key = key.strip().lower()
            if not eq or not key:
                raise UsageError(
                    f'invalid argument "{arg}" for "-f, --filter" flag: bad format of filter '
                    "(expected name=value)"
                )
            if key not in KEYS:
                raise UsageError(f"Invalid filter '{key}'")
            if key == "status" and value not in STATES:
                raise UsageError(f"Invalid filter 'status={value}'")
            if key == "exited" and not re.fullmatch(r"-?\d+", value):
                raise UsageError(f"invalid filter 'exited={value}': not an exit code")
            if key in ("publish", "expose"):
                ports.setdefault(key, []).append(PortRange.parse(key, value))
            values.setdefault(key, []).append(value)
        return cls(values, ports)

    @property
    def lists_stopped(self) -> bool:
        """A `status` filter lists stopped containers too, as `-a` does."""
        return "status" in self.values

    def select(
        self,
        containers: Sequence,
        image_id: Callable[[str], str | None] = lambda ref: None,
        descends: Callable[[str, str], bool] = lambda image, ancestor: False,
    ) -> list:
        """The containers (newest first, as `ps` lists them) that pass every filter;
        `image_id(ref)` resolves an `ancestor` value to an image id (None: unknown),
        `descends(image_id, ancestor_id)` says whether an image was made on another."""
        if not self.values:
            return list(containers)
        out = list(containers)
        for key in ("before", "since"):
            for ref in self.values.get(key, ()):
                at = next(
                    (i for i, c in enumerate(out) if ref in (c.name, c.id) or c.id.startswith(ref)),
                    None,
                )
                if at is None:
                    raise NotFoundError(f"no such container {ref}")
                out = out[at + 1 :] if key == "before" else out[:at]
        ancestors = [(v, image_id(v)) for v in self.values.get("ancestor", ())]
        lineage: dict[tuple[str, str], bool] = {}

        def of(c) -> bool:
            for ref, iid in ancestors:
                if c.image_id == iid or c.image in (ref, f"{ref}:latest"):
                    return True
                if iid and c.image_id:
                    key = (c.image_id, iid)
                    if key not in lineage:
                        lineage[key] = descends(*key)
                    if lineage[key]:
                        return True
            return False

        return [c for c in out if self._passes(c, of if ancestors else None)]

    def _passes(self, c, of_ancestor) -> bool:
        v = self.values
        if "name" in v and not any(_matches(x, "/" + c.name) for x in v["name"]):
            return False
        if "id" in v and not any(_matches(x, c.id) for x in v["id"]):
            return False
        if "label" in v:
            return False
        if "status" in v and docker_state(c) not in v["status"]:
            return False
        if "exited" in v and (
            docker_state(c) in ("running", "paused")
            or str(c.exit_code) not in {str(int(x)) for x in v["exited"]}
        ):
            return False
        if "network" in v:
            mode = c.spec.network_mode or "bridge"
            if not any(_matches(x, mode) for x in v["network"]):
                return False
        if of_ancestor is not None and not of_ancestor(c):
            return False
        if not self.ports:
            return True
        ports = container_ports(c)
        published = [(p["PublicPort"], p["Type"]) for p in ports if p["PublicPort"]]
        exposed = _exposed(c, ports) if "expose" in self.ports else set()
        for key, have in (("publish", published), ("expose", exposed)):
            wanted = self.ports.get(key)
            if wanted and not any(r.holds(port, proto) for r in wanted for port, proto in have):
                return False
        return True


def _exposed(c, ports) -> set[tuple[int, str]]:
    """A container's exposed ports: its image's and those its `-p` flags publish (Docker
    adds those to Config.ExposedPorts), whether it runs or not."""
    from ..runtime.ports import parse

    out = {(p["PrivatePort"], p["Type"]) for p in ports}
    for raw in c.spec.publish or ():
        try:
            out.update((b["container_port"], b["proto"]) for b in parse(raw))
        except UsageError:
            continue
    return out
