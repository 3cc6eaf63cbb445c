// pyinspect drops: skb:kfree_skb with the drop reason, filtered in the kernel to the traced
// addresses/ports in the trace's namespaces. A libbpf object, compiled once by clang into
// the cache (probes/bpfobj.py) and loaded by probes/drops.py, which sets `cfg` (.rodata)
// before load: the tracepoint's field offsets from tracefs `format`, the sk_buff /
// net_device / net offsets from the running kernel's BTF (never from header files), and
// the CONSUMED reason to skip.
#include "tracepoint.h"
#include "netkeys.h"          // struct portkey (shared with packets.h)
#include <linux/ip.h>
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
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u8 proto;
    u8 tcpflags;
    u16 pad;
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

SEC("tracepoint/skb/kfree_skb")
int tracepoint__skb__kfree_skb(void *ctx)
{
    if (TP_READ(ctx, cfg.protocol) != 0x0800)
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
    struct iphdr ip = {};
    if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) < 0)
        return 0;
    if (ip.version != 4)
        return 0;
    u16 pp[2] = {};
    u8 flags = 0;
    u32 ihl = (ip.ihl & 0xf) * 4;
    if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
        bpf_probe_read_kernel(pp, 4, head + nh + ihl);
        if (ip.protocol == IPPROTO_TCP)
            bpf_probe_read_kernel(&flags, 1, head + nh + ihl + 13);
    }
    u16 sport = bpf_ntohs(pp[0]), dport = bpf_ntohs(pp[1]);
    u32 saddr = ip.saddr, daddr = ip.daddr;
    int hit = bpf_map_lookup_elem(&addrs, &saddr) || bpf_map_lookup_elem(&addrs, &daddr);
    if (!hit && dport) {
        struct portkey pk = {.ip = daddr, .port = dport, .proto = ip.protocol};
        hit = bpf_map_lookup_elem(&ports, &pk) != 0;
        if (!hit) {
            pk.ip = 0;
            hit = bpf_map_lookup_elem(&ports, &pk) != 0;
        }
    }
    if (!hit)
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
    d->ts_ns = bpf_ktime_get_ns();
    d->location = (u64)TP_READ(ctx, cfg.location);
    d->reason = reason;
    d->saddr = saddr;
    d->daddr = daddr;
    d->sport = sport;
    d->dport = dport;
    d->proto = ip.protocol;
    d->tcpflags = flags;
    d->pad = 0;
    d->ifindex = ifindex;
    d->netns = inum;
    bpf_ringbuf_submit(d, BPF_RB_NO_WAKEUP);   // read by mmap on a timer
    return 0;
}
