"""What a killed trace left behind, found and removed by the next start.

A session records what it attached in `<root>/trace/<pid>.json` (and the previous nf_log
binding in `<pid>.nflog.json`); tcx links die with their process, clsact filters, TRACE
rules, nft tables and the binding do not.
"""

import contextlib
import json
import os
from pathlib import Path

from ..proc import pid_alive

STATE_DIR = "trace"


def state_dir(root):
    d = Path(root) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def cleanup_stale(root):
    """Undo what killed trace sessions left: tc filters, TRACE rules, the nf_log binding.

    Reads `<root>/trace/<pid>.json` of dead pids; also sweeps this namespace for
    pyinspect tc filters and TRACE rules whose owner is gone. Returns what was removed.
    """
    from pyinspect.probes import nftrace, packets

    removed = []
    d = Path(root) / STATE_DIR
    paths = {None}
    if d.is_dir():
        for f in d.glob("*.json"):
            if f.name.endswith((".nflog.json", ".nflog6.json")):
                continue
            try:
                pid = int(f.stem)
                st = json.loads(f.read_text())
            except (ValueError, OSError):
                continue
            if pid == os.getpid() or pid_alive(pid):
                continue
            for p in st.get("points", []):
                path = p.get("netns")
                if path and os.path.exists(path):
                    paths.add(path)
            removed += [
                f"tc filter: {r}"
                for r in packets.remove_stale_filters(sorted(paths, key=lambda x: x or ""))
            ]
            for p in st.get("points", []):
                path = p.get("netns")
                if (
                    p.get("added_clsact")
                    and (path is None or os.path.exists(path))
                    and packets.remove_clsact_if_empty(path, p["ifindex"])
                ):
                    removed.append(f"clsact qdisc on {p.get('name')}")
            for nfl in (d / f"{pid}.nflog.json", d / f"{pid}.nflog6.json"):
                if nfl.exists() and nftrace.restore_stale_binding(str(nfl)):
                    removed.append(f"nf_log binding restored (pid {pid})")
            for netns in {st.get("rules_netns")}:
                removed += [f"TRACE rule: {r}" for r in nftrace.remove_stale_rules(netns)]
                removed += [
                    f"TRACE rule: {r}"
                    for r in nftrace.remove_stale_rules(netns, "ip6tables-legacy")
                ]
            with contextlib.suppress(OSError):
                f.unlink()
    removed += [
        f"tc filter: {r}"
        for r in packets.remove_stale_filters(sorted(paths, key=lambda x: x or ""))
    ]
    removed += [f"TRACE rule: {r}" for r in nftrace.remove_stale_rules(None)]
    removed += [f"TRACE rule: {r}" for r in nftrace.remove_stale_rules(None, "ip6tables-legacy")]
    removed += [f"nft table: {t}" for t in nftrace.remove_stale_nft_tables(None)]
    return removed
