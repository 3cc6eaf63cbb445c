"""Byte counts as Docker prints them (go-units), shared by the CLI, the dashboard and
the runtime's messages: decimal sizes (`images`, `history`, `stats` I/O, pull progress)
and binary ones (`stats` memory)."""


def decimal_size(n: int | float | None) -> str:
    """Docker's units.HumanSizeWithPrecision(n, 3): 656B, 1.23kB, 2.59MB; None: --."""
    if n is None:
        return "--"
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    i, v = 0, float(n)
    while v >= 1000 and i < len(units) - 1:
        v, i = v / 1000, i + 1
    return f"{v:.3g}{units[i]}"


def binary_size(n: int | float | None) -> str:
    """Docker's units.BytesSize: 1.5KiB, 1.523MiB; None: --."""
    if n is None:
        return "--"
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i, v = 0, float(n)
    while v >= 1024 and i < len(units) - 1:
        v, i = v / 1024, i + 1
    return f"{v:.4g}{units[i]}"
