// cgroup events: mkdir, rmdir, attach_task, on every hierarchy (v1 controllers and v2).
//
// Loaded by probes/cgroups.py with -D PI_<HOOK> per tracepoint present in tracefs,
// PI_RINGBUF_PAGES, and the BTF offsets of task_fields.bpf.c when available.
// Fields come from the tracepoint args (root = hierarchy id, id, level, path).
#include <uapi/linux/ptrace.h>
#include "task_fields.bpf.c"

#define K_MKDIR 1
#define K_RMDIR 2
#define K_ATTACH 3

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

BPF_RINGBUF_OUTPUT(events, PI_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(lost, u64, 1);  /* ring buffer writes that failed (buffer full) */
BPF_PERCPU_ARRAY(scratch, struct cg_event, 1);

static __always_inline void count_lost(void) {
    int zero = 0;
    u64 *n = lost.lookup(&zero);
    if (n)
        (*n)++;
}

static __always_inline struct cg_event *start_event(u32 kind) {
    int zero = 0;
    struct cg_event *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_task((struct task_ids *)e);
    e->kind = kind;
    e->actor_pid = e->pid;
    e->path[0] = 0;
    e->task_comm[0] = 0;
    return e;
}

static __always_inline int emit(struct cg_event *e) {
    if (events.ringbuf_output(e, sizeof(*e), 0) != 0)
        count_lost();
    return 0;
}

/* mkdir and rmdir carry the same fields (root, id, level, path) in their own structs */
static __always_inline int dir_event(u32 kind, void *args, s32 root, u64 id, s32 level,
                                     u32 data_loc_path) {
    struct cg_event *e = start_event(kind);
    if (!e)
        return 0;
    e->id = id;
    e->root = root;
    e->level = level;
    bpf_probe_read_kernel_str(&e->path, sizeof(e->path),
                              (char *)args + (data_loc_path & 0xFFFF));
    return emit(e);
}

#ifdef PI_MKDIR
TRACEPOINT_PROBE(cgroup, cgroup_mkdir) {
    return dir_event(K_MKDIR, args, args->root, args->id, args->level, args->data_loc_path);
}
#endif

#ifdef PI_RMDIR
TRACEPOINT_PROBE(cgroup, cgroup_rmdir) {
    return dir_event(K_RMDIR, args, args->root, args->id, args->level, args->data_loc_path);
}
#endif

#ifdef PI_ATTACH
TRACEPOINT_PROBE(cgroup, cgroup_attach_task) {
    struct cg_event *e = start_event(K_ATTACH);
    if (!e)
        return 0;
    e->id = args->dst_id;
    e->root = args->dst_root;
    e->level = args->dst_level;
    if (args->pid != e->pid) {
        /* someone else's task moved: the task fields describe the writer */
        e->pid = args->pid;
        e->tid = args->pid;
        e->ppid = 0;
        e->netns = e->pidns = e->mntns = 0;
    }
    bpf_probe_read_kernel_str(&e->path, sizeof(e->path),
                              (char *)args + (args->data_loc_dst_path & 0xFFFF));
    bpf_probe_read_kernel_str(&e->task_comm, sizeof(e->task_comm),
                              (char *)args + (args->data_loc_comm & 0xFFFF));
    return emit(e);
}
#endif
