/* One event header, shared by the BPF program (bpf/tracer.bpf.c) and the Python consumer
 * (tracer/capture/event.py parses this file to build its decoder, so there is one definition).
 *
 * Every record in the ring buffer is a struct tracer_event followed by `len` bytes of payload.
 * Keep fields naturally aligned and the struct a multiple of 8 bytes. Field types understood by
 * the Python side: u64, u32, u16, u8, char[N].
 */
#ifndef TRACER_EVENT_H
#define TRACER_EVENT_H

/* event types */
#define TRACER_EV_DATA   1   /* payload = plaintext of one successful SSL_read / SSL_write call (or a chunk of it) */
#define TRACER_EV_CLOSE  2   /* SSL_free: the connection key may be reused from now on */

/* directions (from the traced process' point of view) */
#define TRACER_DIR_READ  0
#define TRACER_DIR_WRITE 1

/* flags */
#define TRACER_F_TRUNCATED 0x1   /* call moved more than the per-call copy limit; the rest is a gap */
#define TRACER_F_COPY_FAIL 0x2   /* bpf_probe_read_user failed: no payload follows, `len` bytes lost */
#define TRACER_F_EX        0x4   /* came from an _ex variant */

struct tracer_event {
    u64 ts_ns;       /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the return of the call */
    u64 conn;        /* SSL* : the connection key, unique within the pid while the connection lives */
    u64 stream_off;  /* offset of this chunk in the connection's byte stream for `dir` */
    u32 pid;         /* tgid */
    u32 tid;
    u32 total_len;   /* bytes the whole call moved (return value / *readbytes / *written) */
    u32 offset;      /* offset of this chunk within the call */
    u32 len;         /* bytes of this chunk (payload follows unless TRACER_F_COPY_FAIL) */
    u16 type;        /* TRACER_EV_* */
    u8  dir;         /* TRACER_DIR_* */
    u8  flags;       /* TRACER_F_* */
    char comm[16];   /* thread name */
};

/* per-CPU drop counters (index 0), read by user space */
struct tracer_drops {
    u64 events;      /* ring-buffer reservations that failed */
    u64 bytes;       /* payload bytes those events would have carried */
    u64 truncated;   /* bytes beyond the per-call copy limit */
    u64 copy_fail;   /* chunks whose user memory could not be read */
    u64 denied;      /* bytes not copied: the thread's credentials are not the ones user space
                      * approved for its process (a setuid/setgid exec; see bpf/tracer.bpf.c) */
};

/* credential guard (bpf/tracer.bpf.c may_copy(), tracer/probes/kcreds.py) */
struct tracer_cred_layout {   /* kernel structure offsets, from the running kernel's BTF */
    u32 task_real_cred;       /* offsetof(struct task_struct, real_cred) */
    u32 cred_uid;             /* offsetof(struct cred, uid): uid gid suid sgid euid egid fsuid fsgid */
    u32 task_mm;              /* offsetof(struct task_struct, mm) */
    u32 mm_flags;             /* offsetof(struct mm_struct, flags): dumpability in bits 0-1 */
};

struct tracer_target_ids {    /* per traced process (key: tgid) */
    u32 uid;                  /* every uid of every thread must be this ... */
    u32 gid;                  /* ... every gid this, and the process dumpable */
    u32 check;                /* 0: no check (root invoked tracer, or --allow-other-users) */
    u32 denied;               /* calls not copied because of this check (read by user space) */
};

#endif
