// Shared by the libbpf tracepoint probes (process.bpf.c, cgroups.bpf.c, drops.bpf.c);
// probes/ringbuf.py and probes/btf.py mirror these structs with ctypes (the loader checks
// the .rodata size, tests check the member order).
//
// No kernel layout is compiled in:
//   - tracepoint fields are read at the offsets/sizes of the RUNNING kernel's tracefs
//     `format` file, which the loader puts in .rodata (struct tpf) before load: one object
//     serves every kernel, as bcc's generated structs did, without a compile per start;
//   - kernel struct fields (task_struct, sk_buff...) are read with bpf_probe_read_kernel at
//     byte offsets from the running kernel's BTF (probes/btf.py), also in .rodata.
// The verifier sees .rodata as constants, so branches on it (have_btf...) cost nothing.
#ifndef PYINSPECT_TRACEPOINT_H
#define PYINSPECT_TRACEPOINT_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

typedef __u64 u64;
typedef __s64 s64;
typedef __u32 u32;
typedef __s32 s32;
typedef __u16 u16;
typedef __u8 u8;

// One tracepoint field, from tracefs: size 0 = not in this kernel's format.
#define TPF_UNSIGNED 0
#define TPF_SIGNED 1
#define TPF_REL_LOC 2   // __rel_loc string: the offset counts from the end of the field
struct tpf {
    u16 off;
    u8 size;
    u8 kind;
};

// A scalar field (up to 8 bytes, sign-extended when the format says signed).
static __always_inline s64 tp_read(void *ctx, u32 off, u32 size, u32 kind)
{
    u64 v = 0;
    if (size == 0 || size > 8)
        return 0;
    bpf_probe_read_kernel(&v, size, (char *)ctx + off);
    if (kind == TPF_SIGNED && size < 8) {
        u32 sh = 64 - 8 * size;
        return ((s64)(v << sh)) >> sh;
    }
    return (s64)v;
}
#define TP_READ(ctx, f) tp_read((ctx), (f).off, (f).size, (f).kind)

// A __data_loc (or __rel_loc) string field into dst[n].
static __always_inline void tp_str(void *ctx, u32 off, u32 size, u32 kind, char *dst, u32 n)
{
    u32 loc = 0;
    if (size != 4)
        return;
    bpf_probe_read_kernel(&loc, sizeof(loc), (char *)ctx + off);
    u32 where = loc & 0xFFFF;
    if (kind == TPF_REL_LOC)
        where += off + 4;
    bpf_probe_read_kernel_str(dst, n, (char *)ctx + where);
}
#define TP_STR(ctx, f, dst) tp_str((ctx), (f).off, (f).size, (f).kind, (dst), sizeof(dst))

// Byte offsets in the running kernel's structs, from BTF (probes/btf.py TASK_OFFSETS, in
// this order). have_btf 0: none known, the loader fills ppid/namespaces/argv from /proc.
struct task_offsets {
    u32 have_btf;
    u32 have_memcg;            // the optional memory cgroup chain below is known
    u32 task_real_parent;
    u32 task_tgid;
    u32 task_exit_code;
    u32 task_nsproxy;
    u32 task_thread_pid;
    u32 task_mm;
    u32 mm_arg_start;
    u32 mm_arg_end;
    u32 nsproxy_net;
    u32 nsproxy_mnt;
    u32 nsproxy_pid_children;
    u32 net_inum;
    u32 mntns_inum;
    u32 pidns_inum;
    u32 pid_level;
    u32 pid_numbers;
    u32 upid_ns;
    u32 size_upid;
    u32 task_cgroups;
    u32 cssset_subsys;
    u32 css_cgroup;
    u32 cgroup_kn;
    u32 kn_id;
    u32 memory_cgrp_id;
};

// The leading members of every process/cgroup record: who did it.
#define TASK_IDS_FIELDS \
    u64 ts_ns;        \
    u64 cgroup_id;    /* cgroup v2 id (bpf_get_current_cgroup_id) */ \
    u32 pid;          /* tgid */ \
    u32 tid;          \
    u32 ppid;         \
    u32 netns;        \
    u32 pidns;        \
    u32 mntns;        \
    char comm[16];

struct task_ids {
    TASK_IDS_FIELDS
};

static __always_inline void *kread_ptr(void *base, u64 off)
{
    void *p = 0;
    bpf_probe_read_kernel(&p, sizeof(p), (char *)base + off);
    return p;
}

static __always_inline u32 kread_u32(void *base, u64 off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

// The current task's pid/tid/comm/cgroup id from helpers and, with BTF offsets, its ppid
// and net/mnt/pid namespace inodes (what /proc/<pid>/ns shows).
static __always_inline void fill_task(struct task_ids *t, const volatile struct task_offsets *o)
{
    u64 id = bpf_get_current_pid_tgid();
    t->ts_ns = bpf_ktime_get_ns();
    t->pid = id >> 32;
    t->tid = (u32)id;
    t->cgroup_id = bpf_get_current_cgroup_id();
    t->ppid = 0;
    t->netns = t->pidns = t->mntns = 0;
    bpf_get_current_comm(&t->comm, sizeof(t->comm));
    if (!o->have_btf)
        return;
    void *task = (void *)bpf_get_current_task();
    void *parent = kread_ptr(task, o->task_real_parent);
    if (parent)
        t->ppid = kread_u32(parent, o->task_tgid);
    void *nsp = kread_ptr(task, o->task_nsproxy);
    if (nsp) {
        void *net = kread_ptr(nsp, o->nsproxy_net);
        if (net)
            t->netns = kread_u32(net, o->net_inum);
        void *mnt = kread_ptr(nsp, o->nsproxy_mnt);
        if (mnt)
            t->mntns = kread_u32(mnt, o->mntns_inum);
    }
    void *tpid = kread_ptr(task, o->task_thread_pid);
    if (tpid) {
        u32 level = kread_u32(tpid, o->pid_level);
        if (level < 32) {
            void *pns = kread_ptr(tpid, o->pid_numbers + (u64)level * o->size_upid + o->upid_ns);
            if (pns)
                t->pidns = kread_u32(pns, o->pidns_inum);
        }
    }
}

// Records the ring buffer could not take, per CPU (the loader sums them: `lost`).
#define LOST_COUNTER()                                   \
    struct {                                             \
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);         \
        __type(key, u32);                                \
        __type(value, u64);                              \
        __uint(max_entries, 1);                          \
    } lost SEC(".maps");                                 \
    static __always_inline void count_lost(void)         \
    {                                                    \
        u32 zero = 0;                                    \
        u64 *n = bpf_map_lookup_elem(&lost, &zero);      \
        if (n)                                           \
            (*n)++;                                      \
    }

#endif
