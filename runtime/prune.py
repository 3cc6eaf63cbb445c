"""`system prune`: stopped containers, unused user networks, (with `--volumes`) unused
volumes and unused images, in Docker's order, with one total of the bytes freed."""

from dataclasses import dataclass, field

from . import network, volumes
from .containers import Runtime
from .images import ImageStore


@dataclass
class SystemPrune:
    """What a `system prune` removed, as Docker lists it."""

    containers: list[str] = field(default_factory=list)  # container ids
    networks: list[str] = field(default_factory=list)  # network names
    volumes: list[str] = field(default_factory=list)  # volume names
    images: list[dict[str, str]] = field(default_factory=list)  # {"untagged"|"deleted": x}
    freed: int = 0  # bytes: writable layers, volumes, image layers no image holds any more


def prune_system(root, every: bool = False, with_volumes: bool = False) -> SystemPrune:
    """Remove every stopped container, then every user network no running container is
    on, then (`with_volumes`) every volume no container mounts, then the dangling images
    (`every`: all images no container uses), as `docker system prune [-a] [--volumes]`
    does."""
    containers, container_bytes = Runtime(root).prune()
    networks = network.prune_networks(root)
    pruned = volumes.prune(root) if with_volumes else volumes.PruneResult([], 0)
    images, image_bytes = ImageStore(root).prune(every)
    return SystemPrune(
        containers,
        networks,
        pruned.names,
        images,
        container_bytes + pruned.reclaimed + image_bytes,
    )
