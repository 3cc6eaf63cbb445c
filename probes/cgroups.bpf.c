// cgroup events: mkdir, rmdir, attach_task, on every hierarchy (v1 controllers and v2), and
// cgroup2's freezer: freeze, unfreeze (`cgroup.freeze` written: pause / unpause).
// A libbpf object, compiled once by clang into the cache (probes/bpfobj.py) and loaded by
// probes/cgroups.py, which sets `cfg` (.rodata) before load: the tracefs `format` offsets
// of the fields used (root = hierarchy id, id, level, path...) and the BTF offsets of
// tracepoint.h's fill_task. Only the programs of tracepoints present are loaded.
#include "tracepoint.h"

char LICENSE[] SEC("license") = "GPL";

#define K_MKDIR 1
#define K_RMDIR 2
#define K_ATTACH 3
#define K_FREEZE 4
#define K_UNFREEZE 5

struct dir_fields {
    struct tpf root;
    struct tpf id;
    struct tpf level;
    struct tpf path;
};

struct cg_config {
    struct task_offsets task;
    struct dir_fields mkdir;
    struct dir_fields rmdir;
    struct dir_fields attach;   /* dst_root, dst_id, dst_level, dst_path */
    struct tpf attach_pid;
    struct tpf attach_comm;
    struct dir_fields freeze;
    struct dir_fields unfreeze;
};

const volatile struct cg_config cfg = {};

struct cg_event {
    TASK_IDS_FIELDS      /* the task doing it (attach: pid is the moved task) */
    u64 id;              /* the cgroup's id */
    s32 root;            /* hierarchy id (0 = cgroup v2) */
    s32 level;
    u32 kind;
    u32 actor_pid;       /* attach: the task that wrote cgroup.procs */
    char path[192];
    char task_comm[16];  /* attach: comm of the moved task */
};

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 21);          /* sized at load (ring_pages) */
} events SEC(".maps");

LOST_COUNTER()

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, u32);
    __type(value, struct cg_event);
    __uint(max_entries, 1);
} scratch SEC(".maps");

static __always_inline struct cg_event *start_event(void *ctx, u32 kind,
                                                    const volatile struct dir_fields *f)
{
    u32 zero = 0;
    struct cg_event *e = bpf_map_lookup_elem(&scratch, &zero);
    if (!e)
        return 0;
    fill_task((struct task_ids *)e, &cfg.task);
    e->kind = kind;
    e->actor_pid = e->pid;
    e->path[0] = 0;
    e->task_comm[0] = 0;
    e->id = TP_READ(ctx, f->id);
    e->root = TP_READ(ctx, f->root);
    e->level = TP_READ(ctx, f->level);
    TP_STR(ctx, f->path, e->path);
    return e;
}

static __always_inline int emit(struct cg_event *e)
{
    if (bpf_ringbuf_output(&events, e, sizeof(*e), 0) != 0)
        count_lost();
    return 0;
}

SEC("tracepoint/cgroup/cgroup_mkdir")
int tracepoint__cgroup__cgroup_mkdir(void *ctx)
{
    struct cg_event *e = start_event(ctx, K_MKDIR, &cfg.mkdir);
    return e ? emit(e) : 0;
}

SEC("tracepoint/cgroup/cgroup_rmdir")
int tracepoint__cgroup__cgroup_rmdir(void *ctx)
{
    struct cg_event *e = start_event(ctx, K_RMDIR, &cfg.rmdir);
    return e ? emit(e) : 0;
}

SEC("tracepoint/cgroup/cgroup_attach_task")
int tracepoint__cgroup__cgroup_attach_task(void *ctx)
{
    struct cg_event *e = start_event(ctx, K_ATTACH, &cfg.attach);
    if (!e)
        return 0;
    u32 pid = TP_READ(ctx, cfg.attach_pid);
    if (pid != e->pid) {
        /* someone else's task moved: the task fields describe the writer */
        e->pid = pid;
        e->tid = pid;
        e->ppid = 0;
        e->netns = e->pidns = e->mntns = 0;
    }
    TP_STR(ctx, cfg.attach_comm, e->task_comm);
    return emit(e);
}

SEC("tracepoint/cgroup/cgroup_freeze")
int tracepoint__cgroup__cgroup_freeze(void *ctx)
{
    struct cg_event *e = start_event(ctx, K_FREEZE, &cfg.freeze);
    return e ? emit(e) : 0;
}

SEC("tracepoint/cgroup/cgroup_unfreeze")
int tracepoint__cgroup__cgroup_unfreeze(void *ctx)
{
    struct cg_event *e = start_event(ctx, K_UNFREEZE, &cfg.unfreeze);
    return e ? emit(e) : 0;
}
