"""late_stdin.py SECONDS FILE CMD...: exec CMD (same pid, so `tracer run` traces it) with stdin a pipe
that FILE's bytes reach only SECONDS later -- e.g. curl -T - sends a request head at once and its
body only then."""
import os
import sys
import time

r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    time.sleep(float(sys.argv[1]))
    with open(sys.argv[2], "rb") as f:
        data = f.read()
    while data:
        data = data[os.write(w, data):]
    os._exit(0)
os.close(w)
os.dup2(r, 0)
os.execvp(sys.argv[3], sys.argv[3:])
