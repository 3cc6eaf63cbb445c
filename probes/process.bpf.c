// Process and namespace events: fork, exec, exit, clone/clone3/unshare/setns flags, OOM.
// A libbpf object, compiled once by clang into the cache (probes/bpfobj.py) and loaded by
// probes/process.py, which sets `cfg` (.rodata) before load:
//   - cfg.task: task_struct... offsets from the running kernel's BTF (have_btf 0: ppid,
//     exit code, namespaces and argv are filled in userspace from /proc);
//   - one struct tpf per tracepoint field used, from tracefs `format` (tracepoint.h);
//   - cfg.flags: CFG_* filters.
// Only the programs of tracepoints present in tracefs are loaded (libbpf autoload).
#include "tracepoint.h"

char LICENSE[] SEC("license") = "GPL";

#define K_FORK 1
#define K_EXEC 2
#define K_EXIT 3
#define K_CLONE 4
#define K_UNSHARE 5
#define K_SETNS 6
#define K_OOM 7

#define CLONE_THREAD_FLAG 0x00010000ULL
#define CLONE_NS_MASK 0x7E020080ULL  /* NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME */

#define CFG_THREADS 1      /* report thread creation/exit too */
#define CFG_ALL_CLONES 2   /* report clone syscalls without CLONE_NEW* flags too */
#define CFG_NS_FILTER 4    /* only tasks whose net or pid namespace is in ns_allow */

/* exec events: where argv came from and how complete it is (proc_event.flags) */
#define ARGV_ENTRY 1       /* read at execve()/execveat() entry from the caller's memory */
#define ARGV_TRUNCATED 2   /* more arguments or longer ones than fit */
#define ARGV_UNREADABLE 4  /* a pointer or string could not be read */
#define ARGV_MM 8          /* read from the new image's stack at exec (pages may be absent) */
#define ARGS_MAX 256       /* argv bytes kept (args[] is twice that for the verifier) */
#define ARGS_N 32          /* arguments read at most */

struct proc_config {
    struct task_offsets task;
    u64 flags;
    struct tpf fork_child_pid;
    struct tpf exec_old_pid;
    struct tpf exec_filename;
    struct tpf execve_argv;
    struct tpf execveat_argv;
    struct tpf clone_flags;
    struct tpf clone3_uargs;
    struct tpf unshare_flags;
    struct tpf setns_fd;
    struct tpf setns_nstype;
    struct tpf exit_group_code;
    struct tpf oom_pid;
    struct tpf oom_comm;
    struct tpf oom_total_vm;
    struct tpf oom_anon_rss;
    struct tpf oom_score_adj;
};

const volatile struct proc_config cfg = {};

struct proc_event {
    TASK_IDS_FIELDS     /* the current task (fork: pid/ppid rewritten to child/parent) */
    u64 flags;
    u32 kind;
    s32 exit_code;  /* raw task->exit_code, -1 when unknown */
    u32 other_pid;  /* fork: parent tgid; oom: invoking tgid */
    s32 aux;        /* exec: argv bytes in args; setns: fd; oom: oom_score_adj */
    u64 aux2;       /* oom: total_vm kB */
    u64 aux3;       /* oom: anon_rss kB */
    u64 memcg_id;   /* oom: id of the invoking task's memory cgroup (BTF), else 0 */
    char filename[128];
    char args[2 * ARGS_MAX];
};

/* argv as execve() was given it, kept per thread until sched_process_exec */
struct argv_buf {
    u32 len;
    u32 flags;
    char buf[2 * ARGS_MAX];
};

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, u32);
    __type(value, struct argv_buf);
    __uint(max_entries, 1024);
} pending_argv SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, u32);
    __type(value, struct argv_buf);
    __uint(max_entries, 1);
} argv_scratch SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 1 << 21);          /* sized at load (ring_pages) */
} events SEC(".maps");

LOST_COUNTER()

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, u32);
    __type(value, struct proc_event);
    __uint(max_entries, 1);
} scratch SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, u32);
    __type(value, u64);
    __uint(max_entries, 4096);
} pending_clone SEC(".maps");           /* tid -> clone flags, until sched_process_fork */

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __type(key, u32);
    __type(value, u8);
    __uint(max_entries, 1024);
} ns_allow SEC(".maps");                /* namespace inodes to report (CFG_NS_FILTER) */

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __type(key, u32);
    __type(value, s32);
    __uint(max_entries, 4096);
} exit_status SEC(".maps");             /* without BTF: tgid -> exit_group() code */

static __always_inline void fill_current(struct proc_event *e, u32 kind)
{
    fill_task((struct task_ids *)e, &cfg.task);
    e->kind = kind;
    e->exit_code = -1;
    e->flags = 0;
    e->other_pid = 0;
    e->aux = 0;
    e->aux2 = e->aux3 = 0;
    e->memcg_id = 0;
    e->filename[0] = 0;
    e->args[0] = 0;
}

static __always_inline struct proc_event *scratch_event(void)
{
    u32 zero = 0;
    return bpf_map_lookup_elem(&scratch, &zero);
}

static __always_inline int emit(struct proc_event *e)
{
    if (cfg.flags & CFG_NS_FILTER) {
        u32 net = e->netns, pid = e->pidns;
        if (!bpf_map_lookup_elem(&ns_allow, &net) && !bpf_map_lookup_elem(&ns_allow, &pid))
            return 0;
    }
    if (bpf_ringbuf_output(&events, e, sizeof(*e), 0) != 0)
        count_lost();
    return 0;
}

SEC("tracepoint/sched/sched_process_fork")
int tracepoint__sched__sched_process_fork(void *ctx)
{
    u32 tid = bpf_get_current_pid_tgid();
    u64 *pending = bpf_map_lookup_elem(&pending_clone, &tid);
    u64 flags = pending ? *pending : 0;
    if (pending)
        bpf_map_delete_elem(&pending_clone, &tid);
    if ((flags & CLONE_THREAD_FLAG) && !(cfg.flags & CFG_THREADS))
        return 0;
    struct proc_event *e = scratch_event();
    if (!e)
        return 0;
    fill_current(e, K_FORK);
    u32 child = TP_READ(ctx, cfg.fork_child_pid);
    e->other_pid = e->pid;    /* the forking process */
    if (!(flags & CLONE_THREAD_FLAG)) {
        e->ppid = e->pid;
        e->pid = child;       /* a new process: pid is the child */
    }                         /* a new thread: pid/ppid stay the process's */
    e->tid = child;
    e->flags = flags;
    if (cfg.task.have_btf) {
        /* the child lives in the forking task's pid_ns_for_children (unless CLONE_NEWPID,
           which userspace resolves from /proc) */
        void *nsp = kread_ptr((void *)bpf_get_current_task(), cfg.task.task_nsproxy);
        if (nsp) {
            void *pns = kread_ptr(nsp, cfg.task.nsproxy_pid_children);
            if (pns)
                e->pidns = kread_u32(pns, cfg.task.pidns_inum);
        }
    }
    return emit(e);
}

SEC("tracepoint/sched/sched_process_exec")
int tracepoint__sched__sched_process_exec(void *ctx)
{
    struct proc_event *e = scratch_event();
    if (!e)
        return 0;
    fill_current(e, K_EXEC);
    e->other_pid = TP_READ(ctx, cfg.exec_old_pid);
    TP_STR(ctx, cfg.exec_filename, e->filename);
    u32 old = e->other_pid;
    struct argv_buf *a = bpf_map_lookup_elem(&pending_argv, &old);
    if (a) {  /* read at entry, where the caller's pages were surely present */
        bpf_probe_read_kernel(&e->args, sizeof(e->args), a->buf);
        e->aux = a->len;
        e->flags = a->flags | ARGV_ENTRY;
        bpf_map_delete_elem(&pending_argv, &old);
    } else if (cfg.task.have_btf) {
        e->flags = ARGV_MM;
        void *task = (void *)bpf_get_current_task();
        void *mm = kread_ptr(task, cfg.task.task_mm);
        if (mm) {
            u64 start = 0, end = 0;
            bpf_probe_read_kernel(&start, sizeof(start), (char *)mm + cfg.task.mm_arg_start);
            bpf_probe_read_kernel(&end, sizeof(end), (char *)mm + cfg.task.mm_arg_end);
            /* a fixed-size read (environment strings follow argv, so it stays mapped);
               userspace keeps only the first (end - start) bytes */
            if (start && bpf_probe_read_user(&e->args, sizeof(e->args), (void *)start) != 0) {
                bpf_probe_read_user_str(&e->args, sizeof(e->args), (void *)start);
                e->flags |= ARGV_UNREADABLE;  /* pages of the new stack not present yet */
            }
            e->aux = (s32)(end - start);
        }
    }
    return emit(e);
}

/* argv at execve()/execveat() entry, as bcc's execsnoop reads it: the caller wrote these
   strings moments ago, so its pages are present (at sched_process_exec the new image's
   stack may not be yet). Kept per thread for sched_process_exec; a failed exec leaves an
   entry the thread's next exec replaces (LRU). */
static __always_inline int stash_argv(const char *const *argv)
{
    u32 zero = 0;
    struct argv_buf *a = bpf_map_lookup_elem(&argv_scratch, &zero);
    if (!a)
        return 0;
    a->len = 0;
    a->flags = 0;
    for (int i = 0; i < ARGS_N; i++) {
        const char *p = 0;
        if (bpf_probe_read_user(&p, sizeof(p), &argv[i]) != 0) {
            a->flags |= ARGV_UNREADABLE;
            break;
        }
        if (!p)
            break;
        if (a->len >= ARGS_MAX) {
            a->flags |= ARGV_TRUNCATED;
            break;
        }
        u32 off = a->len & (ARGS_MAX - 1);
        long n = bpf_probe_read_user_str(&a->buf[off], ARGS_MAX, p);
        if (n <= 0) {
            a->flags |= ARGV_UNREADABLE;
            break;
        }
        a->len = off + n;
        if (n == ARGS_MAX) {  /* one string filled the room: cut */
            a->flags |= ARGV_TRUNCATED;
            break;
        }
        if (i == ARGS_N - 1) {
            const char *next = 0;
            bpf_probe_read_user(&next, sizeof(next), &argv[i + 1]);
            if (next)
                a->flags |= ARGV_TRUNCATED;
        }
    }
    u32 tid = bpf_get_current_pid_tgid();
    bpf_map_update_elem(&pending_argv, &tid, a, BPF_ANY);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int tracepoint__syscalls__sys_enter_execve(void *ctx)
{
    return stash_argv((const char *const *)TP_READ(ctx, cfg.execve_argv));
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int tracepoint__syscalls__sys_enter_execveat(void *ctx)
{
    return stash_argv((const char *const *)TP_READ(ctx, cfg.execveat_argv));
}

SEC("tracepoint/sched/sched_process_exit")
int tracepoint__sched__sched_process_exit(void *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((u32)id != (id >> 32) && !(cfg.flags & CFG_THREADS))
        return 0;  /* a thread, not the process */
    struct proc_event *e = scratch_event();
    if (!e)
        return 0;
    fill_current(e, K_EXIT);
    if (cfg.task.have_btf) {
        void *task = (void *)bpf_get_current_task();
        e->exit_code = (s32)kread_u32(task, cfg.task.task_exit_code);
    } else {
        /* without BTF: the status the process passed to exit_group(), in wait() form;
           a death by signal stays unknown (-1) */
        u32 tgid = e->pid;
        s32 *st = bpf_map_lookup_elem(&exit_status, &tgid);
        if (st) {
            e->exit_code = (*st & 0xff) << 8;
            bpf_map_delete_elem(&exit_status, &tgid);
        }
    }
    return emit(e);
}

static __always_inline int on_clone_flags(u64 flags, u32 kind)
{
    u32 tid = bpf_get_current_pid_tgid();
    if (kind == K_CLONE)
        bpf_map_update_elem(&pending_clone, &tid, &flags, BPF_ANY);
    if (kind == K_CLONE && !(flags & CLONE_NS_MASK) && !(cfg.flags & CFG_ALL_CLONES))
        return 0;
    struct proc_event *e = scratch_event();
    if (!e)
        return 0;
    fill_current(e, kind);
    e->flags = flags;
    return emit(e);
}

SEC("tracepoint/syscalls/sys_enter_exit_group")
int tracepoint__syscalls__sys_enter_exit_group(void *ctx)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    s32 code = (s32)TP_READ(ctx, cfg.exit_group_code);
    bpf_map_update_elem(&exit_status, &tgid, &code, BPF_ANY);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_clone")
int tracepoint__syscalls__sys_enter_clone(void *ctx)
{
    return on_clone_flags((u64)TP_READ(ctx, cfg.clone_flags), K_CLONE);
}

SEC("tracepoint/syscalls/sys_enter_clone3")
int tracepoint__syscalls__sys_enter_clone3(void *ctx)
{
    u64 flags = 0;
    void *uargs = (void *)TP_READ(ctx, cfg.clone3_uargs);
    bpf_probe_read_user(&flags, sizeof(flags), uargs);  /* clone_args.flags */
    return on_clone_flags(flags, K_CLONE);
}

SEC("tracepoint/syscalls/sys_enter_unshare")
int tracepoint__syscalls__sys_enter_unshare(void *ctx)
{
    return on_clone_flags((u64)TP_READ(ctx, cfg.unshare_flags), K_UNSHARE);
}

SEC("tracepoint/syscalls/sys_enter_setns")
int tracepoint__syscalls__sys_enter_setns(void *ctx)
{
    struct proc_event *e = scratch_event();
    if (!e)
        return 0;
    fill_current(e, K_SETNS);
    e->flags = (u64)(u32)TP_READ(ctx, cfg.setns_nstype);
    e->aux = (s32)TP_READ(ctx, cfg.setns_fd);
    return emit(e);
}

SEC("tracepoint/oom/mark_victim")
int tracepoint__oom__mark_victim(void *ctx)
{
    struct proc_event *e = scratch_event();
    if (!e)
        return 0;
    fill_current(e, K_OOM);
    u32 victim = TP_READ(ctx, cfg.oom_pid);
    e->other_pid = e->pid;   /* the task whose allocation ran out */
    e->pid = victim;         /* the victim */
    e->tid = victim;
    e->aux = (s32)TP_READ(ctx, cfg.oom_score_adj);
    e->aux2 = TP_READ(ctx, cfg.oom_total_vm);
    e->aux3 = TP_READ(ctx, cfg.oom_anon_rss);
    if (cfg.task.have_memcg) {
        /* the memory cgroup that ran out: task->cgroups->subsys[memory]->cgroup->kn->id */
        void *task = (void *)bpf_get_current_task();
        void *cset = kread_ptr(task, cfg.task.task_cgroups);
        void *css = cset ? kread_ptr(cset, cfg.task.cssset_subsys +
                                     (u64)cfg.task.memory_cgrp_id * sizeof(void *)) : 0;
        void *cg = css ? kread_ptr(css, cfg.task.css_cgroup) : 0;
        void *kn = cg ? kread_ptr(cg, cfg.task.cgroup_kn) : 0;
        if (kn)
            bpf_probe_read_kernel(&e->memcg_id, sizeof(e->memcg_id), (char *)kn + cfg.task.kn_id);
    }
    TP_STR(ctx, cfg.oom_comm, e->filename);
    return emit(e);
}
