// Shared by the tracepoint probes (#include "task_fields.bpf.c"): who did it.
// bcc rewrites map syntax (map.lookup) only in the main file, so no maps here.
//
// fill_task() records the current task's pid/tid/comm/cgroup id from BPF helpers and,
// when PI_HAVE_BTF is defined, its ppid and pid/net/mnt namespace inodes through
// bpf_probe_read_kernel at OFF_* offsets that probes/btf.py read from the RUNNING
// kernel's BTF (never from the installed headers, which belong to another kernel).
// Without BTF those fields stay 0 and userspace fills them from /proc.

// The leading members of every probe record (bcc's event() cannot decode a nested
// struct, so records spell them with TASK_IDS_FIELDS and fill_task() takes a cast).
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

static __always_inline void *kread_ptr(void *base, u64 off) {
    void *p = 0;
    bpf_probe_read_kernel(&p, sizeof(p), (char *)base + off);
    return p;
}

static __always_inline u32 kread_u32(void *base, u64 off) {
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (char *)base + off);
    return v;
}

static __always_inline void fill_task(struct task_ids *t) {
    u64 id = bpf_get_current_pid_tgid();
    t->ts_ns = bpf_ktime_get_ns();
    t->pid = id >> 32;
    t->tid = (u32)id;
    t->cgroup_id = bpf_get_current_cgroup_id();
    t->ppid = 0;
    t->netns = t->pidns = t->mntns = 0;
    bpf_get_current_comm(&t->comm, sizeof(t->comm));
#ifdef PI_HAVE_BTF
    void *task = (void *)bpf_get_current_task();
    void *parent = kread_ptr(task, OFF_TASK_REAL_PARENT);
    if (parent)
        t->ppid = kread_u32(parent, OFF_TASK_TGID);
    void *nsp = kread_ptr(task, OFF_TASK_NSPROXY);
    if (nsp) {
        void *net = kread_ptr(nsp, OFF_NSPROXY_NET);
        if (net)
            t->netns = kread_u32(net, OFF_NET_INUM);
        void *mnt = kread_ptr(nsp, OFF_NSPROXY_MNT);
        if (mnt)
            t->mntns = kread_u32(mnt, OFF_MNTNS_INUM);
    }
    void *tpid = kread_ptr(task, OFF_TASK_THREAD_PID);
    if (tpid) {
        u32 level = kread_u32(tpid, OFF_PID_LEVEL);
        if (level < 32) {
            void *pns = kread_ptr(tpid, OFF_PID_NUMBERS + (u64)level * SIZE_UPID + OFF_UPID_NS);
            if (pns)
                t->pidns = kread_u32(pns, OFF_PIDNS_INUM);
        }
    }
#endif
}
