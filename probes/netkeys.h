// Keys shared by the BPF programs that filter on the traced container's published ports
// (packets.bpf.c through packets.h, drops.bpf.c) and by their loaders' ctypes mirrors
// (probes/packets.py _PortKey).
#ifndef PYINSPECT_NETKEYS_H
#define PYINSPECT_NETKEYS_H

#include <linux/types.h>

struct portkey {
    __u32 ip;        // network order; 0 = any address
    __u16 port;      // host order
    __u8 proto;
    __u8 pad;
};

#endif
