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

BPF_HASH(active, struct active_key, struct call_args, 16384);
BPF_TABLE("lru_hash", struct stream_key, u64, offsets, 65536);
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(drops, struct tracer_drops, 1);
/* Bytes submitted on this CPU since it last woke the consumer. Records are submitted without a
 * wake-up (the consumer drains the ring on a short timer); a CPU that has queued an eighth of the
 * ring forces one, so bursts never wait for the timer. One wake-up per ~1 MB instead of one per
 * record keeps the tracer off the CPUs the target is using. */
BPF_PERCPU_ARRAY(unwoken, u64, 1);

#define WAKE_BYTES ((u64)RINGBUF_PAGES * 4096 / 8)

/* Credential guard. Probes are attached per pid and survive exec, so a traced process that exec's a
 * setuid/setgid program would have that program's plaintext copied - root's secrets handed to the
 * user who asked for the trace. User space approves each traced process with the ids it was checked
 * against (tracer/access.py: the kernel's ptrace rule) and notices an exec within its watch interval;
 * this check closes that window: data is copied only while the calling thread's uid/euid/suid/fsuid
 * and gid/egid/sgid/fsgid are exactly the approved ones and its process is dumpable. The kernel
 * structure offsets come from the running kernel's BTF at run time (tracer/probes/kcreds.py): the
 * headers BCC compiles against may be another kernel's. A process without an entry is never copied. */
BPF_ARRAY(cred_layout, struct tracer_cred_layout, 1);
BPF_HASH(target_ids, u32, struct tracer_target_ids, 16384);

#define SUID_DUMP_USER 1
#define MMF_DUMPABLE_MASK 3

static __always_inline int may_copy(struct tracer_target_ids *t)
{
    if (!t)
        return 0;
    if (!t->check)
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
    if (a && sp < a->sp) {
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

/* One ring record: reserve the smallest payload class that fits `len` (1..CHUNK_MAX), copy,
 * submit. Reserve sizes must be constants, hence the classes. */
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
    } else if (len <= 2048) {
        e = events.ringbuf_reserve(sizeof(struct tracer_event) + 2048);
        if (!e)
            goto drop;
        rc = copy_payload(e, src, len, 2048 - 1);
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
    fill(e, c, id, now, total, off, len, base);
    if (rc != 0) {
        e->flags |= TRACER_F_COPY_FAIL;     /* len stays: the consumer records it as a gap */
        count_drop(len, 0, 1);
    }
    if (off + len >= limit && total > limit)
        e->flags |= TRACER_F_TRUNCATED;
    events.ringbuf_submit(e, wake_flag(len));
    return;
drop:
    count_drop(len, 0, 0);
}

static __always_inline int leave(struct pt_regs *ctx, u8 dir)
{
    u64 id = bpf_get_current_pid_tgid();
    struct active_key k = {};
    k.pid_tgid = id;
    k.dir = dir;
    struct call_args *a = active.lookup(&k);
    if (!a)
        return 0;
    if (a->depth > 1) {
        a->depth -= 1;
        return 0;
    }
    struct call_args c = *a;
    active.delete(&k);

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
    if (basep)
        base = *basep;
    u64 next = base + total;
    offsets.update(&sk, &next);

    u64 now = bpf_ktime_get_ns();
    u32 limit = total < COPY_LIMIT ? total : COPY_LIMIT;
    if (total > limit)
        count_drop(total - limit, 1, 0);

    for (int i = 0; i < MAX_CHUNKS; i++) {
        u32 off = i * CHUNK_MAX;
        if (off >= limit)
            break;
        u32 len = limit - off;
        if (len > CHUNK_MAX)
            len = CHUNK_MAX;
        emit(&c, id, now, total, limit, off, len, base);
    }
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
