"""Drop locations are named from the kernel's text symbols, kept in the cache per boot."""

import re

from pyinspect.probes import bpfobj, drops


def _some_symbols(n=50):
    with open("/proc/kallsyms") as f:
        rows = [
            (int(a, 16), name)
            for a, kind, name in (line.split()[:3] for line in f)
            if kind in "tT" and int(a, 16)
        ]
    rows.sort()
    step = max(1, len(rows) // n)
    return rows[::step]


def test_symbols_from_the_cache_match_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv(bpfobj.CACHE_ENV, str(tmp_path))
    fresh = drops.Kallsyms()
    picks = _some_symbols()
    names = [fresh.lookup(a + 1) for a, _ in picks]
    files = list(tmp_path.glob("kallsyms-*.bin"))
    assert len(files) == 1 and files[0].stat().st_size > 8
    cached = drops.Kallsyms()
    assert [cached.lookup(a + 1) for a, _ in picks] == names
    # the same address may carry several names (aliases); one of them, at +0x1
    for got in names:
        assert re.fullmatch(r"\S+\+0x1", got), got
    assert (
        sum(got == f"{name}+0x1" for (_, name), got in zip(picks, names, strict=True))
        > len(picks) // 2
    )


def test_a_damaged_cache_file_is_read_again_from_the_kernel(tmp_path, monkeypatch):
    monkeypatch.setenv(bpfobj.CACHE_ENV, str(tmp_path))
    drops.Kallsyms().lookup(0)
    (path,) = tmp_path.glob("kallsyms-*.bin")
    path.write_bytes(b"\xff" * 8 + b"junk")
    a, name = _some_symbols()[3]
    syms = drops.Kallsyms()
    assert syms.lookup(a).endswith("+0x0") and len(syms.addrs) > 1000
    assert path.stat().st_size > 100  # rewritten whole
