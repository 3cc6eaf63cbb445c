"""`make install` provides every tool the suite starts: a test that finds one missing skips
itself, so without this check a machine set up by an incomplete install.sh runs green
while whole files (the registry's, the image tools') never ran."""

import glob
import shutil

import pytest

TOOLS = [
    # the image tests: Distribution's registry with a bcrypt htpasswd, skopeo, umoci
    "docker-registry",
    "htpasswd",
    "skopeo",
    "umoci",
    # runtimes whose containers pyinspect must show
    "runc",
    "dockerd",
    "containerd",
    "ctr",
    # packets and firewalls
    "tshark",
    "tcpdump",
    "conntrack",
    "nft",
    "iptables-nft",
    "iptables-legacy",
    "iperf3",
    "busybox",
    "unshare",
    # the dashboard's browser tests
    "chromium",
    "chromedriver",
]


@pytest.mark.parametrize("tool", TOOLS)
def test_install_provides(tool):
    assert shutil.which(tool), f"{tool} is missing: scripts/install.sh should install it"


def test_install_provides_wiresharks_sshdump():
    assert glob.glob("/usr/lib/*/wireshark/extcap/sshdump"), "wireshark-common's sshdump"
