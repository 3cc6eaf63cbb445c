"""`system prune`: stopped containers, unused user networks and unused images, in
Docker's order, with one total of the bytes freed."""

from dataclasses import dataclass, field

from . import network
from .containers import Runtime
from .images import ImageStore


@dataclass
class SystemPrune:
    """What a `system prune` removed, as Docker lists it."""

    containers: list[str] = field(default_factory=list)  # container ids
    networks: list[str] = field(default_factory=list)  # network names
    images: list[dict[str, str]] = field(default_factory=list)  # {"untagged"|"deleted": x}
    freed: int = 0  # bytes: writable layers and image layers no image holds any more


def prune_system(root, every: bool = False) -> SystemPrune:
    """Remove every stopped container, then every user network no running container is
    on, then the dangling images (`every`: all images no container uses), as `docker
    system prune [-a]` does."""
    containers, container_bytes = Runtime(root).prune()
    networks = network.prune_networks(root)
    images, image_bytes = ImageStore(root).prune(every)
    return SystemPrune(containers, networks, images, container_bytes + image_bytes)
