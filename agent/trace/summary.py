"""The end-of-trace summary: a dict (stored, --json) and its text lines."""

import re

from ..errors import UsageError


def parse_size(text):
    """'500M', '2G', '1024', '0' -> bytes (K/M/G/T are powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"bad --max-size {text!r}", "give bytes or a size like 500M or 2G")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def size_text(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_summary(s):
    """The end-of-trace summary as text lines."""
    lines = [
        f"--- trace of {s['container']}: {s['duration_s']}s, {s['flows']} flow(s), "
        f"{s['traced_packets']} packet(s) traced"
    ]
    for c in s["connections"]:
        lines.append(f"  {c}")
    if s.get("connections_not_listed"):
        lines.append(
            f"  ... and {s['connections_not_listed']} more that ended earlier (the store has "
            f"them: pyinspect pcap export --session {s['session_id']})"
        )
    hook = f" [{s['capture_hook']}]" if s.get("capture_hook") else ""
    lines.append(
        f"packets per capture point{hook}: in the files / seen / lost (ring full) / "
        f"capped (size cap); analysed / shed (over the analysis budget)"
    )
    for name, v in s["packets_per_point"].items():
        lines.append(
            f"  {name:<26} {v['captured']:>8} {v['seen']:>8} {v['lost']:>6} "
            f"{v['capped']:>6}; {v['analysed']:>8} {v['shed']:>8}"
        )
    files = s.get("pcap_files") or {}
    if files:
        lines.append(
            f"pcap files: {files['segments']} segment(s), {files['bytes']} bytes, "
            f"snaplen {files['snaplen']}, buffer {(files.get('buffer_per_cpu') or 0) >> 10} KiB "
            f"a CPU (pyinspect pcap export --session {s['session_id']})"
        )
    if s.get("netfilter_trace"):
        lines.append(f"netfilter trace: {s['netfilter_trace']}")
    lines.append("NAT translations: " + ("; ".join(s["nat"]) if s["nat"] else "none"))
    lines.append("drops: " + ("; ".join(s["drops"]) if s["drops"] else "none"))
    loss = s["loss"]
    if s.get("dns_lookups") or loss.get("dns_reports"):
        missed = loss.get("dns_reports")
        lines.append(
            f"dns lookups: {s.get('dns_lookups', 0)}"
            + (
                f" ({missed} embedded DNS report(s) missed: the trace read too slowly)"
                if missed
                else ""
            )
        )
    lines.append(
        f"loss: capture {loss['capture']} (ring full"
        + (": a larger -B/--buffer-size keeps more" if loss["capture"] else "")
        + f"), capped {loss['capped']}; "
        f"analysis: shed {loss['shed']} (--max-rate), lost {loss['analysis_lost']}; "
        f"drop events {loss['drops']}, conntrack overruns "
        f"{loss['conntrack_overruns']}, trace overruns {loss['trace_overruns']}"
    )
    if s.get("filtered_out"):
        lines.append(f"--filter left out {s['filtered_out']} captured packet(s)")
    for n in s.get("notes") or []:
        lines.append(f"note: {n}")
    if s.get("pcap"):
        lines.append(f"pcapng: {s['pcap']}")
    return lines
