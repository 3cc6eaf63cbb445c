// Keys shared by the BPF programs that filter on the traced container's published ports
// (packets.bpf.c through packets.h, drops.bpf.c) and by their loaders' ctypes mirrors
// (probes/packets.py _PortKey, _In6Key, _PortKey6).
#ifndef PYINSPECT_NETKEYS_H
#define PYINSPECT_NETKEYS_H

#include <linux/types.h>

struct portkey {
    __u32 ip;        // network order; 0 = any address
    __u16 port;      // host order
    __u8 proto;
    __u8 pad;
};

// An IPv6 address as four network-order words (the kernel's in6_addr), all zero = any.
struct in6key {
    __u32 a[4];
};

struct portkey6 {
    struct in6key ip;   // 0 = any address
    __u16 port;         // host order
    __u8 proto;
    __u8 pad;
};

#endif
