"""bpf/tracer_event.h is the one definition: the Python decoder must match what a C compiler lays out."""

import shutil
import subprocess

import pytest

from tracer.capture import event as ev


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("name,fields,size", [
    ("tracer_event", ev.EVENT_FIELDS, ev.HEADER_SIZE),
    ("tracer_proc_event", ev.PROC_EVENT_FIELDS, ev.PROC_EVENT_STRUCT.size),
    ("tracer_proc", ev.PROC_FIELDS, ev.PROC_STRUCT.size),
    ("tracer_follow", ev.FOLLOW_FIELDS, ev.FOLLOW_STRUCT.size),
])
def test_layout_matches_c(tmp_path, name, fields, size):
    names = [n for n, _ in fields]
    src = tmp_path / "t.c"
    src.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n"
        "typedef uint64_t u64; typedef uint32_t u32; typedef uint16_t u16; typedef uint8_t u8;\n"
        "typedef int32_t s32;\n"
        f'#include "{ev.HEADER}"\n'
        f"int main(void){{printf(\"%zu\", sizeof(struct {name}));"
        + "".join(f'printf(" %zu", offsetof(struct {name}, {f}));' for f in names)
        + "return 0;}\n")
    exe = tmp_path / "t"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True)
    out = [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True).stdout.split()]
    c_size, offsets = out[0], out[1:]
    assert c_size == size
    py_offsets, off = [], 0
    for _, fmt in fields:
        py_offsets.append(off)
        off += ev.struct.calcsize("<" + fmt)
    assert offsets == py_offsets


def test_process_records_share_type_and_len_with_data_records():
    """The ring reader tells record kinds apart by `type` at one offset (and sizes them by `len`)."""
    raw = ev.PROC_EVENT_STRUCT.pack(1, 0x11, 7, 4242, 4243, 100, 1, 9, ev.EV_EXEC, 3, 1, b"sh") + b"/bin/curl\0pad"
    assert ev.record_type(raw) == ev.EV_EXEC
    p = ev.decode_proc(raw)
    assert (p.pid, p.tid, p.ppid, p.stop, p.filename, p.comm) == (4242, 4243, 100, 1, "/bin/curl", "sh")
    assert ev.decode(raw).pid == 4242      # the data decoder reads the same pid


def test_decode_roundtrip():
    raw = ev.EVENT_STRUCT.pack(5, 0xABC, 100, 42, 43, 3, 0, 3, ev.EV_DATA, ev.DIR_WRITE, 0, b"curl") + b"xyzPAD"
    e = ev.decode(raw)
    assert (e.pid, e.tid, e.conn, e.stream_off, e.data, e.comm) == (42, 43, 0xABC, 100, b"xyz", "curl")
    raw = ev.EVENT_STRUCT.pack(5, 1, 0, 1, 1, 9, 0, 9, ev.EV_DATA, 0, ev.F_COPY_FAIL, b"x")
    assert ev.decode(raw).data == b""


def test_guard_flags_match_the_header():
    """tracer/probes/kcreds.py writes struct tracer_target_ids.flags with the header's values."""
    from tracer.capture import event as ev
    from tracer.probes import kcreds
    assert kcreds.GUARD_CHECK == ev.CONST["TRACER_GUARD_CHECK"]
    assert kcreds.GUARD_EXECED == ev.CONST["TRACER_GUARD_EXECED"]
