// pyinspect drops: skb:kfree_skb with the drop reason, filtered in the kernel to the traced
// addresses/ports (IPv4 and IPv6) in the trace's namespaces. A libbpf object, compiled once by clang into
// the cache (probes/bpfobj.py) and loaded by probes/drops.py, which sets `cfg` (.rodata)
// before load: the tracepoint's field offsets from tracefs `format`, the sk_buff /
// net_device / net offsets from the running kernel's BTF (never from header files), and
// the CONSUMED reason to skip.
#include "tracepoint.h"
#include "netkeys.h"          // struct portkey (shared with packets.h)
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct drops_config {
    u32 skb_head;
    u32 skb_network_header;
    u32 skb_dev;
    u32 dev_ifindex;
    u32 dev_nd_net;
    u32 net_inum;
    u32 has_skip_reason;
    u32 skip_reason;
    struct tpf skbaddr;
    struct tpf location;
    struct tpf protocol;
    struct tpf reason;          /* size 0 on kernels without drop reasons */
};

const volatile struct drops_config cfg = {};

struct drop {
    u64 ts_ns;
    u64 location;
    u32 reason;
    u32 saddr[4];        // IPv4: saddr[0] only
    u32 daddr[4];
    u16 sport;
    u16 dport;
    u8 proto;
    u8 tcpflags;
    u8 family;           // 4 or 6
    u8 pad;
    u32 ifindex;
    u32 netns;
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 64 * 4096);
} drops SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, u32);
    __type(value, u8);
    __uint(max_entries, 64);
} addrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct portkey);
    __type(value, u8);
    __uint(max_entries, 256);
} ports SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct in6key);
    __type(value, u8);
    __uint(max_entries, 64);
} addrs6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, struct portkey6);
    __type(value, u8);
    __uint(max_entries, 256);
} ports6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, u32);
    __type(value, u8);
    __uint(max_entries, 64);
} netns_ok SEC(".maps");    /* the trace's namespaces; a drop elsewhere is not ours */

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __type(key, u32);
    __type(value, u64);
    __uint(max_entries, 2);
} dropstats SEC(".maps");   /* [0] matched, [1] lost */

static __always_inline void count(u32 k)
{
    u64 *v = bpf_map_lookup_elem(&dropstats, &k);
    if (v)
        __sync_fetch_and_add(v, 1);
}

// The IPv4 header's addresses, protocol and ports; 0 when not ours.
static __always_inline int ours4(unsigned char *l3, struct drop *d)
{
    struct iphdr ip = {};
    if (bpf_probe_read_kernel(&ip, sizeof(ip), l3) < 0 || ip.version != 4)
        return 0;
    u16 pp[2] = {};
    u32 ihl = (ip.ihl & 0xf) * 4;
    if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
        bpf_probe_read_kernel(pp, 4, l3 + ihl);
        if (ip.protocol == IPPROTO_TCP)
            bpf_probe_read_kernel(&d->tcpflags, 1, l3 + ihl + 13);
    }
    d->sport = bpf_ntohs(pp[0]);
    d->dport = bpf_ntohs(pp[1]);
    d->saddr[0] = ip.saddr;
    d->daddr[0] = ip.daddr;
    d->proto = ip.protocol;
    d->family = 4;
    u32 saddr = ip.saddr, daddr = ip.daddr;
    if (bpf_map_lookup_elem(&addrs, &saddr) || bpf_map_lookup_elem(&addrs, &daddr))
        return 1;
    if (!d->dport)
        return 0;
    struct portkey pk = {.ip = daddr, .port = d->dport, .proto = ip.protocol};
    if (bpf_map_lookup_elem(&ports, &pk))
        return 1;
    pk.ip = 0;
    return bpf_map_lookup_elem(&ports, &pk) != 0;
}

// The same for IPv6 (the upper-layer header right after the fixed header: TCP, UDP,
// ICMPv6; extension headers are not walked).
static __always_inline int ours6(unsigned char *l3, struct drop *d)
{
    struct ipv6hdr ip;
    if (bpf_probe_read_kernel(&ip, sizeof(ip), l3) < 0 || ip.version != 6)
        return 0;
    u16 pp[2] = {};
    if (ip.nexthdr == IPPROTO_TCP || ip.nexthdr == IPPROTO_UDP) {
        bpf_probe_read_kernel(pp, 4, l3 + sizeof(ip));
        if (ip.nexthdr == IPPROTO_TCP)
            bpf_probe_read_kernel(&d->tcpflags, 1, l3 + sizeof(ip) + 13);
    }
    d->sport = bpf_ntohs(pp[0]);
    d->dport = bpf_ntohs(pp[1]);
    __builtin_memcpy(d->saddr, &ip.saddr, 16);
    __builtin_memcpy(d->daddr, &ip.daddr, 16);
    d->proto = ip.nexthdr;
    d->family = 6;
    struct in6key s6, d6;
    __builtin_memcpy(&s6, &ip.saddr, 16);
    __builtin_memcpy(&d6, &ip.daddr, 16);
    // link-local and multicast traffic (neighbour discovery, MLD) is link control, like
    // ARP: not a flow's drop
    u32 ll = bpf_htonl(0xfe800000), llmask = bpf_htonl(0xffc00000), mc = bpf_htonl(0xff000000);
    if ((s6.a[0] & llmask) == ll || (d6.a[0] & llmask) == ll || (d6.a[0] & mc) == mc)
        return 0;
    if (bpf_map_lookup_elem(&addrs6, &s6) || bpf_map_lookup_elem(&addrs6, &d6))
        return 1;
    if (!d->dport)
        return 0;
    struct portkey6 pk = {.ip = d6, .port = d->dport, .proto = ip.nexthdr};
    if (bpf_map_lookup_elem(&ports6, &pk))
        return 1;
    __builtin_memset(&pk.ip, 0, sizeof(pk.ip));
    return bpf_map_lookup_elem(&ports6, &pk) != 0;
}

SEC("tracepoint/skb/kfree_skb")
int tracepoint__skb__kfree_skb(void *ctx)
{
    u16 l3proto = TP_READ(ctx, cfg.protocol);
    if (l3proto != 0x0800 && l3proto != 0x86DD)
        return 0;
    u32 reason = TP_READ(ctx, cfg.reason);
    if (cfg.has_skip_reason && reason == cfg.skip_reason)
        return 0;
    void *skb = (void *)TP_READ(ctx, cfg.skbaddr);
    unsigned char *head = 0;
    u16 nh = 0;
    bpf_probe_read_kernel(&head, sizeof(head), (char *)skb + cfg.skb_head);
    bpf_probe_read_kernel(&nh, sizeof(nh), (char *)skb + cfg.skb_network_header);
    if (!head || nh == 0xffff)
        return 0;
    struct drop h = {};
    if (!(l3proto == 0x0800 ? ours4(head + nh, &h) : ours6(head + nh, &h)))
        return 0;
    // where it was dropped: the device's namespace (0 when the skb has no device)
    int ifindex = 0;
    u32 inum = 0;
    void *dev = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), (char *)skb + cfg.skb_dev);
    if (dev) {
        bpf_probe_read_kernel(&ifindex, sizeof(ifindex), (char *)dev + cfg.dev_ifindex);
        void *net = 0;
        bpf_probe_read_kernel(&net, sizeof(net), (char *)dev + cfg.dev_nd_net);
        if (net)
            bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + cfg.net_inum);
    }
    // the same addresses in another namespace (another bridge, another test) are not ours
    if (inum && !bpf_map_lookup_elem(&netns_ok, &inum))
        return 0;
    count(0);
    struct drop *d = bpf_ringbuf_reserve(&drops, sizeof(struct drop), 0);
    if (!d) {
        count(1);
        return 0;
    }
    h.ts_ns = bpf_ktime_get_ns();
    h.location = (u64)TP_READ(ctx, cfg.location);
    h.reason = reason;
    h.ifindex = ifindex;
    h.netns = inum;
    __builtin_memcpy(d, &h, sizeof(h));
    bpf_ringbuf_submit(d, BPF_RB_NO_WAKEUP);   // read by mmap on a timer
    return 0;
}
