"""A state root's network lives in one netns: commands run elsewhere never write rules there."""

import subprocess

import pytest

from pyinspect.runtime import iptables

from conftest import Cli, unique

pytestmark = pytest.mark.root


def nat_rules(ns):
    out = ns.run(iptables.tool(iptables.backend(), kind="save"), "-t", "nat").stdout
    return [line for line in out.splitlines() if "pyinspect" in line]


def test_commands_in_another_netns_leave_its_tables_alone(make_netns, state_root):
    home, other = make_netns("pl-a"), make_netns("pl-b")
    at_home, elsewhere = Cli(state_root, netns=home.name), Cli(state_root, netns=other.name)
    name = unique("pl")
    at_home("run", "-d", "--name", name, "-p", "8088:80", "busybox", "httpd", "-f", "-p", "80")
    try:
        assert len(nat_rules(home)) >= 3
        for args in (["ps"], ["ps", "-a"], ["inspect", name], ["network", "ls"]):
            elsewhere(*args)
        assert nat_rules(other) == []
        assert "pyinspect0" not in other.run("ip", "link").stdout

        failed = elsewhere(
            "run",
            "-d",
            "--name",
            name + "b",
            "-p",
            "8089:80",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
            check=False,
        )
        assert failed.returncode == 4
        lines = failed.stderr.strip().splitlines()
        assert len(lines) == 1 and "live in another network namespace" in lines[0]
        assert nat_rules(other) == []
        elsewhere("rm", "-f", name + "b", check=False)
    finally:
        at_home("rm", "-f", name)
    assert nat_rules(home) == []

    # once nothing is set up at home, another namespace may take the network over
    at_other = unique("pl")
    elsewhere(
        "run", "-d", "--name", at_other, "-p", "8089:80", "busybox", "httpd", "-f", "-p", "80"
    )
    try:
        assert len(nat_rules(other)) >= 3
        assert nat_rules(home) == []
    finally:
        elsewhere("rm", "-f", at_other)
    assert nat_rules(other) == []
    assert (
        subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout.count(name)
        == 0
    )
