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

/* struct tracer_target_ids.flags */
#define TRACER_GUARD_CHECK  0x1   /* check the ids (not when root invoked tracer, or --allow-other-users) */
#define TRACER_GUARD_EXECED 0x2   /* exec'd since approved (set by proc_exec): copy nothing until approved anew */

struct tracer_target_ids {    /* per approved process (key: tgid) */
    u32 uid;                  /* every uid of every thread must be this ... */
    u32 gid;                  /* ... every gid this, and the process dumpable */
    u32 flags;                /* TRACER_GUARD_* */
    u32 denied;               /* calls not copied by the guard (read by user space) */
};

/* ---- process tree: following a traced process' children (bpf/tracer.bpf.c, "process tree") ----
 * Process records share the ring with data records. They start with the same fields up to `type`
 * (ts_ns, two u64s, pid, tid, two u32s, len, type), so a reader can tell them apart by `type`. */
#define TRACER_EV_FORK   3   /* a followed process made a new process (not a thread) */
#define TRACER_EV_EXEC   4   /* a followed process exec'd; payload = the file name as exec was given it */
#define TRACER_EV_EXIT   5   /* a followed process ended (its last thread exited) */
#define TRACER_EV_STOP   6   /* a forked child was stopped on its way to its first instruction */
/* A process record takes sizeof(struct tracer_proc_event) + TRACER_PROC_NAME_MAX + TRACER_PROC_PAD
 * bytes of ring: a length no data record has (header + a power-of-two class, or header alone), so the
 * ring thread reads the type of those records only (tracer/capture/ring.py). */
#define TRACER_PROC_NAME_MAX 256
#define TRACER_PROC_PAD      8

/* struct tracer_proc.state */
#define TRACER_PROC_NEW     1   /* forked (own memory), probes not in place: stop it before it runs */
#define TRACER_PROC_READY   2   /* probes in place (or none needed) */
#define TRACER_PROC_STOPPED 3   /* stopped by the kernel side; user space resumes it (SIGCONT) */
#define TRACER_PROC_SHARED  4   /* shares its parent's memory (vfork, CLONE_VM): covered until exec */
#define TRACER_PROC_EXECED  5   /* exec'd and not stopped: user space attaches as soon as it can */

/* struct tracer_proc.flags */
#define TRACER_PF_CHILDREN     0x1   /* follow this process' new processes */
#define TRACER_PF_NO_STOP      0x2   /* never stop this process (its parent would see the stop) */
#define TRACER_PF_NO_STOP_KIDS 0x4   /* give this process' children TRACER_PF_NO_STOP (job-control shell) */
#define TRACER_PF_CGROUP       0x8   /* followed because it ran inside the --cgroup */

/* process record: stop = 1 stopped (SIGSTOP queued), 0 not stopped (see `flags`), < 0 the
 * error bpf_send_signal returned */
struct tracer_proc_event {
    u64 ts_ns;       /* bpf_ktime_get_ns() */
    u64 clone_flags; /* FORK: the clone flags */
    u64 cgroup_id;   /* cgroup v2 id of the process (bpf_get_current_cgroup_id) */
    u32 pid;         /* the process the record is about (tgid): the child for FORK */
    u32 tid;         /* the thread that made the event (EXEC: the one that called exec, by its
                        id before exec made it the process' main thread) */
    u32 ppid;        /* FORK: the parent (tgid) */
    s32 stop;
    u32 len;         /* payload bytes (EXEC: the file name, no NUL) */
    u16 type;        /* TRACER_EV_FORK .. TRACER_EV_STOP */
    u8  state;       /* TRACER_PROC_* after the event */
    u8  flags;       /* TRACER_PF_* of the process */
    char comm[16];
};

/* value of the `procs` map, keyed by tgid: the followed processes */
struct tracer_proc {
    u32 ppid;
    u32 state;       /* TRACER_PROC_* */
    u32 flags;       /* TRACER_PF_* */
    u32 stops;       /* times the kernel side stopped it */
};

/* the `follow` array's one value, written by user space */
struct tracer_follow {
    u64 alive_ns;    /* bpf_ktime_get_ns() clock: the consumer's last sign of life */
    u64 grace_ns;    /* stop processes only while alive_ns is younger than this */
    u32 cgroup;      /* 1: also follow every process in the cgroup of `cgroups`[0] */
    u32 pad;
};

#endif
