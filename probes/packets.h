// Structs and constants shared by packets.bpf.c and its loader: probes/packets.py reads
// the integer #defines below from this file (probes/cdefs.py), mirrors the structs with
// ctypes and checks the .rodata size at load.
#ifndef PYINSPECT_PACKETS_H
#define PYINSPECT_PACKETS_H

#include "netkeys.h"        // struct portkey

#define MAX_POINTS 16
#define NCONST_ADDRS 8          // container addresses compiled in as constants
#define NCONST_PORTS 16         // published ports compiled in as constants
#define NCONST_ADDRS6 4         // container IPv6 addresses compiled in as constants
#define NCONST_PORTS6 8         // IPv6 published ports compiled in as constants
#define V6_EXTHDRS 3            // IPv6 extension headers walked to reach TCP/UDP/ICMPv6
#define EV_MAXCAP 262144        // evidence bytes per packet at most (tcpdump's default snaplen)
#define ASNAP 128               // bytes of each packet the analysis path sees
#define FILLER_TYPE 0x80000A11  // pcapng block type for local use: readers skip it
#define EV_SLACK 266240         // EV_MAXCAP + a page, past each CPU's ring: the block crossing its end
#define EV_POS_WORDS 16         // u64 words of struct evpos

// counters per point: seen == captured + lost + capped
#define C_SEEN 0
#define C_LOST 1                // evidence ring full
#define C_CAPPED 2              // evidence off: the size cap was reached
#define C_SHED 3                // over the analysis budget
#define C_ALOST 4               // analysis ring full
#define NCOUNT 5

struct cport {
    __u16 port;
    __u8 proto;
    __u8 pad;
};

struct flowkey {
    __u32 peer_ip;   // network order
    __u16 peer_port; // host order
    __u16 local_port;
    __u8 proto;
    __u8 pad[3];
};

struct flowkey6 {
    struct in6key peer_ip;
    __u16 peer_port;   // host order
    __u16 local_port;
    __u8 proto;
    __u8 pad[3];
};

// Set before load (.rodata): the verifier sees these as constants.
struct capture_config {
    __u32 all_points;     // bit n: point n takes every frame (the container's interfaces)
    __u32 learn_points;   // bit n: point n learns outbound flows on ingress
    __u32 portfilter;     // 1: only ports in `portfilter` (--port)
    __u32 snaplen;        // evidence bytes per packet
    __u32 ring_bytes;     // data size of each CPU's evidence ring buffer
    __u32 naddrs;         // > NCONST_ADDRS: look addresses up in `addrs`
    __u32 nports;         // > NCONST_PORTS: look ports up in `ports`
    __u32 ncports;        // > NCONST_PORTS: learn every outbound flow
    __u32 addrs[NCONST_ADDRS];
    struct portkey ports[NCONST_PORTS];
    struct cport cports[NCONST_PORTS];
    __u32 naddrs6;        // > NCONST_ADDRS6: look IPv6 addresses up in `addrs6`
    __u32 nports6;        // > NCONST_PORTS6: look IPv6 ports up in `ports6`
    struct in6key addrs6[NCONST_ADDRS6];
    struct portkey6 ports6[NCONST_PORTS6];
};

struct ctl {
    __s64 tokens;        // analysis records left in this budget period
    __s64 control;       // TCP SYN/FIN/RST records left beyond `tokens`
    __u32 limited;       // 0: no budget, every matched packet is analysed
    __u32 evidence;      // 0: write no evidence (size cap reached)
    __s64 clock_offset;  // CLOCK_REALTIME - CLOCK_MONOTONIC, ns
};

struct counters {
    __u64 v[MAX_POINTS * NCOUNT];
};

// One CPU's evidence positions (stream bytes from 0), in an mmapped array: the program
// writes prod and wrap_end, the reader cons (on a cache line of its own).
struct evpos {
    __u64 prod;          // committed: every record before it is whole
    __u64 wrap_end;      // where the last record that crossed the ring's end ended
    __u64 pad0[6];
    __u64 cons;          // the reader has written everything before it
    __u64 pad1[7];
};

struct arec {
    __u64 ts_ns;         // CLOCK_REALTIME
    __s64 stream_pos;    // the evidence record's position in its CPU's stream; -1: none
    __u32 len;
    __u32 caplen;
    __u32 cpu;
    __u16 point;
    __u8 dir;            // 0 ingress, 1 egress
    __u8 pad;
    __u8 data[ASNAP];
};

#endif
