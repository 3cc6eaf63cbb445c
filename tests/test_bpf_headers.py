"""The BPF side's shared definitions are written once: constants in the headers (read by
the loaders through probes/cdefs.py), shared structs in one include."""

import ctypes
import re
from pathlib import Path

import pytest

from pyinspect.probes import cdefs, packets

PROBES = Path(packets.__file__).parent


def test_defines_reads_literals_expressions_and_skips_the_rest(tmp_path):
    h = tmp_path / "x.h"
    h.write_text(
        "#define A 8          // comment\n#define B 0x80000A11\n"
        "#define C (65536 + 64)\n#define D (1 << 4) /* c */\n#define E 16u\n"
        '#define F(x) ((x) + 1)\n#define G some_name\n#define H "text"\n'
    )
    got = cdefs.defines(h)
    assert got == {"A": 8, "B": 0x80000A11, "C": 65600, "D": 16, "E": 16}
    with pytest.raises(KeyError, match="defines no Z"):
        cdefs.require(h, "A", "Z")


def test_the_loader_takes_its_constants_from_packets_h():
    text = (PROBES / "packets.h").read_text()
    for name in ("NCONST_ADDRS", "NCONST_PORTS", "MAX_POINTS", "EV_MAXCAP", "ASNAP", "NCOUNT"):
        m = re.search(rf"^#define {name} (\S+)", text, re.M)
        assert m and int(m.group(1), 0) == getattr(packets, name), name
    assert len(packets._Config().addrs) == packets.NCONST_ADDRS
    assert len(packets._Config().ports) == packets.NCONST_PORTS


def test_shared_structs_are_defined_once():
    sources = list(PROBES.glob("*.c")) + list(PROBES.glob("*.h"))
    defs = [p.name for p in sources if re.search(r"^struct portkey\s*\{", p.read_text(), re.M)]
    assert defs == ["netkeys.h"]
    assert ctypes.sizeof(packets._PortKey) == 8  # __u32 + __u16 + __u8 + __u8
