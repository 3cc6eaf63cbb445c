// pyinspect packet capture (libbpf object, compiled once by clang: probes/bpfobj.py).
//
// tc ingress+egress programs (tcx links or clsact cls_bpf; always TC_ACT_UNSPEC, never
// alter the packet), one pair per capture point (pi_in_N / pi_eg_N: the point id is a
// constant). Filtered in the kernel to the traced container:
//   - points in ALL mode (the container's veth and eth0) take every frame;
//   - the others (uplinks, the bridge) take IPv4 packets whose src or dst is a container
//     address, whose dst/src ip:port is a published port (ip 0 = any), or that belong to
//     an outbound flow learned where the container's packets enter the host (`flows`:
//     peer ip:port and the local port, which MASQUERADE keeps unless it collides).
//     IPv6 the same way with maps of its own (`addrs6`, `ports6`, `flows6`), plus the
//     neighbour solicitations/advertisements whose target is a container address; only
//     frames that are not IPv4 take that branch, so the IPv4 path is unchanged.
//
// Two outputs per matched packet:
//   1. Evidence: every packet, up to the snaplen, as a pcapng Enhanced Packet Block in this
//      CPU's area of the `evbuf` array (mmapped by the reader), copied once, straight from
//      the skb (bpf_skb_load_bytes into the map value). Each CPU's area is a ring of
//      ring_bytes (a power of two) followed by EV_SLACK bytes: a block is never split, the
//      one that crosses the ring's end runs on into the slack, and the program notes where
//      it ended (`wrap_end`), so the reader knows where the next lap begins. The program
//      is the only writer of its CPU's area (tc runs with bottom halves off: programs on
//      one CPU do not nest) and takes no lock: it writes the block, then publishes its
//      end as `prod`; the reader appends [cons, prod) to a segment file as it is and
//      stores `cons`. A block that does not fit in what the reader has given back is
//      counted `lost` and leaves nothing. Each time a CPU has produced another quarter of
//      its ring it rings its bell (an 8-byte record in a one-page BPF ring buffer of its
//      own, for the reader's epoll).
//   2. Analysis: a short record (header + the first ASNAP bytes + where the evidence
//      block is in its CPU stream) into a ring buffer, within the reader's budget
//      (`ctl`): beyond it the packet is counted as shed; TCP SYN/FIN/RST draw on a second
//      budget, so bulk data cannot hide how connections start and end.
// Per point and CPU: seen, lost (evidence ring full), capped (evidence off: size cap),
// shed (analysis budget), alost (analysis ring full). seen == captured + lost + capped.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "packets.h"

char LICENSE[] SEC("license") = "GPL";

const volatile struct capture_config cfg = {};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __uint(key_size, sizeof(__u32));
    __uint(value_size, 4096 + EV_SLACK);    // ring_bytes + EV_SLACK, set at load
    __uint(max_entries, 1);                 // the possible CPUs, set at load
} evbuf SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __type(key, __u32);
    __type(value, struct evpos);
    __uint(max_entries, 1);                 // the possible CPUs, set at load
} evpos SEC(".maps");

struct bell {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, 1);                 // sized to the possible CPUs at load
    __type(key, __u32);
    __array(values, struct bell);
} evbells SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 22);           // sized at load
} arecs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, struct counters);
    __uint(max_entries, 1);
} stats SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, __u32);
    __type(value, struct ctl);
    __uint(max_entries, 1);
} ctl SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u32);
    __type(value, __u8);
    __uint(max_entries, 256);
} addrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct portkey);
    __type(value, __u8);
    __uint(max_entries, 1024);
} ports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, __u16);
    __type(value, __u8);
    __uint(max_entries, 64);
} portfilter SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, struct flowkey);
    __type(value, __u8);
    __uint(max_entries, 65536);
} flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct in6key);
    __type(value, __u8);
    __uint(max_entries, 256);
} addrs6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct portkey6);
    __type(value, __u8);
    __uint(max_entries, 1024);
} ports6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, struct flowkey6);
    __type(value, __u8);
    __uint(max_entries, 16384);
} flows6 SEC(".maps");

static __always_inline int is_addr(__u32 a)
{
    if (cfg.naddrs > NCONST_ADDRS)
        return bpf_map_lookup_elem(&addrs, &a) != 0;
#pragma unroll
    for (int i = 0; i < NCONST_ADDRS; i++) {
        if (i >= cfg.naddrs)
            break;
        if (a == cfg.addrs[i])
            return 1;
    }
    return 0;
}

// ip: the packet's address on the published side (network order); port: host order
static __always_inline int is_port(__u32 ip, __u16 port, __u8 proto)
{
    if (cfg.nports > NCONST_PORTS) {
        struct portkey pk = {.ip = ip, .port = port, .proto = proto};
        if (bpf_map_lookup_elem(&ports, &pk))
            return 1;
        pk.ip = 0;
        return bpf_map_lookup_elem(&ports, &pk) != 0;
    }
#pragma unroll
    for (int i = 0; i < NCONST_PORTS; i++) {
        if (i >= cfg.nports)
            break;
        if (port == cfg.ports[i].port && proto == cfg.ports[i].proto &&
            (cfg.ports[i].ip == 0 || cfg.ports[i].ip == ip))
            return 1;
    }
    return 0;
}

// The container's own ports of its published ports: its replies from them belong to
// inbound connections (matched on the uplinks as published), so they are not learned as
// outbound flows. With more than NCONST_PORTS, every flow is learned.
static __always_inline int is_container_port(__u16 port, __u8 proto)
{
    if (cfg.ncports > NCONST_PORTS)
        return 0;
#pragma unroll
    for (int i = 0; i < NCONST_PORTS; i++) {
        if (i >= cfg.ncports)
            break;
        if (port == cfg.cports[i].port && proto == cfg.cports[i].proto)
            return 1;
    }
    return 0;
}

static __always_inline int port_ok(__u16 sport, __u16 dport)
{
    if (!cfg.portfilter)
        return 1;
    return bpf_map_lookup_elem(&portfilter, &sport) || bpf_map_lookup_elem(&portfilter, &dport);
}

// The IPv4 header fields the filter needs, read in place when the linear data holds
// them, else with bpf_skb_load_bytes (non-linear skbs). 0: not IPv4 (or unreadable).
struct l3 {
    __u32 saddr, daddr, ihl;
    __u16 frag;
    __u8 proto;
};

static __always_inline int read_l3(struct __sk_buff *skb, struct l3 *h)
{
    void *d = (void *)(long)skb->data, *e = (void *)(long)skb->data_end;
    if (d + ETH_HLEN + sizeof(struct iphdr) <= e) {
        if (((struct ethhdr *)d)->h_proto != bpf_htons(ETH_P_IP))
            return 0;
        struct iphdr *iph = d + ETH_HLEN;
        h->saddr = iph->saddr;
        h->daddr = iph->daddr;
        h->proto = iph->protocol;
        h->frag = iph->frag_off;
        h->ihl = iph->ihl * 4;
        return 1;
    }
    __u16 eth_proto = 0;
    if (bpf_skb_load_bytes(skb, 12, &eth_proto, 2) < 0 || eth_proto != bpf_htons(ETH_P_IP))
        return 0;
    struct iphdr ip = {};
    if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
        return 0;
    h->saddr = ip.saddr;
    h->daddr = ip.daddr;
    h->proto = ip.protocol;
    h->frag = ip.frag_off;
    h->ihl = (ip.ihl & 0xf) * 4;
    return 1;
}

// -- IPv6 (only frames that are not IPv4 get here) ---------------------------------------
// `y` is read through cfg's own (volatile) lvalue: a plain pointer into the const
// config would let the compiler fold the loads to the zero initializer
#define SAME6(x, y) ((x)->a[0] == (y).a[0] && (x)->a[1] == (y).a[1] && \
                     (x)->a[2] == (y).a[2] && (x)->a[3] == (y).a[3])
#define ANY6(y) (((y).a[0] | (y).a[1] | (y).a[2] | (y).a[3]) == 0)

static __always_inline int is_addr6(const struct in6key *a)
{
    if (cfg.naddrs6 > NCONST_ADDRS6)
        return bpf_map_lookup_elem(&addrs6, a) != 0;
#pragma unroll
    for (int i = 0; i < NCONST_ADDRS6; i++) {
        if (i >= cfg.naddrs6)
            break;
        if (SAME6(a, cfg.addrs6[i]))
            return 1;
    }
    return 0;
}

static __always_inline int is_port6(const struct in6key *ip, __u16 port, __u8 proto)
{
    if (cfg.nports6 > NCONST_PORTS6) {
        struct portkey6 pk = {.ip = *ip, .port = port, .proto = proto};
        if (bpf_map_lookup_elem(&ports6, &pk))
            return 1;
        __builtin_memset(&pk.ip, 0, sizeof(pk.ip));
        return bpf_map_lookup_elem(&ports6, &pk) != 0;
    }
#pragma unroll
    for (int i = 0; i < NCONST_PORTS6; i++) {
        if (i >= cfg.nports6)
            break;
        if (port == cfg.ports6[i].port && proto == cfg.ports6[i].proto &&
            (ANY6(cfg.ports6[i].ip) || SAME6(ip, cfg.ports6[i].ip)))
            return 1;
    }
    return 0;
}

struct l3v6 {
    struct in6key saddr, daddr;
    __u32 l4;            // offset of the upper-layer header in the frame
    __u8 proto;          // its protocol (after the extension headers walked)
    __u8 frag;           // 1: a later fragment (no upper-layer header)
};

// The IPv6 header and up to V6_EXTHDRS extension headers. 0: not IPv6 (or unreadable).
static __always_inline int read_l3v6(struct __sk_buff *skb, struct l3v6 *h)
{
    // in place when the linear data holds the header (as read_l3), else copied
    void *d = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    __u8 nh;
    if (d + ETH_HLEN + sizeof(struct ipv6hdr) <= end) {
        if (((struct ethhdr *)d)->h_proto != bpf_htons(ETH_P_IPV6))
            return 0;
        struct ipv6hdr *iph = d + ETH_HLEN;
        __builtin_memcpy(&h->saddr, &iph->saddr, 16);
        __builtin_memcpy(&h->daddr, &iph->daddr, 16);
        nh = iph->nexthdr;
    } else {
        __u16 eth_proto = 0;
        if (bpf_skb_load_bytes(skb, 12, &eth_proto, 2) < 0 ||
            eth_proto != bpf_htons(ETH_P_IPV6))
            return 0;
        struct ipv6hdr ip;
        if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
            return 0;
        __builtin_memcpy(&h->saddr, &ip.saddr, 16);
        __builtin_memcpy(&h->daddr, &ip.daddr, 16);
        nh = ip.nexthdr;
    }
    __u32 off = ETH_HLEN + sizeof(struct ipv6hdr);
#pragma unroll
    for (int i = 0; i < V6_EXTHDRS; i++) {
        __u8 e[4] = {};
        if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS) {
            if (bpf_skb_load_bytes(skb, off & 0x3ff, e, 2) < 0)
                break;
            nh = e[0];
            off += (e[1] + 1) * 8;
        } else if (nh == IPPROTO_FRAGMENT) {
            if (bpf_skb_load_bytes(skb, off & 0x3ff, e, 4) < 0)
                break;
            nh = e[0];
            off += 8;
            if (((e[2] << 8) | e[3]) & 0xfff8)
                h->frag = 1;
        } else {
            break;
        }
    }
    h->proto = nh;
    h->l4 = off & 0x3ff;
    return 1;
}

static __always_inline int match6(struct __sk_buff *skb, const int mode, __u8 dir)
{
    struct l3v6 h = {};
    if (!read_l3v6(skb, &h))
        return mode != 0;
    __u16 sport = 0, dport = 0;
    if ((h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP) && !h.frag) {
        void *d = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
        __u16 *lp = d + h.l4;
        __u16 pp[2] = {};
        if ((void *)(lp + 2) <= end) {
            sport = bpf_ntohs(lp[0]);
            dport = bpf_ntohs(lp[1]);
        } else if (bpf_skb_load_bytes(skb, h.l4, pp, 4) == 0) {
            sport = bpf_ntohs(pp[0]);
            dport = bpf_ntohs(pp[1]);
        }
    }
    if (h.proto == IPPROTO_ICMPV6) {
        // neighbour discovery about a container address (to its solicited-node
        // multicast group or from the bridge's link-local address)
        if (!mode) {
            __u8 type = 0;
            struct in6key tgt;
            if (bpf_skb_load_bytes(skb, h.l4, &type, 1) == 0 && (type == 135 || type == 136) &&
                bpf_skb_load_bytes(skb, (h.l4 + 8) & 0x3ff, &tgt, sizeof(tgt)) == 0 &&
                is_addr6(&tgt))
                return 1;
        }
    } else if (!port_ok(sport, dport)) {
        return 0;
    }
    if (is_addr6(&h.saddr)) {
        if (sport && !is_addr6(&h.daddr) && !is_container_port(sport, h.proto)) {
            struct flowkey6 fk = {.peer_ip = h.daddr, .peer_port = dport,
                                  .local_port = sport, .proto = h.proto};
            __u8 one = 1;
            if (!bpf_map_lookup_elem(&flows6, &fk))
                bpf_map_update_elem(&flows6, &fk, &one, BPF_ANY);
        }
        return 1;
    }
    if (mode)
        return 1;
    if (is_addr6(&h.daddr))
        return 1;
    if (!sport)
        return 0;
    if (is_port6(&h.daddr, dport, h.proto) || is_port6(&h.saddr, sport, h.proto))
        return 1;
    struct flowkey6 fk = {.peer_ip = h.daddr, .peer_port = dport, .local_port = sport,
                          .proto = h.proto};
    if (bpf_map_lookup_elem(&flows6, &fk))
        return 1;
    fk.peer_ip = h.saddr;
    fk.peer_port = sport;
    fk.local_port = dport;
    return bpf_map_lookup_elem(&flows6, &fk) != 0;
}

// FIN, SYN, RST of the TCP flags byte at `off` (in place when the linear data holds it)
static __always_inline int tcp_flags(struct __sk_buff *skb, __u32 off)
{
    void *d = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    __u8 *fp = d + off;
    __u8 flags = 0;
    if ((void *)(fp + 1) <= end)
        flags = *fp;
    else if (bpf_skb_load_bytes(skb, off, &flags, 1) < 0)
        return 0;
    return flags & 0x07;
}

// A TCP/IPv6 packet that opens, closes or resets a connection.
static __always_inline int tcp_control6(struct __sk_buff *skb)
{
    struct l3v6 h = {};
    if (!read_l3v6(skb, &h) || h.proto != IPPROTO_TCP || h.frag)
        return 0;
    return tcp_flags(skb, (h.l4 + 13) & 0x3ff);
}

static __always_inline int match(struct __sk_buff *skb, const int mode, __u8 dir)
{
    // the container's interfaces carry only its traffic: take it without parsing, except
    // where the container's own packets enter the host (mode 2, ingress), which teaches
    // the uplink filter its outbound flows, and when --port narrows the capture
    if (mode && !cfg.portfilter && !(mode == 2 && dir == 0))
        return 1;
    struct l3 h = {};
    if (!read_l3(skb, &h))
        return match6(skb, mode, dir);
    __u16 sport = 0, dport = 0;
    if ((h.proto == IPPROTO_TCP || h.proto == IPPROTO_UDP) &&
        (h.frag & bpf_htons(0x1fff)) == 0) {
        // the ports in place when the linear data holds them (as read_l3's fields)
        __u32 off = (ETH_HLEN + h.ihl) & 0x7f;
        void *d = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
        __u16 *lp = d + off;
        __u16 pp[2] = {};
        if ((void *)(lp + 2) <= end) {
            sport = bpf_ntohs(lp[0]);
            dport = bpf_ntohs(lp[1]);
        } else if (bpf_skb_load_bytes(skb, off, pp, 4) == 0) {
            sport = bpf_ntohs(pp[0]);
            dport = bpf_ntohs(pp[1]);
        }
    }
    if (!port_ok(sport, dport) && h.proto != IPPROTO_ICMP)
        return 0;
    if (is_addr(h.saddr)) {
        // the container sends: remember the flow so its MASQUERADEd copy on the uplink
        // matches (not its replies from a published port: those match as published)
        if (sport && !is_addr(h.daddr) && !is_container_port(sport, h.proto)) {
            struct flowkey fk = {.peer_ip = h.daddr, .peer_port = dport,
                                 .local_port = sport, .proto = h.proto};
            __u8 one = 1;
            if (!bpf_map_lookup_elem(&flows, &fk))     // an LRU update costs more
                bpf_map_update_elem(&flows, &fk, &one, BPF_ANY);
        }
        return 1;
    }
    if (mode)
        return 1;
    if (is_addr(h.daddr))
        return 1;
    if (!sport)
        return 0;
    if (is_port(h.daddr, dport, h.proto) || is_port(h.saddr, sport, h.proto))
        return 1;
    struct flowkey fk = {.peer_ip = h.daddr, .peer_port = dport, .local_port = sport,
                         .proto = h.proto};
    if (bpf_map_lookup_elem(&flows, &fk))
        return 1;
    fk.peer_ip = h.saddr;
    fk.peer_port = sport;
    fk.local_port = dport;
    return bpf_map_lookup_elem(&flows, &fk) != 0;
}

// A TCP packet that opens, closes or resets a connection (IPv4 first fragment, or IPv6).
static __always_inline int tcp_control(struct __sk_buff *skb)
{
    struct l3 h = {};
    if (!read_l3(skb, &h))
        return tcp_control6(skb);
    if (h.proto != IPPROTO_TCP)
        return 0;
    return tcp_flags(skb, (ETH_HLEN + h.ihl + 13) & 0x7f);
}

// Write the evidence block into this CPU's area. Returns its position in this CPU's
// stream, or -1 when it did not fit or could not be copied (counted as lost).
static __always_inline __s64 evidence_out(struct __sk_buff *skb, __u32 cpu, __u32 point,
                                          __u8 dir, __u64 ts, __u32 caplen)
{
    if (caplen > EV_MAXCAP)                 // (the caller's bound, for the verifier)
        return -1;
    __u32 p4 = (caplen + 3) & ~3U;
    __u32 epb = 28 + p4 + 8 + 4 + 4;        // header, data, epb_flags, opt_endofopt, length
    struct evpos *ep = bpf_map_lookup_elem(&evpos, &cpu);
    __u8 *area = bpf_map_lookup_elem(&evbuf, &cpu);
    if (!ep || !area)
        return -1;
    __u64 pos = ep->prod;
    if (pos + epb - *(volatile __u64 *)&ep->cons > cfg.ring_bytes)
        return -1;                          // the reader has not given that much back
    __u32 off = pos & (cfg.ring_bytes - 1);
    __u32 *h = (__u32 *)(area + off);
    __u32 *t = (__u32 *)(area + off + 24 + p4);
    h[0] = 6;
    h[1] = epb;
    h[2] = point;
    h[3] = ts >> 32;
    h[4] = (__u32)ts;
    h[5] = caplen;
    h[6] = skb->len;
    t[0] = 0;                               // the data's last word: its padding stays 0
    __u32 n = ((caplen - 1) & (EV_MAXCAP - 1)) + 1;     // caplen, as the verifier sees it
    int ok = bpf_skb_load_bytes(skb, 0, area + off + 28, n) == 0;
    t[1] = 2 | (4 << 16);                   // epb_flags: inbound 1, outbound 2
    t[2] = dir ? 2 : 1;
    t[3] = 0;                               // opt_endofopt
    t[4] = epb;
    if (!ok)
        h[0] = FILLER_TYPE;                 // a local-use block readers skip: the chain stays whole
    __u64 prod = pos + epb;
    if (off + epb >= cfg.ring_bytes)
        ep->wrap_end = prod;                // the next block starts the next lap
    *(volatile __u64 *)&ep->prod = prod;    // after the block (x86 keeps stores in order)
    // ring the bell each time this CPU has produced another quarter of its ring (the
    // writer wakes on its own timer otherwise); ring_bytes is a power of two
    if ((pos ^ prod) >= cfg.ring_bytes / 4) {
        void *bell = bpf_map_lookup_elem(&evbells, &cpu);
        if (bell)
            bpf_ringbuf_output(bell, &prod, sizeof(prod), BPF_RB_FORCE_WAKEUP);
    }
    return ok ? pos : -1;
}

static __always_inline int capture(struct __sk_buff *skb, const __u32 point, const int mode,
                                   const __u8 dir)
{
    if (!match(skb, mode, dir))
        return TC_ACT_UNSPEC;
    __u32 zero = 0;
    struct counters *c = bpf_map_lookup_elem(&stats, &zero);
    struct ctl *b = bpf_map_lookup_elem(&ctl, &zero);
    if (!c || !b)
        return TC_ACT_UNSPEC;
    __u32 at = point * NCOUNT;
    c->v[(at + C_SEEN) % (MAX_POINTS * NCOUNT)] += 1;
    __u32 cpu = bpf_get_smp_processor_id();
    __u64 ts = bpf_ktime_get_ns() + b->clock_offset;
    __u32 len = skb->len;
    __u32 caplen = len < cfg.snaplen ? len : cfg.snaplen;
    if (caplen > EV_MAXCAP)
        caplen = EV_MAXCAP;
    __s64 pos = -1;
    if (!b->evidence) {
        c->v[(at + C_CAPPED) % (MAX_POINTS * NCOUNT)] += 1;
    } else if (caplen >= 1) {
        pos = evidence_out(skb, cpu, point, dir, ts, caplen);
        if (pos < 0)
            c->v[(at + C_LOST) % (MAX_POINTS * NCOUNT)] += 1;
    }
    if (b->limited) {
        // over the reader's budget: counted as shed, not analysed
        __s64 *tok = &b->tokens;
        if (*tok <= 0) {
            // the control budget first: spent, no packet needs parsing again
            tok = b->control > 0 && tcp_control(skb) ? &b->control : 0;
            if (!tok || *tok <= 0) {
                c->v[(at + C_SHED) % (MAX_POINTS * NCOUNT)] += 1;
                return TC_ACT_UNSPEC;
            }
        }
        __sync_fetch_and_add(tok, -1);
    }
    struct arec *r = bpf_ringbuf_reserve(&arecs, sizeof(struct arec), 0);
    if (!r) {
        c->v[(at + C_ALOST) % (MAX_POINTS * NCOUNT)] += 1;
        return TC_ACT_UNSPEC;
    }
    r->ts_ns = ts;
    r->stream_pos = pos;
    r->len = len;
    r->cpu = cpu;
    r->point = point;
    r->dir = dir;
    r->pad = 0;
    __u32 acap = caplen < ASNAP ? caplen : ASNAP;
    if (!acap || bpf_skb_load_bytes(skb, 0, r->data, ((acap - 1) & (ASNAP - 1)) + 1) < 0)
        acap = 0;
    r->caplen = acap;
    bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);   // the reader polls on a timer
    return TC_ACT_UNSPEC;
}

#define MODE_OF(n) (((cfg.all_points >> (n)) & 1) ? (((cfg.learn_points >> (n)) & 1) ? 2 : 1) : 0)
#define POINT_FN(n)                                                                    \
    SEC("tc") int pi_in_##n(struct __sk_buff *skb)                                     \
    { return capture(skb, n, MODE_OF(n), 0); }                                         \
    SEC("tc") int pi_eg_##n(struct __sk_buff *skb)                                     \
    { return capture(skb, n, MODE_OF(n), 1); }

POINT_FN(0) POINT_FN(1) POINT_FN(2) POINT_FN(3) POINT_FN(4) POINT_FN(5) POINT_FN(6)
POINT_FN(7) POINT_FN(8) POINT_FN(9) POINT_FN(10) POINT_FN(11) POINT_FN(12) POINT_FN(13)
POINT_FN(14) POINT_FN(15)
