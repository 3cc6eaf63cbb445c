"""The libbpf tracepoint probes' loader: tracefs formats -> .rodata field specs, the
shared header's struct order, the on-disk BTF offset cache, and a missing field."""

import re
import subprocess
from pathlib import Path

import pytest

from pyinspect.probes import btf, ringbuf
from pyinspect.probes.process import ProcessProbe

HEADER = Path(ringbuf.__file__).with_name("tracepoint.h")

FORMAT = """name: demo
ID: 1
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:__rel_loc char[] path;\toffset:12;\tsize:4;\tsigned:0;
\tfield:short oom_score_adj;\toffset:16;\tsize:2;\tsigned:1;
\tfield:unsigned long total_vm;\toffset:24;\tsize:8;\tsigned:0;
\tfield:char comm2[16];\toffset:32;\tsize:16;\tsigned:0;

print fmt: "..."
"""


def test_task_offsets_order_matches_the_header():
    text = HEADER.read_text()
    body = re.search(r"struct task_offsets \{(.*?)\};", text, re.DOTALL).group(1)
    names = re.findall(r"u32 (\w+);", body)
    assert names == [n for n, _ in ringbuf.TaskOffsets._fields_]


def test_tracefs_format_to_field_specs(tmp_path):
    d = tmp_path / "events" / "demo" / "demo"
    d.mkdir(parents=True)
    (d / "format").write_text(FORMAT)
    fmt = ringbuf.tp_format(str(tmp_path), "demo:demo")
    assert fmt["oom_score_adj"][:3] == (16, 2, True)
    s = ringbuf.field_spec(fmt, "oom_score_adj")
    assert (s.off, s.size, s.kind) == (16, 2, ringbuf.TPF_SIGNED)
    s = ringbuf.field_spec(fmt, "total_vm")
    assert (s.off, s.size, s.kind) == (24, 8, ringbuf.TPF_UNSIGNED)
    s = ringbuf.field_spec(fmt, "comm", string=True)
    assert (s.off, s.size, s.kind) == (8, 4, ringbuf.TPF_UNSIGNED)
    s = ringbuf.field_spec(fmt, "path", string=True)
    assert s.kind == ringbuf.TPF_REL_LOC
    assert ringbuf.field_spec(fmt, "nope") == "its format has no field nope"
    assert "not a dynamic string" in ringbuf.field_spec(fmt, "comm2", string=True)
    assert "size 16" in ringbuf.field_spec(fmt, "comm2")


def test_btf_offsets_are_cached_on_disk(tmp_path, monkeypatch):
    if not Path(btf.VMLINUX).exists():
        pytest.skip("no kernel BTF here")
    monkeypatch.setenv("PYINSPECT_BPF_CACHE", str(tmp_path))
    monkeypatch.setattr(btf, "_results", {})
    monkeypatch.setattr(btf, "_parsed", {})
    first = btf.cached("task", btf._task_offsets)
    assert first and first["OFF_TASK_TGID"] > 0
    files = list(tmp_path.glob("btf-*.json"))
    assert len(files) == 1
    # a fresh process: the answer comes from the file, BTF is not parsed again
    monkeypatch.setattr(btf, "_results", {})
    monkeypatch.setattr(btf, "_parsed", {})

    def no_parse(data):
        raise AssertionError("BTF parsed although cached")

    monkeypatch.setattr(btf, "BTF", no_parse)
    assert btf.cached("task", btf._task_offsets) == first


@pytest.mark.root
def test_a_tracepoint_whose_format_lacks_a_field_is_skipped(monkeypatch):
    real = ringbuf.tp_format

    def without_old_pid(tracefs, tp):
        fmt = dict(real(tracefs, tp))
        if tp == "sched:sched_process_exec":
            fmt.pop("old_pid", None)
        return fmt

    monkeypatch.setattr(ringbuf, "tp_format", without_old_pid)
    with ProcessProbe(
        tracepoints={"sched:sched_process_exec": "PI_EXEC", "sched:sched_process_exit": "PI_EXIT"}
    ) as probe:
        assert probe.attached == ["sched:sched_process_exit"]
        assert (
            "process probe: skipped tracepoint sched:sched_process_exec: its format has "
            "no field old_pid (the probe reads it)"
        ) in probe.messages
        p = subprocess.run(["sh", "-c", "exit 3"], check=False)
        got = []
        for _ in range(50):
            got += probe.events(100)
            if any(e["kind"] == "exit" and e["detail"].get("exit_code") == 3 for e in got):
                break
        assert any(e["kind"] == "exit" and e["detail"].get("exit_code") == 3 for e in got), p
        assert not any(e["kind"] == "exec" for e in got)


def test_info_says_which_loader_each_probe_uses():
    from pyinspect.probes import capabilities

    rows = {r["probe"]: r for r in capabilities.probe_loaders()}
    for name in ("capture (tc)", "process events", "cgroup events", "drops (skb:kfree_skb)"):
        assert rows[name]["loader"] == "libbpf"
        assert rows[name]["object"]
    assert rows["hook detection (info)"]["loader"].startswith("bcc")
