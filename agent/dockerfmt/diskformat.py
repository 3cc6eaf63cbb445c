"""What `system df` prints of a runtime.diskusage.DiskUsage, in Docker's words, rows and
JSON keys (docker/cli's formatter/disk_usage.go)."""

from typing import TYPE_CHECKING

from ..units import decimal_size
from .psformat import docker_time, ps_row, since, tabwrite, truncate_command, volume_row

if TYPE_CHECKING:
    from ..runtime.diskusage import DiskUsage

SUMMARY_DEFAULT = "table {{.Type}}\t{{.TotalCount}}\t{{.Active}}\t{{.Size}}\t{{.Reclaimable}}"
SUMMARY_HEADERS = {
    "Type": "TYPE",
    "TotalCount": "TOTAL",
    "Active": "ACTIVE",
    "Size": "SIZE",
    "Reclaimable": "RECLAIMABLE",
}
_IMAGE_COLUMNS = (
    ("REPOSITORY", "Repository"),
    ("TAG", "Tag"),
    ("IMAGE ID", "ShortID"),
    ("CREATED", "CreatedSince"),
    ("SIZE", "VirtualSize"),
    ("SHARED SIZE", "SharedSize"),
    ("UNIQUE SIZE", "UniqueSize"),
    ("CONTAINERS", "Containers"),
)
_CONTAINER_COLUMNS = (
    ("CONTAINER ID", "ID"),
    ("IMAGE", "Image"),
    ("COMMAND", "Command"),
    ("LOCAL VOLUMES", "LocalVolumes"),
    ("SIZE", "Size"),
    ("CREATED", "RunningFor"),
    ("STATUS", "Status"),
    ("NAMES", "Names"),
)
_VOLUME_HEADER = ("VOLUME NAME", "LINKS", "SIZE")
_CACHE_HEADER = ("CACHE ID", "CACHE TYPE", "SIZE", "CREATED", "LAST USED", "USAGE", "SHARED")


def _human(n: int) -> str:
    return decimal_size(n, 4)  # units.HumanSize


def _share(part: int, whole: int) -> str:
    """`1.2MB (40%)` (integer percent, as Go's), or the size alone when `whole` is 0."""
    return f"{_human(part)} ({part * 100 // whole}%)" if whole > 0 else _human(part)


def summary_rows(du: "DiskUsage") -> list[dict]:
    """The four rows of `docker system df`: Images, Containers, Local Volumes, Build Cache
    (its build cache records hold no bytes of their own: their layers are the images')."""
    containers = du.containers_bytes()
    volumes = du.volumes_bytes()
    return [
        {
            "Type": "Images",
            "TotalCount": str(len(du.images)),
            "Active": str(sum(1 for u in du.images if u.containers)),
            "Size": _human(du.layers_bytes),
            "Reclaimable": _share(du.images_reclaimable(), du.layers_bytes),
        },
        {
            "Type": "Containers",
            "TotalCount": str(len(du.containers)),
            "Active": str(sum(1 for u in du.containers if u.active)),
            "Size": _human(containers),
            "Reclaimable": _share(du.containers_reclaimable(), containers),
        },
        {
            "Type": "Local Volumes",
            "TotalCount": str(len(du.volumes)),
            "Active": str(sum(1 for u in du.volumes if u.links)),
            "Size": _human(volumes),
            "Reclaimable": _share(du.volumes_reclaimable(), volumes),
        },
        {
            "Type": "Build Cache",
            "TotalCount": str(du.build_cache_records),
            "Active": "0",
            "Size": "0B",
            "Reclaimable": "0B",
        },
    ]


def image_rows(du: "DiskUsage") -> list[dict]:
    """`system df -v`'s images (Docker's JSON keys; `ShortID` is the table's IMAGE ID):
    one row an image, named by its first tag."""
    rows = []
    for u in du.images:
        im = u.image
        repo, tag = im.repo_tags[0].rsplit(":", 1) if im.repo_tags else ("<none>", "<none>")
        rows.append(
            {
                "Containers": str(u.containers),
                "CreatedAt": docker_time(im.created),
                "CreatedSince": f"{since(im.created)} ago" if im.created else "N/A",
                "Digest": "",
                "ID": im.id,
                "Repository": repo,
                "SharedSize": _human(u.shared),
                "Size": decimal_size(u.size),
                "Tag": tag,
                "UniqueSize": _human(u.unique),
                "VirtualSize": _human(u.size),
                "ShortID": im.short_id,
            }
        )
    return rows


def container_rows(du: "DiskUsage") -> list[dict]:
    """`system df -v`'s containers: `ps` rows with their writable layer's size."""
    rows = [ps_row(u.container) for u in du.containers]
    return [
        {**row, "ID": u.container.id, "Size": decimal_size(u.size)}
        for row, u in zip(rows, du.containers, strict=True)
    ]


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    return tabwrite(["\t".join(r) for r in (header, *rows)])


def verbose_lines(du: "DiskUsage") -> list[str]:
    """`docker system df -v`: a table of images, of containers, of volumes and of
    the build cache (none), each under its title."""
    images = [tuple(r[k] for _, k in _IMAGE_COLUMNS) for r in image_rows(du)]
    containers = [
        tuple(truncate_command({**r, "ID": r["ID"][:12]})[k] for _, k in _CONTAINER_COLUMNS)
        for r in container_rows(du)
    ]
    return [
        "Images space usage:",
        "",
        *_table(tuple(h for h, _ in _IMAGE_COLUMNS), images),
        "",
        "Containers space usage:",
        "",
        *_table(tuple(h for h, _ in _CONTAINER_COLUMNS), containers),
        "",
        "Local Volumes space usage:",
        "",
        *_table(_VOLUME_HEADER, [(r["Name"], r["Links"], r["Size"]) for r in volume_rows(du)]),
        "",
        "Build cache usage: 0B",
        "",
        *_table(_CACHE_HEADER, []),
    ]


def verbose_object(du: "DiskUsage") -> dict:
    """`system df -v --format`'s data: Images, Containers, Volumes, BuildCache."""
    images = [{k: v for k, v in r.items() if k != "ShortID"} for r in image_rows(du)]
    return {
        "Images": images,
        "Containers": container_rows(du),
        "Volumes": volume_rows(du),
        "BuildCache": [],
    }


def volume_rows(du: "DiskUsage") -> list[dict]:
    """`system df -v`'s volumes: `volume ls` rows with their links and size."""
    return [
        {**volume_row(u.volume), "Links": str(u.links), "Size": _human(u.size)} for u in du.volumes
    ]
