"""`system df`: the space images, containers, volumes and the build cache take, counted as
Docker's daemon counts it (`docker system df`)."""

import os
from dataclasses import dataclass, field

from pyinspect.errors import PyinspectError

from .containers import Runtime
from .fsutil import tree_bytes
from .images import Image, ImageStore
from .state import Container
from .volumes import Volume, VolumeStore, record_mounts


@dataclass
class ImageUsage:
    """One image: its layers' bytes, the part other images hold too, its containers."""

    image: Image
    size: int  # every layer of it (Docker's VirtualSize)
    shared: int  # the layers another image has too
    containers: int  # containers made from it, whatever their state

    @property
    def unique(self) -> int:
        return self.size - self.shared


@dataclass
class VolumeUsage:
    """One volume: its bytes and how many containers mount it."""

    volume: Volume
    size: int  # its files' bytes (as a layer's)
    links: int  # the containers (any state) that mount it


@dataclass
class ContainerUsage:
    container: Container
    size: int  # its writable layer (Docker's SizeRw)
    active: bool  # running, paused or restarting


@dataclass
class DiskUsage:
    images: list[ImageUsage]  # newest first
    containers: list[ContainerUsage]  # newest first
    layers_bytes: int  # every stored layer once
    build_cache_records: int  # steps the build cache can give again
    volumes: list[VolumeUsage] = field(default_factory=list)  # by name

    def volumes_bytes(self) -> int:
        return sum(u.size for u in self.volumes)

    def volumes_reclaimable(self) -> int:
        return sum(u.size for u in self.volumes if not u.links)

    def images_reclaimable(self) -> int:
        """Docker's CLI: all layers less the unique bytes of images a container uses."""
        used = sum(u.unique for u in self.images if u.containers)
        return self.layers_bytes - used

    def containers_bytes(self) -> int:
        return sum(u.size for u in self.containers)

    def containers_reclaimable(self) -> int:
        return sum(u.size for u in self.containers if not u.active)


def disk_usage(root) -> DiskUsage:
    """What `docker system df` reports, for pyinspect's store under `root`."""
    store = ImageStore(root)
    images = store.list()
    containers = Runtime(root).list(all=True)
    layer_sets = {im.id: {d.split(":", 1)[-1] for d in im.diff_ids} for im in images}
    holders: dict[str, int] = {}
    for layers in layer_sets.values():
        for h in layers:
            holders[h] = holders.get(h, 0) + 1
    sizes = {h: store.layer_size(h) for h in holders}
    users: dict[str, int] = {}
    for c in containers:
        users[c.image_id] = users.get(c.image_id, 0) + 1
    image_rows = [
        ImageUsage(
            im,
            im.size,  # (its distinct layers' sizes, as summed here)
            sum(sizes[h] for h in layer_sets[im.id] if holders[h] > 1),
            users.get(im.id, 0),
        )
        for im in images
    ]
    container_rows = [
        ContainerUsage(
            c,
            _writable(c),
            c.status == "running" or c.restarting,
        )
        for c in sorted(containers, key=lambda c: c.created, reverse=True)
    ]
    links: dict[str, int] = {}
    for c in containers:
        for m in record_mounts(c):
            if m.get("type") == "volume":
                links[m["name"]] = links.get(m["name"], 0) + 1
    volume_rows = [
        VolumeUsage(v, tree_bytes(v.mountpoint), links.get(v.name, 0))
        for v in VolumeStore(root).list()
    ]
    return DiskUsage(
        image_rows,
        container_rows,
        sum(sizes.values()),
        _build_cache_records(root, store),
        volume_rows,
    )


def _writable(c: Container) -> int:
    """Its writable layer's bytes; 0 for a damaged record (its layer is not read)."""
    return 0 if c.status == "damaged" else Runtime.writable_bytes(c)


def _build_cache_records(root, store: ImageStore) -> int:
    from .build.cache import BuildCache

    cache = BuildCache(root, store)
    try:
        names = os.listdir(cache.dir)
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if n.endswith(".json") and cache.get(n[:-5]) is not None)


def container_sizes(root, containers: list[Container]) -> dict[str, tuple[int, int]]:
    """{container id: (its writable layer's bytes, those plus its image's layers)}, as
    `docker ps -s` shows them (Docker's SizeRw and SizeRootFs)."""
    store = ImageStore(root)
    image_bytes: dict[str, int] = {}
    out = {}
    for c in containers:
        if c.image_id not in image_bytes:
            try:
                image_bytes[c.image_id] = store.resolve(c.image_id).size
            except PyinspectError:
                image_bytes[c.image_id] = 0  # removed with rmi -f: its layers may be gone
        rw = _writable(c)
        out[c.id] = (rw, rw + image_bytes[c.image_id])
    return out
