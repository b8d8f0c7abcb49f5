// SPDX-License-Identifier: GPL-2.0
/* Kernel side of tracer: uprobes on SSL_read/SSL_write (+ _ex) and SSL_free.
 *
 * Entry probes remember (SSL*, buf, out-pointer) per thread; return probes, on success only, copy
 * the bytes the call actually moved (return value or *readbytes / *written - never the buffer
 * size) into the ring buffer, in chunks, and return. Nothing here waits on user space.
 *
 * Compile-time knobs (set by tracer/probes/compile.py): RINGBUF_PAGES, COPY_LIMIT.
 */
#include <uapi/linux/ptrace.h>
#include "tracer_event.h"

#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 2048          /* 8 MiB */
#endif
#define CHUNK_MAX 65536             /* payload bytes per ring record (largest size class);
                                       * 64 KiB keeps the copy loop short for the verifier */
#ifndef COPY_LIMIT
#define COPY_LIMIT (1 << 20)        /* bytes copied per call; the rest is reported as a gap */
#endif
#define MAX_CHUNKS ((COPY_LIMIT + CHUNK_MAX - 1) / CHUNK_MAX)

struct call_args {
    u64 ssl;
    u64 buf;
    u64 outp;     /* size_t *readbytes / *written for the _ex variants, else 0 */
    u64 sp;       /* stack pointer at entry: tells a nested call from a stale entry */
    u32 depth;
    u8  dir;
    u8  ex;
};

/* What the whole chunks of one call did, counted once after them (fewer branches per chunk: the
 * verifier walks each chunk of the loop). */
struct full_chunks {
    u32 lost_events;
    u32 lost_bytes;
    u32 failed_bytes;
};

struct stream_key {
    u64 conn;
    u32 pid;
    u32 dir;
};

/* In-flight calls, keyed by (thread, direction): a read may run a write inside it (Node writes
 * pending request bytes from within SSL_read once the handshake completes), and both must be
 * reported; only a same-direction call inside another (SSL_write -> SSL_write_ex) is one transfer. */
struct active_key {
    u64 pid_tgid;
    u32 dir;
    u32 pad;
};

/* One entry per (thread, direction), reused in place: a call's entry is marked done (depth 0) at
 * its return instead of deleted, so the next call of that thread writes into it - one lookup per
 * probe instead of an insert at entry and a delete at return (the two most expensive steps of the
 * programs here: 270 -> 110 ns at entry, 830 -> 630 ns at return, bpf_stats on wrk). An LRU map, so
 * entries of threads that ended make room for new ones by themselves; twice the entries of the
 * largest thread count we expect, because an LRU map keeps part of its free entries per CPU. */
BPF_TABLE("lru_hash", struct active_key, struct call_args, active, 32768);
BPF_TABLE("lru_hash", struct stream_key, u64, offsets, 65536);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(drops, struct tracer_drops, 1);
/* Bytes submitted on this CPU since it last woke the consumer. Records are submitted without a
 * wake-up (the consumer drains the ring on a short timer); a CPU that has queued an eighth of the
 * ring forces one, so bursts never wait for the timer. One wake-up per ~1 MB instead of one per
 * record keeps the tracer off the CPUs the target is using. */
BPF_PERCPU_ARRAY(unwoken, u64, 1);
/* The followed processes (keyed by tgid); maintained by the process-tree section at the end. */
BPF_HASH(procs, u32, struct tracer_proc, 32768);

#define WAKE_BYTES ((u64)RINGBUF_PAGES * 4096 / 8)

/* Credential guard: the one gate between a traced process and the ring. Probes are attached per pid
 * and survive exec, so a traced process that exec's a setuid/setgid program would have that program's
 * plaintext copied - root's secrets handed to the user who asked for the trace. User space approves
 * each traced process (tracer/access.py: the kernel's ptrace rule) in `target_ids`, with the ids it was
 * checked against; data is copied only
 *   - for a process with an entry (a process tracer has not approved - a new child, a cgroup member
 *     not yet checked - is never copied),
 *   - not marked TRACER_GUARD_EXECED: a followed process that exec'd (proc_exec below) is copied again
 *     only once user space has checked the new program and approved it anew (it may be setuid now),
 *   - and, with TRACER_GUARD_CHECK, only while the calling thread's uid/euid/suid/fsuid and
 *     gid/egid/sgid/fsgid are exactly the approved ones and its process is dumpable: this closes the
 *     window before user space notices a setuid exec or a change of ids.
 * The kernel structure offsets come from the running kernel's BTF at run time
 * (tracer/probes/kcreds.py): the headers BCC compiles against may be another kernel's. What the guard
 * refuses is counted (drops.denied, and per process in its entry). */
BPF_ARRAY(cred_layout, struct tracer_cred_layout, 1);
BPF_HASH(target_ids, u32, struct tracer_target_ids, 16384);

#define SUID_DUMP_USER 1
#define MMF_DUMPABLE_MASK 3

static __always_inline int may_copy(struct tracer_target_ids *t)
{
    if (!t || (t->flags & TRACER_GUARD_EXECED))
        return 0;
    if (!(t->flags & TRACER_GUARD_CHECK))
        return 1;
    int zero = 0;
    struct tracer_cred_layout *l = cred_layout.lookup(&zero);
    if (!l || !l->cred_uid)
        return 0;                       /* checking asked for, offsets unknown: refuse */
    u64 task = bpf_get_current_task();
    u64 cred = 0, mm = 0, flags = 0;
    u32 ids[8] = {};
    if (bpf_probe_read_kernel(&cred, sizeof(cred), (void *)(task + l->task_real_cred)) || !cred)
        return 0;
    if (bpf_probe_read_kernel(ids, sizeof(ids), (void *)(cred + l->cred_uid)))
        return 0;
    if (ids[0] != t->uid || ids[2] != t->uid || ids[4] != t->uid || ids[6] != t->uid ||
        ids[1] != t->gid || ids[3] != t->gid || ids[5] != t->gid || ids[7] != t->gid)
        return 0;
    if (bpf_probe_read_kernel(&mm, sizeof(mm), (void *)(task + l->task_mm)) || !mm)
        return 0;
    if (bpf_probe_read_kernel(&flags, sizeof(flags), (void *)(mm + l->mm_flags)))
        return 0;
    return (flags & MMF_DUMPABLE_MASK) == SUID_DUMP_USER;
}

static __always_inline void add_unwoken(u32 bytes)
{
    int zero = 0;
    u64 *w = unwoken.lookup(&zero);
    if (w)
        *w += bytes;
}

static __always_inline u64 wake_flag(u32 bytes)
{
    int zero = 0;
    u64 *w = unwoken.lookup(&zero);
    if (!w)
        return 0;
    *w += bytes + sizeof(struct tracer_event) + 8;
    if (*w < WAKE_BYTES)
        return BPF_RB_NO_WAKEUP;
    *w = 0;
    return BPF_RB_FORCE_WAKEUP;
}

static __always_inline void count_drop(u64 bytes, int truncated, int copy_fail)
{
    int zero = 0;
    struct tracer_drops *d = drops.lookup(&zero);
    if (!d)
        return;
    if (truncated) {
        d->truncated += bytes;
    } else if (copy_fail) {
        d->copy_fail += bytes;
    } else {
        d->events += 1;
        d->bytes += bytes;
    }
}

static __always_inline void count_chunks(struct full_chunks *fc)
{
    int zero = 0;
    struct tracer_drops *d = drops.lookup(&zero);
    if (!d)
        return;
    d->events += fc->lost_events;
    d->bytes += fc->lost_bytes;
    d->copy_fail += fc->failed_bytes;
}

static __always_inline void count_denied(u64 bytes)
{
    int zero = 0;
    struct tracer_drops *d = drops.lookup(&zero);
    if (d)
        d->denied += bytes;
}

static __always_inline int enter(struct pt_regs *ctx, u8 dir, u8 ex)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 sp = PT_REGS_SP(ctx);
    struct active_key k = {};
    k.pid_tgid = id;
    k.dir = dir;
    struct call_args *a = active.lookup(&k);
    if (a && a->depth && sp < a->sp) {
        /* a probed function called by another of the same direction: the outer call reports the
         * bytes (an entry left by a call whose return we never saw has a lower stack: replaced) */
        a->depth += 1;
        return 0;
    }
    struct call_args n = {};
    n.ssl = PT_REGS_PARM1(ctx);
    n.buf = PT_REGS_PARM2(ctx);
    n.outp = ex ? PT_REGS_PARM4(ctx) : 0;
    n.sp = sp;
    n.depth = 1;
    n.dir = dir;
    n.ex = ex;
    if (a)
        *a = n;                 /* this thread's entry, done or stale: written in place */
    else
        active.update(&k, &n);
    return 0;
}

static __always_inline void fill(struct tracer_event *e, struct call_args *c, u64 id, u64 now,
                                 u32 total, u32 off, u32 len, u64 stream_off)
{
    e->ts_ns = now;
    e->conn = c->ssl;
    e->stream_off = stream_off + off;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->total_len = total;
    e->offset = off;
    e->len = len;
    e->type = TRACER_EV_DATA;
    e->dir = c->dir;
    e->flags = c->ex ? TRACER_F_EX : 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

/* Copy len bytes (1 <= len <= mask + 1) into the record's payload. The mask keeps the verifier
 * convinced that the copy fits the reserved class. */
static __always_inline int copy_payload(struct tracer_event *e, u64 src, u32 len, u32 mask)
{
    u32 n = len - 1;
    asm volatile("" : "+r"(n));   /* hide n's known range so clang keeps the mask */
    n = (n & mask) + 1;
    return bpf_probe_read_user((void *)(e + 1), n, (void *)src);
}

static __always_inline void commit(struct tracer_event *e, int rc, struct call_args *c, u64 id, u64 now,
                                   u32 total, u32 limit, u32 off, u32 len, u64 base)
{
    fill(e, c, id, now, total, off, len, base);
    if (rc != 0) {
        e->flags |= TRACER_F_COPY_FAIL;     /* len stays: the consumer records it as a gap */
        count_drop(len, 0, 1);
    }
    if (off + len >= limit && total > limit)
        e->flags |= TRACER_F_TRUNCATED;
    events.ringbuf_submit(e, wake_flag(len));
}

/* One ring record: reserve the smallest payload class that fits `len` (1..CHUNK_MAX), copy,
 * submit. Reserve sizes must be constants, hence the classes; they are close together below 2 KiB,
 * where most records of API traffic are (a request head, one SSE event, a small JSON answer), so
 * that the ring holds as many of them as it can (a 300-byte read takes 576 bytes of ring, not 2 KiB).
 * (BCC rewrites map calls only outside macros, so the ladder is written out.) */
static __always_inline void emit(struct call_args *c, u64 id, u64 now, u32 total, u32 limit,
                                 u32 off, u32 len, u64 base)
{
    struct tracer_event *e;
    int rc;
    u64 src = c->buf + off;
    if (len <= 256) {
        e = events.ringbuf_reserve(sizeof(struct tracer_event) + 256);
        if (!e)
            goto drop;
        rc = copy_payload(e, src, len, 256 - 1);
    } else if (len <= 512) {
        e = events.ringbuf_reserve(sizeof(struct tracer_event) + 512);
        if (!e)
            goto drop;
        rc = copy_payload(e, src, len, 512 - 1);
    } else if (len <= 1024) {
        e = events.ringbuf_reserve(sizeof(struct tracer_event) + 1024);
        if (!e)
            goto drop;
        rc = copy_payload(e, src, len, 1024 - 1);
    } else if (len <= 2048) {
        e = events.ringbuf_reserve(sizeof(struct tracer_event) + 2048);
        if (!e)
            goto drop;
        rc = copy_payload(e, src, len, 2048 - 1);
    } else if (len <= 4096) {
        e = events.ringbuf_reserve(sizeof(struct tracer_event) + 4096);
        if (!e)
            goto drop;
        rc = copy_payload(e, src, len, 4096 - 1);
    } else if (len <= 16384) {
        e = events.ringbuf_reserve(sizeof(struct tracer_event) + 16384);
        if (!e)
            goto drop;
        rc = copy_payload(e, src, len, 16384 - 1);
    } else {
        e = events.ringbuf_reserve(sizeof(struct tracer_event) + CHUNK_MAX);
        if (!e)
            goto drop;
        rc = copy_payload(e, src, len, CHUNK_MAX - 1);
    }
    commit(e, rc, c, id, now, total, limit, off, len, base);
    return;
drop:
    count_drop(len, 0, 0);
}

/* A whole CHUNK_MAX chunk of a longer call (every chunk but the last): one class, no ladder, no
 * wake-up (the last chunk's record wakes the consumer when it is due, for all of them). */
static __always_inline void emit_full(struct call_args *c, u64 id, u64 now, u32 total, u32 off, u64 base,
                                      struct full_chunks *fc)
{
    struct tracer_event *e = events.ringbuf_reserve(sizeof(struct tracer_event) + CHUNK_MAX);
    if (!e) {
        fc->lost_events += 1;
        fc->lost_bytes += CHUNK_MAX;
        return;
    }
    int rc = bpf_probe_read_user((void *)(e + 1), CHUNK_MAX, (void *)(c->buf + off));
    fill(e, c, id, now, total, off, CHUNK_MAX, base);
    if (rc != 0) {
        e->flags |= TRACER_F_COPY_FAIL;     /* len stays: the consumer records it as a gap */
        fc->failed_bytes += CHUNK_MAX;
    }
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

static __always_inline int leave(struct pt_regs *ctx, u8 dir)
{
    u64 id = bpf_get_current_pid_tgid();
    struct active_key k = {};
    k.pid_tgid = id;
    k.dir = dir;
    struct call_args *a = active.lookup(&k);
    if (!a || !a->depth)
        return 0;               /* a call whose entry was not seen (begun before the probes) */
    if (a->depth > 1) {
        a->depth -= 1;
        return 0;
    }
    struct call_args c = *a;
    a->depth = 0;               /* done; the entry stays for the thread's next call */

    long ret = PT_REGS_RC(ctx);
    u64 moved = 0;
    if (c.ex) {
        if ((int)ret != 1 || !c.outp)
            return 0;
        size_t v = 0;
        if (bpf_probe_read_user(&v, sizeof(v), (void *)c.outp) != 0)
            return 0;
        moved = v;
    } else {
        if ((int)ret <= 0)
            return 0;       /* error / want-read / want-write: nothing moved (Node retries) */
        moved = (u32)(int)ret;
    }
    if (moved == 0 || moved > 0x7fffffff)
        return 0;
    u32 total = moved;
    u32 tgid = id >> 32;
    struct tracer_target_ids *ids = target_ids.lookup(&tgid);
    if (!may_copy(ids)) {
        if (ids)
            __sync_fetch_and_add(&ids->denied, 1);
        count_denied(total);
        return 0;
    }

    struct stream_key sk = {};
    sk.conn = c.ssl;
    sk.pid = id >> 32;
    sk.dir = c.dir;
    u64 base = 0;
    u64 *basep = offsets.lookup(&sk);
    if (basep) {                /* in place: an update would allocate a new LRU element */
        base = *basep;
        *basep = base + total;
    } else {
        u64 next = total;
        offsets.update(&sk, &next);
    }

    u64 now = bpf_ktime_get_ns();
    u32 limit = total < COPY_LIMIT ? total : COPY_LIMIT;
    if (total > limit)
        count_drop(total - limit, 1, 0);

    /* Every chunk but the last is CHUNK_MAX long (emit_full, a short body); the last one takes the
     * smallest class that fits (emit, the ladder, once per call). The barrier hides off's
     * progression from clang, which otherwise folds the loop's two exits into one trip count
     * derived from limit - a bound the verifier cannot follow (LLVM 14 and 19 both: the program
     * was refused as too complex). */
    u32 off = 0;
    struct full_chunks fc = {};
    for (int i = 0; i < MAX_CHUNKS - 1; i++) {
        asm volatile("" : "+r"(off));
        if (limit - off <= CHUNK_MAX)
            break;
        emit_full(&c, id, now, total, off, base, &fc);
        off += CHUNK_MAX;
    }
    if (off) {
        count_chunks(&fc);
        add_unwoken(off - fc.lost_bytes);   /* the last chunk's record wakes the consumer for them */
    }
    emit(&c, id, now, total, limit, off, limit - off, base);
    return 0;
}

int probe_read_enter(struct pt_regs *ctx)     { return enter(ctx, TRACER_DIR_READ, 0); }
int probe_write_enter(struct pt_regs *ctx)    { return enter(ctx, TRACER_DIR_WRITE, 0); }
int probe_read_ex_enter(struct pt_regs *ctx)  { return enter(ctx, TRACER_DIR_READ, 1); }
int probe_write_ex_enter(struct pt_regs *ctx) { return enter(ctx, TRACER_DIR_WRITE, 1); }
int probe_read_return(struct pt_regs *ctx)    { return leave(ctx, TRACER_DIR_READ); }
int probe_write_return(struct pt_regs *ctx)   { return leave(ctx, TRACER_DIR_WRITE); }

int probe_free(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 ssl = PT_REGS_PARM1(ctx);
    if (!ssl)
        return 0;
    struct stream_key sk = {};
    sk.conn = ssl;
    sk.pid = id >> 32;
    sk.dir = TRACER_DIR_READ;
    offsets.delete(&sk);
    sk.dir = TRACER_DIR_WRITE;
    offsets.delete(&sk);

    struct tracer_event *e = events.ringbuf_reserve(sizeof(struct tracer_event));
    if (!e) {
        count_drop(0, 0, 0);
        return 0;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts_ns = bpf_ktime_get_ns();
    e->conn = ssl;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->type = TRACER_EV_CLOSE;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    events.ringbuf_submit(e, wake_flag(0));
    return 0;
}

/* ==== process tree ===========================================================================
 * Which processes are traced, following a traced process' new processes and execs (tracer run's
 * default, attach --children, attach --cgroup). User space owns the decisions; this side keeps the
 * set current at the moment things happen and holds a process still until its probes are in place:
 *
 *   task_newtask (parent's context, for every fork/clone on the machine: one hash lookup)
 *       a followed process made a process (not a thread): add the child, record FORK.
 *   uretprobe on libc's fork(), only in followed processes that have TLS probes (child's context:
 *   the kernel copies the pending return into the child, which then runs this on its way out)
 *       a NEW child is stopped (SIGSTOP) before it runs a single instruction of its own; STOP.
 *   sched_process_exec (the exec'ing process' context, for every exec on the machine)
 *       a followed process exec'd: stop it before the new program's first instruction, EXEC.
 *   sched_process_exit (every thread exit on the machine)
 *       a followed process' last thread ended: forget it, EXIT.
 *
 * A process is only stopped while the consumer shows signs of life (`follow`.alive_ns younger than
 * grace_ns): a tracer that is gone or hung never leaves new processes stopped; the ones it stopped
 * are resumed by its watchdog (tracer/processes/watchdog.py). */

#define CLONE_VM_FLAG     0x00000100
#define CLONE_THREAD_FLAG 0x00010000
#define SIGSTOP_NR        19
#define EXEC_NAME_MAX     TRACER_PROC_NAME_MAX

BPF_ARRAY(follow, struct tracer_follow, 1);
BPF_CGROUP_ARRAY(cgroups, 1);

/* tracepoint records (tracefs events/<category>/<name>/format; stable since Linux 3.x) */
struct tp_newtask_args {
    u64 common;
    s32 pid;
    char comm[16];
    u64 clone_flags;
};

struct tp_exec_args {
    u64 common;
    u32 filename_loc;      /* __data_loc: offset (low 16 bits) and length of the name */
    s32 pid;
    s32 old_pid;
};

struct tp_exit_args {
    u64 common;
    char comm[16];
    s32 pid;
    s32 prio;
#ifdef TRACER_EXIT_GROUP_DEAD
    u8 group_dead;         /* Linux 6.16+: the last thread of the process */
#endif
};

static __always_inline u64 follow_cfg(u32 *cgroup_mode)
{
    int zero = 0;
    struct tracer_follow *f = follow.lookup(&zero);
    if (!f)
        return 0;
    *cgroup_mode = f->cgroup;
    if (!f->alive_ns || bpf_ktime_get_ns() - f->alive_ns > f->grace_ns)
        return 0;
    return 1;
}

static __always_inline int in_followed_cgroup(u32 cgroup_mode)
{
    return cgroup_mode && cgroups.check_current_task(0) == 1;
}

static __always_inline void proc_record(u16 type, u32 pid, u32 tid, u32 ppid, u64 clone_flags, int stop,
                                        struct tracer_proc *p, const char *name_kernel, u32 name_len)
{
    u32 len = name_len < EXEC_NAME_MAX ? name_len : EXEC_NAME_MAX - 1;
    struct tracer_proc_event *e = events.ringbuf_reserve(sizeof(struct tracer_proc_event) + EXEC_NAME_MAX +
                                                         TRACER_PROC_PAD);
    if (!e) {
        count_drop(0, 0, 0);
        return;
    }
    e->ts_ns = bpf_ktime_get_ns();
    e->clone_flags = clone_flags;
    e->cgroup_id = bpf_get_current_cgroup_id();
    e->pid = pid;
    e->tid = tid;
    e->ppid = ppid;
    e->stop = stop;
    e->len = 0;
    e->type = type;
    e->state = p ? p->state : 0;
    e->flags = p ? p->flags : 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    if (name_kernel && len > 0 &&
        bpf_probe_read_kernel((void *)(e + 1), len & (EXEC_NAME_MAX - 1), name_kernel) == 0)
        e->len = len & (EXEC_NAME_MAX - 1);
    /* a stopped process waits for user space: wake the consumer now */
    events.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

int proc_newtask(struct tp_newtask_args *args)
{
    u64 cf = args->clone_flags;
    if (cf & CLONE_THREAD_FLAG)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tracer_proc *p = procs.lookup(&tgid);
    u32 flags;
    if (p) {
        if (!(p->flags & TRACER_PF_CHILDREN))
            return 0;
        flags = p->flags;
    } else {
        u32 cgroup_mode = 0;
        follow_cfg(&cgroup_mode);
        if (!in_followed_cgroup(cgroup_mode))
            return 0;
        flags = TRACER_PF_CHILDREN | TRACER_PF_CGROUP;
    }
    struct tracer_proc c = {};
    c.ppid = tgid;
    c.state = (cf & CLONE_VM_FLAG) ? TRACER_PROC_SHARED : TRACER_PROC_NEW;
    c.flags = (flags & (TRACER_PF_CHILDREN | TRACER_PF_CGROUP)) |
              ((flags & TRACER_PF_NO_STOP_KIDS) ? TRACER_PF_NO_STOP : 0);
    u32 child = args->pid;
    procs.update(&child, &c);
    proc_record(TRACER_EV_FORK, child, (u32)bpf_get_current_pid_tgid(), tgid, cf, 0, &c, 0, 0);
    return 0;
}

int proc_fork_return(struct pt_regs *ctx)
{
    if ((int)PT_REGS_RC(ctx) != 0)
        return 0;                  /* the parent's return from fork() */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct tracer_proc *p = procs.lookup(&tgid);
    if (!p || p->state != TRACER_PROC_NEW || (p->flags & TRACER_PF_NO_STOP))
        return 0;
    u32 cgroup_mode = 0;
    if (!follow_cfg(&cgroup_mode))
        return 0;
    int rc = bpf_send_signal(SIGSTOP_NR);
    if (rc == 0) {
        p->state = TRACER_PROC_STOPPED;
        p->stops += 1;
    }
    proc_record(TRACER_EV_STOP, tgid, tgid, p->ppid, 0, rc == 0 ? 1 : rc, p, 0, 0);
    return 0;
}

int proc_exec(struct tp_exec_args *args)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 cgroup_mode = 0;
    u64 alive = follow_cfg(&cgroup_mode);
    struct tracer_proc *p = procs.lookup(&tgid);
    if (!p) {
        if (!in_followed_cgroup(cgroup_mode))
            return 0;
        struct tracer_proc n = {};
        n.flags = TRACER_PF_CHILDREN | TRACER_PF_CGROUP;
        n.state = TRACER_PROC_EXECED;
        procs.update(&tgid, &n);
        p = procs.lookup(&tgid);
        if (!p)
            return 0;
    }
    /* a new program: nothing of it is copied until user space has checked and approved it again */
    struct tracer_target_ids *g = target_ids.lookup(&tgid);
    if (g)
        g->flags |= TRACER_GUARD_EXECED;
    int stop = 0;
    p->flags &= ~TRACER_PF_NO_STOP_KIDS;     /* a new program: user space looks at it again */
    if (!(p->flags & TRACER_PF_NO_STOP) && alive) {
        int rc = bpf_send_signal(SIGSTOP_NR);
        stop = rc == 0 ? 1 : rc;
    }
    if (stop == 1) {
        p->state = TRACER_PROC_STOPPED;
        p->stops += 1;
    } else {
        p->state = TRACER_PROC_EXECED;
    }
    u32 loc = args->filename_loc;
    proc_record(TRACER_EV_EXEC, tgid, (u32)args->old_pid, p->ppid, 0, stop, p,
                (const char *)args + (loc & 0xffff), loc >> 16);
    return 0;
}

int proc_exit(struct tp_exit_args *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
#ifdef TRACER_EXIT_GROUP_DEAD
    if (!args->group_dead)
        return 0;
#else
    if ((u32)id != tgid)
        return 0;                  /* the group leader's exit stands for the process' */
#endif
    struct tracer_proc *p = procs.lookup(&tgid);
    if (!p)
        return 0;
    struct tracer_proc last = *p;
    procs.delete(&tgid);
    proc_record(TRACER_EV_EXIT, tgid, (u32)id, last.ppid, 0, 0, &last, 0, 0);
    return 0;
}
