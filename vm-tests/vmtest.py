#!/usr/bin/env python3
"""Run the tracer's eBPF tests inside QEMU guests booting several Debian kernels.

Each guest boots a Debian kernel straight into an initramfs that holds the whole root filesystem,
made of four concatenated newc cpio archives (the kernel unpacks them in order into one tmpfs):

  1. base    - a debootstrap'ed minimal Debian userspace (BCC, clients, openssl, ...) plus /init
  2. venv    - /opt/venv with the tracer's Python dependencies for that userspace's python3
  3. kernel  - that kernel's Debian header packages (what `tracer doctor` looks for) and config
  4. payload - a copy of this repository (tracked files only) and the command to run

Layers 1-3 are cached under --cache (default /var/cache/tracer/vm), keyed by their inputs, so a
warm run only writes the payload. Kernel versions are resolved from the mirror's package lists at
run time ("newest 6.1", "newest 7.x", ...). The guest writes the payload's output and exit status
to its second serial port; a guest that hangs or panics is killed at --timeout.

Output: one line per guest, ``KERNEL <uname -r> PASS|FAIL <seconds>s``; exit status 1 if any failed.
Stdlib only: runs with the system python3, no venv needed. Needs root (debootstrap, chroot).
The code is in vmkit/ (apt, images, qemu, runner); this file is the entry point.
"""

import sys

from vmkit.runner import main

if __name__ == "__main__":
    sys.exit(main())
