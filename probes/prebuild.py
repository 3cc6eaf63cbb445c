"""`python -m pyinspect.probes.prebuild`: read the running kernel's struct offsets from BTF
into the on-disk cache (`make install` runs it, so the first probe start does not parse
BTF): task offsets (btf.py) and the drop probe's sk_buff offsets (drops.py); and the
kernel's text symbols for this boot (drops.Kallsyms), which name drop locations."""

import struct

from . import btf, drops


def main() -> int:
    found = btf.offsets()
    try:
        drops.btf_offsets()
    except (OSError, btf.BTFError, struct.error, IndexError, ValueError) as exc:
        print(f"sk_buff offsets: unavailable ({exc})")
    print(f"task offsets: {'cached' if found else 'unavailable (no usable BTF)'}")
    syms = drops.Kallsyms()
    syms.lookup(0)
    print(f"kernel symbols: {len(syms.addrs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
