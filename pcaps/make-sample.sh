#!/usr/bin/env bash
# Re-creates pcaps/demo-dnat-snat.pcapng: the port-mapping demo (pyinspect demo) traced with pyinspect.
#   a container `test` (busybox httpd on :80) published as 8088:80 on a "host" network
#   namespace; "another machine" (a second namespace) fetches http://HOST:8088/ (DNAT in,
#   un-DNAT out) and the container fetches a page from an "upstream" namespace (SNAT by
#   MASQUERADE) while `pyinspect trace -w` follows the packets; then `pyinspect pcap
#   export` writes the stored capture. Run as root from the repository; removes
#   everything it made (namespaces pp-sample-*, the container, a temp state root).
set -euo pipefail
cd "$(dirname "$0")/.."
PI="$PWD/.venv/bin/pyinspect"
ROOT=$(mktemp -d /tmp/pp-sample.XXXXXX)
HOST=pp-sample-host CLIENT=pp-sample-client UPSTREAM=pp-sample-upstream
HOST_IP=10.204.0.1 CLIENT_IP=10.204.0.2 WAN_IP=10.205.0.1 UPSTREAM_IP=10.205.0.2
OUT="${1:-pcaps/demo-dnat-snat.pcapng}"

cleanup() {
  nsenter --net=/run/netns/$HOST "$PI" --root "$ROOT" rm -f test >/dev/null 2>&1 || true
  for ns in $UPSTREAM $CLIENT $HOST; do
    for pid in $(ip netns pids $ns 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del $ns 2>/dev/null || true
  done
  rm -rf "$ROOT"
}
trap cleanup EXIT

ip netns add $HOST
ip netns add $CLIENT
ip -n $HOST link set lo up
ip -n $CLIENT link set lo up
ip -n $HOST link add eth0 type veth peer name eth0 netns $CLIENT
ip -n $HOST addr add $HOST_IP/24 dev eth0
ip -n $CLIENT addr add $CLIENT_IP/24 dev eth0
ip -n $HOST link set eth0 up
ip -n $CLIENT link set eth0 up
ip netns add $UPSTREAM
ip -n $UPSTREAM link set lo up
ip -n $HOST link add wan0 type veth peer name eth0 netns $UPSTREAM
ip -n $HOST addr add $WAN_IP/24 dev wan0
ip -n $UPSTREAM addr add $UPSTREAM_IP/24 dev eth0
ip -n $HOST link set wan0 up
ip -n $UPSTREAM link set eth0 up
mkdir -p "$ROOT/www" && echo "upstream says hi" > "$ROOT/www/index.html"
ip netns exec $UPSTREAM busybox httpd -p 80 -h "$ROOT/www"

pi() { nsenter --net=/run/netns/$HOST "$PI" --root "$ROOT" "$@"; }
pi run -d --name test -p 8088:80 busybox httpd -f -p 80 -h /var/www
pi trace --container test --duration 6 -w "$ROOT/live.pcapng" > "$ROOT/trace.out" 2>&1 &
TRACE=$!
for _ in $(seq 100); do grep -q "Ctrl-C to stop" "$ROOT/trace.out" && break; sleep 0.1; done
ip netns exec $CLIENT busybox wget -q -O- http://$HOST_IP:8088/ >/dev/null
sleep 1
pi exec test wget -q -O- http://$UPSTREAM_IP/ >/dev/null
wait $TRACE
cat "$ROOT/trace.out"
pi pcap ls
pi pcap export --container test -o "$OUT"
capinfos "$OUT" | grep -E "Number of packets|Number of interfaces|Name =|Capture application"
tshark -r "$OUT" -T fields -e frame.interface_name -e ip.src -e tcp.srcport -e ip.dst \
  -e tcp.dstport -e frame.comment -Y tcp.flags.syn==1 2>/dev/null
