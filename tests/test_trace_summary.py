"""The end-of-trace summary's text: what it says of the files, the buffer and losses."""

from pyinspect.trace.summary import format_summary, parse_size


def summary(lost=0, capped=0):
    point = {"captured": 10 - lost, "seen": 10, "lost": lost, "capped": capped}
    point.update(analysed=10 - lost, shed=0)
    return {
        "container": "web",
        "duration_s": 1.0,
        "flows": 1,
        "traced_packets": 10,
        "connections": ["[1] tcp 10.0.0.2:40000 -> 10.0.0.1:8080"],
        "packets_per_point": {"vc0 (host veth)": point},
        "pcap_files": {"segments": 1, "bytes": 4096, "snaplen": 262144, "buffer_per_cpu": 64 << 20},
        "session_id": 7,
        "nat": [],
        "drops": [],
        "loss": {
            "capture": lost,
            "capped": capped,
            "shed": 0,
            "analysis_lost": 0,
            "drops": 0,
            "conntrack_overruns": 0,
            "trace_overruns": 0,
        },
        "notes": [],
    }


def test_files_line_names_the_buffer_and_the_export():
    lines = format_summary(summary())
    files = next(line for line in lines if line.startswith("pcap files: "))
    assert "snaplen 262144, buffer 65536 KiB a CPU" in files
    assert "pyinspect pcap export --session 7" in files


def test_capture_loss_points_at_the_buffer_option_only_when_there_is_loss():
    clean = next(line for line in format_summary(summary()) if line.startswith("loss: "))
    assert clean.startswith("loss: capture 0 (ring full), capped 0;"), clean
    lossy = next(line for line in format_summary(summary(lost=3)) if line.startswith("loss: "))
    assert lossy.startswith("loss: capture 3 (ring full: a larger -B/--buffer-size keeps more)")


def test_parse_size():
    assert parse_size("500M") == 500 << 20 and parse_size("2G") == 2 << 30
    assert parse_size("0") == 0 and parse_size("1.5KiB") == 1536
