"""Compiled BPF objects: built once with clang, cached, loaded with libbpf (ctypes).

bcc compiles its C on every start (1-2 s a program on the 2-core VM). A program that
reads no kernel struct (tc programs see `struct __sk_buff`, whose layout is uapi) does
not depend on the running kernel, so its object is compiled once per source and clang
version and kept in the cache (`/var/cache/pyinspect/bpf`, or $PYINSPECT_BPF_CACHE);
loading it with libbpf takes milliseconds. Per-session settings go into the object's
`const volatile` globals (`.rodata`) before load: the verifier then sees them as
constants and drops the branches they rule out, as compile-time -D flags did with bcc.

    obj = BpfObject.open(SRC, rodata=bytes(cfg), max_entries={"evrings": ncpu},
                         programs={"pi_in_0", "pi_eg_0"})
    obj.load()
    obj.prog_fd("pi_in_0"); obj.map_fd("events"); obj.close()
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pyinspect.errors import UnavailableError

CACHE_ENV = "PYINSPECT_BPF_CACHE"
DEFAULT_CACHE = "/var/cache/pyinspect/bpf"
CLANGS = ("clang", "clang-14", "clang-15", "clang-16", "clang-17", "clang-18", "clang-19")
HERE = Path(__file__).resolve().parent

LIBBPF_INFO = 1  # enum libbpf_print_level: WARN 0, INFO 1, DEBUG 2
_lib = None
_log: list[str] = []
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


@_PRINT_FN
def _print(level, fmt, args):
    """libbpf's warnings (the verifier's log among them) are kept for the error message;
    its debug lines (thousands per load) are dropped unread."""
    if level > LIBBPF_INFO:
        return 0
    buf = ctypes.create_string_buffer(1 << 17)
    _libc.vsnprintf(buf, len(buf), fmt, args)
    _log.append(buf.value.decode(errors="replace"))
    del _log[:-200]
    return 0


def libbpf():
    """libbpf.so.1 through ctypes, or UnavailableError."""
    global _lib
    if _lib is not None:
        return _lib
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise UnavailableError(
            f"cannot load libbpf ({exc})", "install libbpf1 (make install does)"
        ) from None
    p = ctypes.c_void_p
    sigs = {
        "bpf_object__open_file": (p, [ctypes.c_char_p, p]),
        "bpf_object__load": (ctypes.c_int, [p]),
        "bpf_object__close": (None, [p]),
        "bpf_object__next_map": (p, [p, p]),
        "bpf_object__find_map_by_name": (p, [p, ctypes.c_char_p]),
        "bpf_object__find_program_by_name": (p, [p, ctypes.c_char_p]),
        "bpf_object__next_program": (p, [p, p]),
        "bpf_map__name": (ctypes.c_char_p, [p]),
        "bpf_map__fd": (ctypes.c_int, [p]),
        "bpf_map__set_max_entries": (ctypes.c_int, [p, ctypes.c_uint32]),
        "bpf_map__set_value_size": (ctypes.c_int, [p, ctypes.c_uint32]),
        "bpf_map__initial_value": (p, [p, ctypes.POINTER(ctypes.c_size_t)]),
        "bpf_program__name": (ctypes.c_char_p, [p]),
        "bpf_program__fd": (ctypes.c_int, [p]),
        "bpf_program__set_autoload": (ctypes.c_int, [p, ctypes.c_bool]),
        "libbpf_set_print": (p, [_PRINT_FN]),
        "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, p, p, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, p, p]),
    }
    for fn, (res, args) in sigs.items():
        f = getattr(lib, fn)
        f.restype = res
        f.argtypes = args
    lib.libbpf_set_print(_print)
    _lib = lib
    return lib


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def find_clang() -> str | None:
    for name in CLANGS:
        path = shutil.which(name)
        if path:
            return path
    return None


@functools.lru_cache(maxsize=8)
def _clang_version(clang: str) -> str:
    """Once per process: every object's cache key has it (a start opens several objects)."""
    out = subprocess.run(
        [clang, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return out.stdout.splitlines()[0] if out.stdout else clang


# other builds of a source that loaders fall back to (make install prebuilds them too)
VARIANTS = {"packets.bpf.c": (("PI_SCRATCH_COPY",),)}


def _sources(src: Path) -> list[Path]:
    """The source and the local headers it may include (every .h beside it)."""
    return [src] + sorted(src.parent.glob("*.h"))


def object_path(src: Path, clang: str | None = None, defines: tuple[str, ...] = ()) -> Path:
    """Where the compiled object of `src` (with -D `defines`) lives in the cache (by
    content, defines and clang)."""
    clang = clang or find_clang()
    h = hashlib.sha256()
    for f in _sources(src):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update((_clang_version(clang) if clang else "no clang").encode())
    h.update("\0".join(defines).encode())
    return cache_dir() / f"{src.name.split('.')[0]}-{h.hexdigest()[:20]}.o"


def compile_object(src: Path, defines: tuple[str, ...] = ()) -> Path:
    """The cached object for `src` compiled with -D each of `defines`, compiled now if
    missing (atomically, so concurrent starts are safe)."""
    clang = find_clang()
    out = object_path(src, clang, defines)
    if out.exists():
        return out
    if not clang:
        raise UnavailableError(
            f"cannot compile {src.name}: clang is not installed",
            "install clang-14 (make install does)",
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    arch = os.uname().machine
    multiarch = f"/usr/include/{arch}-linux-gnu"
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".o.tmp")
    os.close(fd)
    cmd = [
        clang,
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-Wall",
        "-Wno-unused-function",
        *(f"-D{d}" for d in defines),
        f"-I{src.parent}",
        f"-I{multiarch}",
        "-c",
        str(src),
        "-o",
        tmp,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["?"])[0]
            raise UnavailableError(f"cannot compile {src.name}: {first}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class BpfObject:
    """One libbpf object: open (maps sized, .rodata set, programs chosen), load, fds."""

    def __init__(self, handle, path: Path):
        self._h = handle
        self.path = path
        self._links: dict[str, int] = {}  # "category:event" -> bpf_link pointer
        self.loaded = False

    @classmethod
    def open(
        cls,
        src: Path,
        rodata: bytes | None = None,
        max_entries: dict[str, int] | None = None,
        programs: set[str] | None = None,
        defines: tuple[str, ...] = (),
        value_sizes: dict[str, int] | None = None,
    ) -> BpfObject:
        lib = libbpf()
        path = compile_object(Path(src), defines)
        h = lib.bpf_object__open_file(str(path).encode(), None)
        if not h:
            err = ctypes.get_errno()
            raise UnavailableError(f"libbpf cannot open {path.name}: {os.strerror(err)}")
        obj = cls(h, path)
        try:
            for name, n in (max_entries or {}).items():
                if lib.bpf_map__set_max_entries(obj._map(name), n) != 0:
                    raise UnavailableError(f"{path.name}: cannot size map {name}")
            for name, n in (value_sizes or {}).items():  # maps declared without BTF types
                if lib.bpf_map__set_value_size(obj._map(name), n) != 0:
                    raise UnavailableError(f"{path.name}: cannot size the values of map {name}")
            if rodata is not None:
                obj._set_rodata(rodata)
            if programs is not None:
                prog = lib.bpf_object__next_program(h, None)
                while prog:
                    name = lib.bpf_program__name(prog).decode()
                    lib.bpf_program__set_autoload(prog, name in programs)
                    prog = lib.bpf_object__next_program(h, prog)
        except BaseException:
            obj.close()
            raise
        return obj

    def _map(self, name: str):
        m = libbpf().bpf_object__find_map_by_name(self._h, name.encode())
        if not m:
            raise UnavailableError(f"{self.path.name}: no map named {name}")
        return m

    def _set_rodata(self, data: bytes) -> None:
        lib = libbpf()
        m = lib.bpf_object__next_map(self._h, None)
        while m:
            if lib.bpf_map__name(m).decode().endswith(".rodata"):
                size = ctypes.c_size_t()
                ptr = lib.bpf_map__initial_value(m, ctypes.byref(size))
                if not ptr or size.value != len(data):
                    raise UnavailableError(
                        f"{self.path.name}: .rodata is {size.value} bytes, the loader "
                        f"wrote {len(data)} (C and Python config structs differ)"
                    )
                ctypes.memmove(ptr, data, len(data))
                return
            m = lib.bpf_object__next_map(self._h, m)
        raise UnavailableError(f"{self.path.name}: no .rodata section")

    def load(self) -> BpfObject:
        del _log[:]
        if libbpf().bpf_object__load(self._h) != 0:
            err = ctypes.get_errno()
            detail = next((ln.strip() for ln in reversed(_log) if ln.strip()), "")
            raise UnavailableError(
                f"the kernel refused {self.path.name}: {os.strerror(err)} {detail[:300]}".strip()
            )
        self.loaded = True
        return self

    def map_fd(self, name: str) -> int:
        return libbpf().bpf_map__fd(self._map(name))

    def prog_fd(self, name: str) -> int:
        p = libbpf().bpf_object__find_program_by_name(self._h, name.encode())
        if not p:
            raise UnavailableError(f"{self.path.name}: no program named {name}")
        return libbpf().bpf_program__fd(p)

    def close(self) -> None:
        for link in getattr(self, "_links", {}).values():
            _tp_lib().bpf_link__destroy(link)
        self._links = {}
        if self._h:
            libbpf().bpf_object__close(self._h)
            self._h = None

    # -- tracepoint programs (added for the tracepoint probes) --------------------------
    def has_program(self, name: str) -> bool:
        return bool(libbpf().bpf_object__find_program_by_name(self._h, name.encode()))

    def attach_tracepoint(self, prog: str, category: str, event: str) -> int:
        """Attach program `prog` to tracepoint category:event (libbpf: a perf event whose
        fd this process owns, so its exit detaches it). Returns the link's fd; OSError
        when the kernel refuses. The link is destroyed by detach_tracepoint() or close()."""
        lib = _tp_lib()
        p = lib.bpf_object__find_program_by_name(self._h, prog.encode())
        if not p:
            raise UnavailableError(f"{self.path.name}: no program named {prog}")
        del _log[:]
        link = lib.bpf_program__attach_tracepoint(p, category.encode(), event.encode())
        if not link:
            err = ctypes.get_errno() or 22
            detail = next((ln.strip() for ln in reversed(_log) if ln.strip()), "")
            raise OSError(err, f"{os.strerror(err)}{': ' + detail[:200] if detail else ''}")
        if not hasattr(self, "_links"):
            self._links = {}
        self._links[f"{category}:{event}"] = link
        return lib.bpf_link__fd(link)

    def detach_tracepoint(self, category: str, event: str) -> None:
        link = getattr(self, "_links", {}).pop(f"{category}:{event}", None)
        if link:
            _tp_lib().bpf_link__destroy(link)

    def program_fds(self) -> list[int]:
        """The fds of the loaded programs (e.g. to find their ids in /proc/<pid>/fdinfo)."""
        lib = libbpf()
        out = []
        prog = lib.bpf_object__next_program(self._h, None)
        while prog:
            fd = lib.bpf_program__fd(prog)
            if fd >= 0:
                out.append(fd)
            prog = lib.bpf_object__next_program(self._h, prog)
        return out


_tp_ready = False


def _tp_lib():
    """libbpf with the signatures of the attach/link functions set."""
    global _tp_ready
    lib = libbpf()
    if not _tp_ready:
        p = ctypes.c_void_p
        for fn, res, args in (
            ("bpf_program__attach_tracepoint", p, [p, ctypes.c_char_p, ctypes.c_char_p]),
            ("bpf_link__destroy", ctypes.c_int, [p]),
            ("bpf_link__fd", ctypes.c_int, [p]),
            ("libbpf_num_possible_cpus", ctypes.c_int, []),
        ):
            f = getattr(lib, fn)
            f.restype = res
            f.argtypes = args
        _tp_ready = True
    return lib


def possible_cpus() -> int:
    """How many per-CPU values a BPF_MAP_TYPE_PERCPU_* lookup returns."""
    n = _tp_lib().libbpf_num_possible_cpus()
    if n <= 0:
        raise UnavailableError(f"libbpf cannot count the possible CPUs ({os.strerror(-n)})")
    return n


def map_update(fd: int, key, value, flags: int = 0) -> None:
    """bpf_map_update_elem with ctypes key/value; OSError on failure."""
    if libbpf().bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(value), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf map update: {os.strerror(err)}")


def map_lookup(fd: int, key, value) -> bool:
    """bpf_map_lookup_elem into the ctypes `value`; False when the key is absent."""
    if libbpf().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) != 0:
        err = ctypes.get_errno()
        if err == 2:  # ENOENT
            return False
        raise OSError(err, f"bpf map lookup: {os.strerror(err)}")
    return True


def percpu_sum(fd: int, key: int = 0) -> int:
    """The sum over CPUs of a u64 per-CPU array slot (loss counters)."""
    vals = (ctypes.c_uint64 * possible_cpus())()
    if not map_lookup(fd, ctypes.c_uint32(key), vals):
        return 0
    return int(sum(vals))


def main(argv=None) -> int:
    """`python -m pyinspect.probes.bpfobj`: compile every libbpf object into the cache."""
    for src in sorted(HERE.glob("*.bpf.c")):
        if "libbpf" in src.read_text()[:400]:
            print(compile_object(src))
            for variant in VARIANTS.get(src.name, ()):
                print(compile_object(src, variant))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
