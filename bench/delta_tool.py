#!/usr/bin/env python3
"""Helpers for the benchmark's `delta` case (stdlib only).

  delta_tool.py poke FILE --offset O --length L --seed S --variant V --mtime T
      Overwrites L bytes at offset O of FILE with new content (a pure function of
      seed and variant), keeps the size, and sets the mtime to T.
  delta_tool.py rewrite FILE --seed S --variant V --mtime T
      Overwrites the whole of FILE with new content (one random.Random stream per
      1 MiB, as gen_tree.py does), same size, and sets the mtime to T.
  delta_tool.py interrupt --watch DIR --at BYTES --log LOG [--timeout SECS] -- CMD...
      Starts CMD (stdin /dev/null, output appended to LOG), polls the size of the
      newest regular file directly in DIR (every 0.5 ms) and kills CMD with SIGKILL
      as soon as that size reaches BYTES. Prints "<size when seen> <seconds>".
      Exits 2 if CMD exits on its own first, 3 on timeout.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import time

MIB = 1 << 20


def set_mtime(path, mtime):
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))


def poke(a):
    data = random.Random(f"filesync-bench:{a.seed}:delta:poke:{a.variant}").randbytes(a.length)
    size = os.path.getsize(a.file)
    if a.offset + a.length > size:
        sys.exit(f"poke: {a.offset}+{a.length} is past the end of {a.file} ({size} bytes)")
    with open(a.file, "r+b") as f:
        f.seek(a.offset)
        f.write(data)
    set_mtime(a.file, a.mtime)


def rewrite(a):
    size = os.path.getsize(a.file)
    with open(a.file, "r+b") as f:
        chunk = 0
        left = size
        while left > 0:
            n = min(MIB, left)
            f.write(random.Random(f"filesync-bench:{a.seed}:delta:rewrite:{a.variant}:{chunk}").randbytes(n))
            left -= n
            chunk += 1
    set_mtime(a.file, a.mtime)


def newest_size(d):
    best = None
    try:
        with os.scandir(d) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not e.is_file(follow_symlinks=False):
                    continue
                if best is None or st.st_mtime_ns > best[0]:
                    best = (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        return 0
    return best[1] if best else 0


def interrupt(a):
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        sys.exit("interrupt: no command")
    with open(a.log, "ab") as log:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            while True:
                size = newest_size(a.watch)
                if size >= a.at:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
                    print("%d %.6f" % (size, time.monotonic() - t0))
                    return 0
                if p.poll() is not None:
                    print(f"interrupt: the command exited ({p.returncode}) before {a.watch} "
                          f"held a file of {a.at} bytes (largest seen: {size})", file=sys.stderr)
                    return 2
                if time.monotonic() - t0 > a.timeout:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
                    print(f"interrupt: timed out after {a.timeout} s", file=sys.stderr)
                    return 3
                time.sleep(0.0005)
        finally:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd_name", required=True)
    p = sub.add_parser("poke")
    p.add_argument("file")
    p.add_argument("--offset", type=int, required=True)
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--seed", default="42")
    p.add_argument("--variant", default="0")
    p.add_argument("--mtime", type=int, required=True)
    r = sub.add_parser("rewrite")
    r.add_argument("file")
    r.add_argument("--seed", default="42")
    r.add_argument("--variant", default="0")
    r.add_argument("--mtime", type=int, required=True)
    i = sub.add_parser("interrupt")
    i.add_argument("--watch", required=True)
    i.add_argument("--at", type=int, required=True)
    i.add_argument("--log", required=True)
    i.add_argument("--timeout", type=float, default=900)
    i.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.cmd_name == "poke":
        poke(a)
    elif a.cmd_name == "rewrite":
        rewrite(a)
    else:
        sys.exit(interrupt(a))


if __name__ == "__main__":
    main()
