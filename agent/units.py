"""Byte counts as Docker prints them (go-units), shared by the CLI, the dashboard and
the runtime's messages: decimal sizes (`images`, `history`, `stats` I/O, pull progress)
and binary ones (`stats` memory)."""


def decimal_size(n: int | float | None, digits: int = 3) -> str:
    """Docker's units.HumanSizeWithPrecision(n, digits): 656B, 1.23kB, 2.59MB; None: --.
    `digits=4` is units.HumanSize (`system df`: 1.989MB)."""
    return _scaled(n, 1000, ("B", "kB", "MB", "GB", "TB", "PB"), digits)


def binary_size(n: int | float | None) -> str:
    """Docker's units.BytesSize: 1.5KiB, 1.523MiB; None: --."""
    return _scaled(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB", "PiB"), 4)


def _scaled(n: int | float | None, base: int, units: tuple[str, ...], digits: int) -> str:
    """`n` in the largest of `units` (each `base` times the one before) that keeps it
    under `base`, with `digits` significant digits (Go's %.<digits>g)."""
    if n is None:
        return "--"
    i, v = 0, float(n)
    while v >= base and i < len(units) - 1:
        v, i = v / base, i + 1
    return f"{v:.{digits}g}{units[i]}"
