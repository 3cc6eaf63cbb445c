// pyinspect packet capture: tc ingress+egress (tcx link or clsact cls_bpf, direct action,
// never alters the packet: always TC_ACT_UNSPEC). One program pair per capture point
// (POINT_FN(n)), so the point id and its mode are load-time constants. Filtered in the
// kernel to the traced container:
//   - points in mode ALL (the container's veth and eth0) take every frame;
//   - other points (uplinks, the bridge) take IPv4 packets whose src or dst is a container
//     address (`addrs`), whose dst/src ip:port is a published port (`ports`, ip 0 = any), or
//     that belong to an outbound flow learned when the container sent it (`flows`: the peer
//     ip:port and the local port, which MASQUERADE keeps unless it collides).
// Records go to a ring buffer (header + first caplen bytes); a failed reserve is counted
// per point in `stats` (lost), as is every matched packet (seen). With a reader budget
// (`ctl`: refilled by the reader), packets beyond it are counted as shed and not copied,
// so a flood costs the kernel a counter, not a ring buffer copy; TCP SYN/FIN/RST packets
// beyond it draw on a second budget first.
//
// Every ns a program adds to each run costs iperf3 ~0.06% of its throughput here
// (docs/trace.md), so the per-packet path is kept short: the point's mode, --port and the
// target are compiled in; the budget is one array value and the counters one per-CPU
// value; headers are read in place (bench/capture_runtime.py prices a change).
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/pkt_cls.h>

#ifndef SNAPLEN
#define SNAPLEN 160
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 4096
#endif
#define MAXCAP 16384
#define MAX_POINTS 32

// Point modes as bit masks over point ids: ALL_POINTS take every frame (the container's
// own interfaces), LEARN_POINTS (a subset) also learn the container's outbound flows on
// ingress, where its packets enter the host. PORTFILTER: --port narrows the capture.
#ifndef ALL_POINTS
#define ALL_POINTS 0
#endif
#ifndef LEARN_POINTS
#define LEARN_POINTS 0
#endif
#ifndef PORTFILTER
#define PORTFILTER 0
#endif
#define MODE_OF(n) (((ALL_POINTS >> (n)) & 1) ? (((LEARN_POINTS >> (n)) & 1) ? 2 : 1) : 0)

struct rec {
    u64 ts_ns;
    u32 len;
    u32 caplen;
    u16 point;
    u8 dir;        // 0 ingress, 1 egress
    u8 pad[5];
    u8 data[MAXCAP];
};

struct portkey {
    u32 ip;        // network order; 0 = any address
    u16 port;      // host order
    u8 proto;
    u8 pad;
};

struct flowkey {
    u32 peer_ip;   // network order
    u16 peer_port; // host order
    u16 local_port;
    u8 proto;
    u8 pad[3];
};

struct ctl {
    s64 tokens;    // records left in this budget period
    s64 control;   // TCP SYN/FIN/RST records left beyond `tokens`
    u32 limited;   // 0: no budget, every matched packet is copied
    u32 pad;
};

struct counters {
    u64 v[MAX_POINTS * 3];   // [point*3] seen, +1 lost, +2 shed
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(scratch, struct rec, 1);
BPF_PERCPU_ARRAY(stats, struct counters, 1);
BPF_ARRAY(ctl, struct ctl, 1);
BPF_HASH(addrs, u32, u8, 64);
BPF_HASH(ports, struct portkey, u8, 256);
BPF_HASH(portfilter, u16, u8, 64);              // with PORTFILTER: only these ports
BPF_TABLE("lru_hash", struct flowkey, u8, flows, 65536);

#ifndef NADDRS
#define NADDRS -1
#endif
#ifndef NPORTS
#define NPORTS -1
#endif
#define ADDR_IS(n) if (NADDRS > n && a == ADDR##n) return 1;
#define PORT_IS(n) if (NPORTS > n && port == PORT##n && proto == PPROTO##n && \
                       (PIP##n == 0 || PIP##n == ip)) return 1;
#ifndef ADDR0
#define ADDR0 0
#endif
#ifndef ADDR1
#define ADDR1 0
#endif
#ifndef ADDR2
#define ADDR2 0
#endif
#ifndef ADDR3
#define ADDR3 0
#endif
#ifndef PORT0
#define PORT0 0
#define PPROTO0 0
#define PIP0 0
#endif
#ifndef PORT1
#define PORT1 0
#define PPROTO1 0
#define PIP1 0
#endif
#ifndef PORT2
#define PORT2 0
#define PPROTO2 0
#define PIP2 0
#endif
#ifndef PORT3
#define PORT3 0
#define PPROTO3 0
#define PIP3 0
#endif
#ifndef PORT4
#define PORT4 0
#define PPROTO4 0
#define PIP4 0
#endif
#ifndef PORT5
#define PORT5 0
#define PPROTO5 0
#define PIP5 0
#endif
#ifndef PORT6
#define PORT6 0
#define PPROTO6 0
#define PIP6 0
#endif
#ifndef PORT7
#define PORT7 0
#define PPROTO7 0
#define PIP7 0
#endif

static __always_inline int is_addr(u32 a)
{
    if (NADDRS < 0)
        return addrs.lookup(&a) != 0;
    ADDR_IS(0) ADDR_IS(1) ADDR_IS(2) ADDR_IS(3)
    return 0;
}

// ip: the packet's address on the published side (network order); port: host order
static __always_inline int is_port(u32 ip, u16 port, u8 proto)
{
    if (NPORTS < 0) {
        struct portkey pk = {.ip = ip, .port = port, .proto = proto};
        if (ports.lookup(&pk))
            return 1;
        pk.ip = 0;
        return ports.lookup(&pk) != 0;
    }
    PORT_IS(0) PORT_IS(1) PORT_IS(2) PORT_IS(3) PORT_IS(4) PORT_IS(5) PORT_IS(6) PORT_IS(7)
    return 0;
}

// The container's own ports of its published ports (NCPORTS >= 0, as constants): its
// replies from them are the inbound connections' (matched on the uplinks by `ports`
// after un-NAT), so they are not learned as outbound flows.
#ifndef NCPORTS
#define NCPORTS -1
#endif
#define CPORT_IS(n) if (NCPORTS > n && port == CPORT##n && proto == CPPROTO##n) return 1;
#ifndef CPORT0
#define CPORT0 0
#define CPPROTO0 0
#endif
#ifndef CPORT1
#define CPORT1 0
#define CPPROTO1 0
#endif
#ifndef CPORT2
#define CPORT2 0
#define CPPROTO2 0
#endif
#ifndef CPORT3
#define CPORT3 0
#define CPPROTO3 0
#endif
#ifndef CPORT4
#define CPORT4 0
#define CPPROTO4 0
#endif
#ifndef CPORT5
#define CPORT5 0
#define CPPROTO5 0
#endif
#ifndef CPORT6
#define CPORT6 0
#define CPPROTO6 0
#endif
#ifndef CPORT7
#define CPORT7 0
#define CPPROTO7 0
#endif

static __always_inline int is_container_port(u16 port, u8 proto)
{
    CPORT_IS(0) CPORT_IS(1) CPORT_IS(2) CPORT_IS(3) CPORT_IS(4) CPORT_IS(5) CPORT_IS(6)
    CPORT_IS(7)
    return 0;
}

static __always_inline int port_ok(u16 sport, u16 dport)
{
    if (!PORTFILTER)
        return 1;
    return portfilter.lookup(&sport) || portfilter.lookup(&dport);
}

// Header bytes copied out: straight from the linear packet data when it holds them (no
// helper call), else through bpf_skb_load_bytes (non-linear skbs). The copy is byte by
// byte (no alignment is known), so the hot paths read the headers in place instead.
#define LOAD(skb, off, to, len) ({                                                   \
    void *_d = (void *)(long)(skb)->data, *_e = (void *)(long)(skb)->data_end;       \
    int _r = 0;                                                                      \
    if (_d + (off) + (len) <= _e)                                                    \
        __builtin_memcpy((to), _d + (off), (len));                                   \
    else                                                                             \
        _r = bpf_skb_load_bytes((skb), (off), (to), (len));                          \
    _r; })

static __always_inline int match(struct __sk_buff *skb, const int mode, u8 dir)
{
    // the container's interfaces carry only its traffic: take it without parsing, except
    // where the container's own packets enter the host (mode 2, ingress), which teaches
    // the uplink filter its outbound flows, and when --port narrows the capture
    if (mode && !PORTFILTER && !(mode == 2 && dir == 0))
        return 1;
    u32 saddr, daddr, ihl;
    u8 proto;
    u16 frag;
    void *d = (void *)(long)skb->data, *e = (void *)(long)skb->data_end;
    if (d + ETH_HLEN + sizeof(struct iphdr) <= e) {
        // the usual case: the headers are in the linear data, read in place (copying
        // them to the stack first made the filtered points' programs twice as slow)
        if (((struct ethhdr *)d)->h_proto != htons(ETH_P_IP))
            return mode != 0;
        struct iphdr *iph = d + ETH_HLEN;
        saddr = iph->saddr;
        daddr = iph->daddr;
        proto = iph->protocol;
        frag = iph->frag_off;
        ihl = iph->ihl * 4;
    } else {
        u16 eth_proto = 0;
        if (LOAD(skb, 12, &eth_proto, 2) < 0)
            return 0;
        if (eth_proto != htons(ETH_P_IP))
            return mode != 0;
        struct iphdr ip = {};
        if (LOAD(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
            return 0;
        saddr = ip.saddr;
        daddr = ip.daddr;
        proto = ip.protocol;
        frag = ip.frag_off;
        ihl = (ip.ihl & 0xf) * 4;
    }
    u16 sport = 0, dport = 0;
    if ((proto == IPPROTO_TCP || proto == IPPROTO_UDP) && (frag & htons(0x1fff)) == 0) {
        u32 l4 = (ETH_HLEN + ihl) & 0x7f;
        u16 pp[2] = {};
        if (LOAD(skb, l4, pp, 4) == 0) {
            sport = ntohs(pp[0]);
            dport = ntohs(pp[1]);
        }
    }
    if (!port_ok(sport, dport) && proto != IPPROTO_ICMP)
        return 0;
    if (is_addr(saddr)) {
        // the container sends: remember the flow so its MASQUERADEd copy on the uplink
        // matches (not its replies from a published port: those match as published)
        if (sport && !is_addr(daddr) && !is_container_port(sport, proto)) {
            struct flowkey fk = {.peer_ip = daddr, .peer_port = dport,
                                 .local_port = sport, .proto = proto};
            u8 one = 1;
            if (!flows.lookup(&fk))       // an LRU update costs more than a lookup
                flows.update(&fk, &one);
        }
        return 1;
    }
    if (mode)                     // the container's own interfaces: everything
        return 1;
    if (is_addr(daddr))
        return 1;
    if (!sport)
        return 0;
    if (is_port(daddr, dport, proto) || is_port(saddr, sport, proto))
        return 1;
    struct flowkey fk = {.peer_ip = daddr, .peer_port = dport, .local_port = sport,
                         .proto = proto};
    if (flows.lookup(&fk))
        return 1;
    fk.peer_ip = saddr;
    fk.peer_port = sport;
    fk.local_port = dport;
    if (flows.lookup(&fk))
        return 1;
    return 0;
}

// A TCP packet that opens, closes or resets a connection (IPv4, first fragment).
static __always_inline int tcp_control(struct __sk_buff *skb)
{
    void *d = (void *)(long)skb->data, *e = (void *)(long)skb->data_end;
    if (d + ETH_HLEN + sizeof(struct iphdr) <= e) {     // linear headers, read in place
        struct iphdr *iph = d + ETH_HLEN;
        if (((struct ethhdr *)d)->h_proto != htons(ETH_P_IP) || iph->protocol != IPPROTO_TCP)
            return 0;
        u8 *fl = d + ((ETH_HLEN + iph->ihl * 4 + 13) & 0x7f);
        if ((void *)(fl + 1) <= e)
            return *fl & 0x07;
    }
    u16 eth_proto = 0;
    u8 vihl = 0, proto = 0, flags = 0;
    if (LOAD(skb, 12, &eth_proto, 2) < 0 || eth_proto != htons(ETH_P_IP))
        return 0;
    if (LOAD(skb, ETH_HLEN, &vihl, 1) < 0 || LOAD(skb, ETH_HLEN + 9, &proto, 1) < 0 ||
        proto != IPPROTO_TCP)
        return 0;
    u32 off = (ETH_HLEN + (vihl & 0xf) * 4 + 13) & 0x7f;
    if (LOAD(skb, off, &flags, 1) < 0)
        return 0;
    return flags & 0x07;   // FIN, SYN, RST
}

static __always_inline int capture(struct __sk_buff *skb, u32 point, const int mode, u8 dir)
{
    if (!match(skb, mode, dir))
        return TC_ACT_UNSPEC;
    u32 zero = 0;
    struct counters *c = stats.lookup(&zero);
    if (!c)
        return TC_ACT_UNSPEC;
    u32 at = (point * 3) % (MAX_POINTS * 3);
    c->v[at] += 1;
    struct ctl *b = ctl.lookup(&zero);
    if (b && b->limited) {
        // over the reader's budget: count the packet as shed instead of copying it. A
        // connection's SYN/FIN/RST have their own budget, so a bulk flow's data cannot
        // crowd out how other connections start and end.
        s64 *tok = &b->tokens;
        if (*tok <= 0) {
            tok = tcp_control(skb) ? &b->control : 0;
            if (!tok || *tok <= 0) {
                c->v[(at + 2) % (MAX_POINTS * 3)] += 1;
                return TC_ACT_UNSPEC;
            }
        }
        __sync_fetch_and_add(tok, -1);
    }
    struct rec *r = scratch.lookup(&zero);
    if (!r)
        return TC_ACT_UNSPEC;
    u32 len = skb->len;
    u32 caplen = len;
    if (caplen > SNAPLEN)
        caplen = SNAPLEN;
    if (caplen > MAXCAP)
        caplen = MAXCAP;
    r->ts_ns = bpf_ktime_get_ns();
    r->len = len;
    r->point = point;
    r->dir = dir;
    caplen &= (MAXCAP * 2 - 1);
    if (caplen > MAXCAP || caplen < 1) {
        caplen = 0;
    } else if (bpf_skb_load_bytes(skb, 0, r->data, caplen) < 0) {
        caplen = 0;
    }
    r->caplen = caplen;
    u32 size = offsetof(struct rec, data) + caplen;
    if (size > sizeof(struct rec))
        return TC_ACT_UNSPEC;
    // BPF_RB_NO_WAKEUP: the reader polls the ring by mmap on a timer and never sleeps on it
    if (events.ringbuf_output(r, size, BPF_RB_NO_WAKEUP) < 0)
        c->v[(at + 1) % (MAX_POINTS * 3)] += 1;
    return TC_ACT_UNSPEC;
}

#define POINT_FN(n) \
    int pi_in_##n(struct __sk_buff *skb) { return capture(skb, n, MODE_OF(n), 0); } \
    int pi_eg_##n(struct __sk_buff *skb) { return capture(skb, n, MODE_OF(n), 1); }

#ifndef NPOINTS
#define NPOINTS 16
#endif
// only the programs a session uses are compiled (compile time grows with each pair)
POINT_FN(0)
#if NPOINTS > 1
POINT_FN(1)
#endif
#if NPOINTS > 2
POINT_FN(2)
#endif
#if NPOINTS > 3
POINT_FN(3)
#endif
#if NPOINTS > 4
POINT_FN(4)
#endif
#if NPOINTS > 5
POINT_FN(5)
#endif
#if NPOINTS > 6
POINT_FN(6)
#endif
#if NPOINTS > 7
POINT_FN(7)
#endif
#if NPOINTS > 8
POINT_FN(8)
#endif
#if NPOINTS > 9
POINT_FN(9)
#endif
#if NPOINTS > 10
POINT_FN(10)
#endif
#if NPOINTS > 11
POINT_FN(11)
#endif
#if NPOINTS > 12
POINT_FN(12)
#endif
#if NPOINTS > 13
POINT_FN(13)
#endif
#if NPOINTS > 14
POINT_FN(14)
#endif
#if NPOINTS > 15
POINT_FN(15)
#endif
