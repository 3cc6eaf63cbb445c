// pyinspect drops: skb:kfree_skb (tracepoint args from tracefs) with the drop reason,
// filtered in the kernel to the traced addresses/ports in the trace's namespaces. The packet headers are read
// through sk_buff fields whose offsets come from the running kernel's BTF
// (/sys/kernel/btf/vmlinux) and are passed as -D constants; never from header files.
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>

// bcc declares the tracepoint field as this enum; its values come from tracefs, not from here
enum skb_drop_reason { PI_SKB_DROP_REASON_ANY = 0 };

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

struct portkey {
    u32 ip;
    u16 port;
    u8 proto;
    u8 pad;
};

BPF_RINGBUF_OUTPUT(drops, 64);
BPF_HASH(addrs, u32, u8, 64);
BPF_HASH(ports, struct portkey, u8, 256);
BPF_HASH(netns_ok, u32, u8, 64); // the trace's namespaces; a drop elsewhere is not ours
BPF_ARRAY(dropstats, u64, 2);   // [0] matched, [1] lost

TRACEPOINT_PROBE(skb, kfree_skb)
{
    if (args->protocol != 0x0800)
        return 0;
    u32 reason = args->reason;
#ifdef SKIP_REASON
    if (reason == SKIP_REASON)
        return 0;
#endif
    void *skb = args->skbaddr;
    unsigned char *head = 0;
    u16 nh = 0;
    bpf_probe_read_kernel(&head, sizeof(head), skb + OFF_SKB_HEAD);
    bpf_probe_read_kernel(&nh, sizeof(nh), skb + OFF_SKB_NETWORK_HEADER);
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
    u16 sport = ntohs(pp[0]), dport = ntohs(pp[1]);
    int hit = addrs.lookup(&ip.saddr) || addrs.lookup(&ip.daddr);
    if (!hit && dport) {
        struct portkey pk = {.ip = ip.daddr, .port = dport, .proto = ip.protocol};
        hit = ports.lookup(&pk) != 0;
        if (!hit) {
            pk.ip = 0;
            hit = ports.lookup(&pk) != 0;
        }
    }
    if (!hit)
        return 0;
    // where it was dropped: the device's namespace (0 when the skb has no device)
    int ifindex = 0;
    u32 inum = 0;
    void *dev = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), skb + OFF_SKB_DEV);
    if (dev) {
        bpf_probe_read_kernel(&ifindex, sizeof(ifindex), dev + OFF_DEV_IFINDEX);
        void *net = 0;
        bpf_probe_read_kernel(&net, sizeof(net), dev + OFF_DEV_ND_NET);
        if (net)
            bpf_probe_read_kernel(&inum, sizeof(inum), net + OFF_NET_INUM);
    }
    // the same addresses in another namespace (another bridge, another test) are not ours
    if (inum && !netns_ok.lookup(&inum))
        return 0;
    u32 k = 0;
    u64 *v = dropstats.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    struct drop *d = drops.ringbuf_reserve(sizeof(struct drop));
    if (!d) {
        k = 1;
        v = dropstats.lookup(&k);
        if (v)
            __sync_fetch_and_add(v, 1);
        return 0;
    }
    d->ts_ns = bpf_ktime_get_ns();
    d->location = (u64)args->location;
    d->reason = reason;
    d->saddr = ip.saddr;
    d->daddr = ip.daddr;
    d->sport = sport;
    d->dport = dport;
    d->proto = ip.protocol;
    d->tcpflags = flags;
    d->pad = 0;
    d->ifindex = ifindex;
    d->netns = inum;
    drops.ringbuf_submit(d, BPF_RB_NO_WAKEUP);   // read by mmap on a timer
    return 0;
}
