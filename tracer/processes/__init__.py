"""Which processes tracer traces: the process tree under a traced command or pid, the processes of a
cgroup, and each one's TLS libraries seen through its own mount namespace.

  procinfo   what /proc says about a process (command line, parent, job control), read as root
  access     may the invoking user trace this process (the ptrace rule)
  resolve    a process' mapped files and TLS library candidates, reached through its own view
  table      the traced processes, their tree, accounting per process (summary, log records)
  prober     locate + attach the TLS probes of one process
  kernel     the kernel side's process maps and tracepoints (bpf/tracer.bpf.c, "process tree")
  follower   turns the kernel's fork/exec/exit records into probes, then lets stopped processes go
  watchdog   a separate process that resumes stopped processes if tracer dies
  cgroup     --cgroup: a cgroup v2 directory and the processes in it
"""
