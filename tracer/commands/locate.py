"""`tracer locate BINARY`: show where the TLS read/write functions are in an ELF object."""

from __future__ import annotations

import json
import os
import struct
import time

import click
from elftools.common.exceptions import ELFError

from tracer.probes.locate import LocateError, is_elf, locate
from tracer.textsafe import printable


def _fail(msg: str) -> None:
    raise click.ClickException(msg)


@click.command("locate")
@click.argument("binary", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--no-cache", is_flag=True, help="Ignore the locate cache (always run discovery).")
def locate_cmd(binary: str, as_json: bool, no_cache: bool) -> None:
    """Find SSL_read/SSL_write (and friends) in BINARY.

    Works on shared libraries with symbols (libssl.so.3), executables with a static OpenSSL (node)
    and stripped Bun / Claude Code executables with BoringSSL inside (error-site fingerprinting).
    Under sudo, BINARY is opened with the invoking user's permissions.
    """
    from tracer.errors import TracerError
    from tracer.invoker import as_user, invoking_user
    from tracer.probes.locate import open_regular

    shown = printable(binary)
    try:
        with as_user(invoking_user()):          # the user's permissions decide what may be read
            fd = open_regular(binary)
    except TracerError as e:
        _fail(str(e))
    except FileNotFoundError:
        _fail("%s: no such file" % shown)
    except OSError as e:
        _fail("%s: cannot read it (%s)" % (shown, e.strerror or e))
    t0 = time.monotonic()
    try:
        path = f"/proc/self/fd/{fd}"          # this very file, from here on
        if not is_elf(path):
            _fail("no TLS library found in %s: not an ELF file" % shown)
        try:
            res = locate(path, use_cache=not no_cache)
        except LocateError as e:
            _fail("%s: %s" % (shown, printable(str(e).replace(path, binary))))
        except (ELFError, ValueError, IndexError, OSError, struct.error) as e:  # truncated / malformed ELF
            _fail("cannot parse %s as ELF: %s" % (shown, printable(e)))
    finally:
        os.close(fd)
    elapsed = time.monotonic() - t0
    if res is None:
        _fail("no TLS library found in %s" % shown)
    if as_json:
        out = {"binary": binary, "build_id": res.build_id, "library": res.library,
               "functions": {n: {"address": hex(f.address), "method": f.method}
                             for n, f in sorted(res.functions.items())}}
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(shown)
    click.echo("  build-id: %s" % (res.build_id or "(none)"))
    click.echo("  library:  %s" % (res.library or "?"))
    width = max(len(n) for n in res.functions)
    for n, f in sorted(res.functions.items()):
        click.echo("  %-*s  %#010x  %s" % (width, n, f.address, f.method))
    click.echo("  (%.2f s)" % elapsed)


COMMANDS = [locate_cmd]
