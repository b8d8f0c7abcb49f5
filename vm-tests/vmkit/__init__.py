"""The pieces of the vm-test runner (vm-tests/vmtest.py), one job each:

  util    - logging, subprocess and hashing helpers shared by the others
  apt     - a private apt configuration on Debian's mirror; kernel packages and their resolution
  images  - the initramfs layers (base userspace, venv, kernel headers, payload) and their cache
  qemu    - booting one guest and reading its verdict from the serial ports
  runner  - the matrix, the command line, building images while earlier guests already run
"""
