"""bpf/tracer_event.h is the one definition: the Python decoder must match what a C compiler lays out."""

import shutil
import subprocess

import pytest

from tracer.capture import event as ev


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_layout_matches_c(tmp_path):
    fields = [n for n, _ in ev.EVENT_FIELDS]
    src = tmp_path / "t.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n"
        "typedef uint64_t u64; typedef uint32_t u32; typedef uint16_t u16; typedef uint8_t u8;\n"
        f'#include "{ev.HEADER}"\n'
        "int main(void){printf(\"%zu\", sizeof(struct tracer_event));"
        + "".join(f'printf(" %zu", offsetof(struct tracer_event, {f}));' for f in fields)
        + "return 0;}\n")
    exe = tmp_path / "t"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    out = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True).stdout.split()]
    size, offsets = out[0], out[1:]
    assert size == ev.HEADER_SIZE
    py_offsets, off = [], 0
    for _, fmt in ev.EVENT_FIELDS:
        py_offsets.append(off)
        off += ev.struct.calcsize("<" + fmt)
    assert offsets == py_offsets


def test_decode_roundtrip():
    raw = ev.EVENT_STRUCT.pack(5, 0xABC, 100, 42, 43, 3, 0, 3, ev.EV_DATA, ev.DIR_WRITE, 0, b"curl") + b"xyzPAD"
    e = ev.decode(raw)
    assert (e.pid, e.tid, e.conn, e.stream_off, e.data, e.comm) == (42, 43, 0xABC, 100, b"xyz", "curl")
    raw = ev.EVENT_STRUCT.pack(5, 1, 0, 1, 1, 9, 0, 9, ev.EV_DATA, 0, ev.F_COPY_FAIL, b"x")
    assert ev.decode(raw).data == b""
