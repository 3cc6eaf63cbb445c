#!/usr/bin/env bash
# Installs everything pyinspect needs on a Debian 12 host, as root. Safe to rerun.
#   - Debian packages: bcc (python3-bpfcc), clang + libbpf (the capture programs are
#     compiled once and loaded with libbpf), kernel headers, iptables, iproute2,
#     busybox-static, conntrack, tcpdump, tshark, runc, iperf3; for the image tests
#     docker-registry (started by the tests on 127.0.0.1 only), skopeo, umoci,
#     apache2-utils (htpasswd -B); python3-seccomp (a test plays a kernel without
#     SO_NETNS_COOKIE); docker.io (dockerd + containerd, started by the tests
#     inside a network namespace of their own; the package's services stay disabled)
#   - /lib/modules/$(uname -r)/{build,source} -> the newest Debian headers when the
#     running kernel has none (tracepoint/tc programs only need the uapi + BTF)
#   - tracefs and debugfs mounted
#   - a venv in .venv (system site-packages, for bcc) with pyinspect installed editable
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (pyinspect needs namespaces, cgroups, eBPF and iptables)" >&2
  exit 1
fi

APT_PACKAGES=(python3-bpfcc bpfcc-tools linux-headers-amd64 python3-venv python3-dev
  iptables iproute2 busybox-static conntrack tcpdump tshark runc iperf3 make gcc procps
  kmod psmisc chromium chromium-driver nftables clang-14 libbpf-dev libbpf1 skopeo libc6-dev docker.io
  docker-registry apache2-utils umoci python3-seccomp)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  # docker.io's postinst would start dockerd and containerd (dockerd rewrites the host's
  # iptables at once), docker-registry's a registry on every interface: masked while the
  # packages install, disabled below.
  masked=()
  if command -v systemctl >/dev/null 2>&1; then
    for u in docker.service docker.socket containerd.service docker-registry.service; do
      [ -e "/lib/systemd/system/$u" ] || { systemctl mask "$u" >/dev/null 2>&1 && masked+=("$u"); }
    done
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "${#masked[@]}" -eq 0 ] || systemctl unmask "${masked[@]}" >/dev/null 2>&1 || true
fi

# docker-registry and docker.io are only for the tests, which start their own (the
# registry on 127.0.0.1, dockerd inside a network namespace of the test): the packages'
# services (a registry on every interface; dockerd and containerd rewriting the host's
# iptables) stay off. `disable` works without a running systemd; `stop` when one runs.
# (apt's policy-rc.d, where there is one, already kept them from starting on install.)
TEST_ONLY_UNITS=(docker-registry.service docker.service docker.socket containerd.service)
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable "${TEST_ONLY_UNITS[@]}" >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then
    systemctl stop "${TEST_ONLY_UNITS[@]}" >/dev/null 2>&1 || true
  fi
fi

# Kernel headers for bcc: link the newest installed Debian headers if the running kernel has none.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  if [ -n "$hdr" ] && [ -n "$common" ]; then
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
  fi
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing || true
mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug || true

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.pyinspect-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e . -r requirements-dev.txt
  touch "$stamp"
fi

# The libbpf BPF objects, compiled once into the cache (probes/bpfobj.py); a trace start
# then only loads them.
.venv/bin/python -m pyinspect.probes.bpfobj >/dev/null
# The running kernel's struct offsets from BTF, into the same cache (probes/btf.py), so the
# first probe start does not parse BTF (~0.3 s); a new kernel's are cached at its first start.
.venv/bin/python -m pyinspect.probes.prebuild >/dev/null || true

# Wireshark's extcap folder gets the launcher of `pyinspect extcap` (tshark -D and
# Wireshark list one interface per container); rewritten in place on a rerun.
.venv/bin/pyinspect extcap --install >/dev/null || echo "install.sh: note: no Wireshark extcap folder: pyinspect extcap not installed" >&2

# Byte-compile once: this environment may set PYTHONDONTWRITEBYTECODE, and every CLI call
# would otherwise recompile pyinspect (20-40 ms on the `run` start path).
.venv/bin/python -m compileall -q agent runtime probes web >/dev/null

# pip's console script runs site (the .pth files: 20-30 ms, most of it the editable
# install's import finder); this one starts Python with -S and `run` without click
# (agent/launch.py). Written after pip, which rewrites it on every reinstall.
.venv/bin/python -m pyinspect.launch --write-script .venv/bin/pyinspect
