"""`pyinspect version`: Docker's shape (a Client, a Server with Components), the running
kernel, the libraries' and tools' versions, and a missing one said as such."""

import json
import platform
import re
import subprocess

from conftest import PYINSPECT


def _version(*args):
    return subprocess.run(
        [PYINSPECT, "version", *args], capture_output=True, text=True, check=True
    ).stdout


def test_text_and_json_agree_with_the_host():
    data = json.loads(_version("--format", "json"))
    assert data["Server"]["KernelVersion"] == platform.release()
    comps = {c["Name"]: c["Version"] for c in data["Server"]["Components"]}
    assert comps["Engine"] == data["Client"]["Version"] == data["Server"]["Version"]
    iptables = subprocess.run(
        ["iptables-legacy", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"v{comps['iptables-legacy']} " in iptables, (comps, iptables)
    import bcc
    import scapy

    assert comps["bcc"] == bcc.__version__ and comps["scapy"] == scapy.VERSION
    text = _version()
    assert text.startswith("Client:\n Version:") and "\nServer:\n Engine:\n" in text
    assert f"  Kernel version:   {platform.release()}\n" in text
    assert re.search(r" nftables:\n  Version:          \d+\.\d+", text), text
    assert _version("--format", "{{.Server.KernelVersion}}") == platform.release() + "\n"


def test_a_missing_component_is_said():
    from pyinspect.host.versions import render, versions

    data = versions()
    data["Server"]["Components"].append({"Name": "nothing-here", "Version": ""})
    lines = render(data)
    assert lines[-2:] == [" nothing-here:", "  Version:          (not installed)"]
