#!/usr/bin/env python3
"""Peak RSS of processes that have exited, from the kernel's taskstats (stdlib only).

The rsync daemon forks a child for every connection, and that child forks once
more (generator and receiver). They are gone when the client exits, so their
peak RSS cannot be read from /proc afterwards, and a memory cgroup's
max_usage_in_bytes would include the page cache (on tmpfs: the files written).
Instead, this listens to the taskstats exit records (generic netlink, family
TASKSTATS, registered for all CPUs), which carry each exiting task's pid, ppid,
command name and hiwater_rss, the same peak RSS as VmHWM and as wait4's
ru_maxrss. The kernel needs CONFIG_TASKSTATS and CONFIG_TASK_XACCT, the caller
needs root, and the listener must run in the initial network namespace (the
kernel sends the records only there).

Usage
  taskstats.py listen FILE      append "pid tgid ppid comm hiwater_kib" for every
                                task (thread) that exits, until killed; "ready" on
                                stdout once registered
  taskstats.py mark FILE        fork a child that exits at once, wait until its
                                record is in FILE, print the byte offset after it
                                (every exit before the mark is in FILE before it)
  taskstats.py sum FILE START END ROOT...
                                among the records between the offsets, the
                                processes descended from pid ROOT (ROOT itself
                                excluded; included if given as =ROOT): print
                                "<sum of their peak RSS in KiB>
                                <count> <comm,...>", a line for each ROOT. The
                                threads of a process share its memory and count
                                once (the largest of their records).

hiwater_rss is the peak RSS of the task's current memory map, so unlike wait4's
ru_maxrss it does not include the RSS of the process that forked it before exec
(a Python parent would add its own ~13 MiB to every child).
"""

import os
import socket
import struct
import sys
import time

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
SO_RCVBUFFORCE = 33
# Offsets in struct taskstats (include/uapi/linux/taskstats.h; stable since version 1,
# the struct only grows at the end).
OFF_COMM, COMM_LEN = 80, 32
OFF_PID = 128  # ac_pid, ac_ppid: u32 each
OFF_HIWATER_RSS = 200  # u64, KiB
OFF_TGID = 368  # ac_tgid, u32, since version 12 (Linux 5.19)


def nl_attrs(buf):
    off = 0
    while off + 4 <= len(buf):
        ln, typ = struct.unpack_from("HH", buf, off)
        if ln < 4:
            break
        yield typ & 0x3FFF, buf[off + 4 : off + ln]
        off += (ln + 3) & ~3


def nl_attr(typ, data):
    ln = 4 + len(data)
    return struct.pack("HH", ln, typ) + data + b"\0" * (((ln + 3) & ~3) - ln)


def genl_msg(family, cmd, payload, seq):
    body = struct.pack("BBH", cmd, 1, 0) + payload
    return struct.pack("IHHII", 16 + len(body), family, NLM_F_REQUEST, seq, 0) + body


def check_error(data):
    ln, typ = struct.unpack_from("IH", data)
    if typ == NLMSG_ERROR:
        err = struct.unpack_from("i", data, 16)[0]
        if err:
            raise OSError(-err, os.strerror(-err))


def listen(path):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    s.bind((0, 0))
    s.send(genl_msg(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, nl_attr(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"), 1))
    data = s.recv(65536)
    check_error(data)
    family = None
    for t, v in nl_attrs(data[20 : struct.unpack_from("I", data)[0]]):
        if t == CTRL_ATTR_FAMILY_ID:
            family = struct.unpack_from("H", v)[0]
    if family is None:
        raise SystemExit("taskstats: no TASKSTATS generic netlink family (CONFIG_TASKSTATS?)")
    cpus = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count() or 1)))
    mask = ",".join(str(c) for c in cpus).encode() + b"\0"
    s.send(genl_msg(family, TASKSTATS_CMD_GET, nl_attr(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, mask), 2))
    out = open(path, "a", buffering=1)
    print("ready", flush=True)
    while True:
        try:
            data = s.recv(1 << 20)
        except OSError as e:  # ENOBUFS: records were lost; say so in the file
            out.write(f"# lost records: {e}\n")
            continue
        off = 0
        lines = []
        while off + 16 <= len(data):
            ln, typ = struct.unpack_from("IH", data, off)
            if ln < 16:
                break
            if typ == family:
                for t, v in nl_attrs(data[off + 20 : off + ln]):
                    if t != TASKSTATS_TYPE_AGGR_PID:
                        continue
                    for t2, st in nl_attrs(v):
                        if t2 == TASKSTATS_TYPE_STATS and len(st) >= OFF_HIWATER_RSS + 8:
                            comm = st[OFF_COMM : OFF_COMM + COMM_LEN].split(b"\0")[0]
                            comm = comm.decode(errors="replace").replace(" ", "_") or "?"
                            pid, ppid = struct.unpack_from("II", st, OFF_PID)
                            hw = struct.unpack_from("Q", st, OFF_HIWATER_RSS)[0]
                            version = struct.unpack_from("H", st)[0]
                            tgid = pid
                            if version >= 12 and len(st) >= OFF_TGID + 4:
                                tgid = struct.unpack_from("I", st, OFF_TGID)[0] or pid
                            lines.append(f"{pid} {tgid} {ppid} {comm} {hw}\n")
            elif typ == NLMSG_ERROR:
                err = struct.unpack_from("i", data, off + 16)[0]
                if err:
                    raise SystemExit(f"taskstats: register failed: {os.strerror(-err)}")
            off += (ln + 3) & ~3
        out.write("".join(lines))


def mark(path, timeout=10.0):
    start = os.path.getsize(path)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    want = f"{pid} {pid} {os.getpid()} ".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
        at = 0 if data.startswith(want) else data.find(b"\n" + want) + 1
        end = data.find(b"\n", at) if at > 0 or data.startswith(want) else -1
        if end >= 0:
            print(start + end + 1)
            return 0
        time.sleep(0.005)
    print(f"taskstats: mark record for pid {pid} not seen within {timeout} s", file=sys.stderr)
    return 1


def tree_sum(path, start, end, roots):
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start).decode(errors="replace")
    procs = {}  # tgid -> [ppid, comm, max hiwater_rss over its threads' records]
    for line in data.splitlines():
        parts = line.split()
        if len(parts) != 5 or line.startswith("#"):
            continue
        tgid, ppid, comm, hw = int(parts[1]), int(parts[2]), parts[3], int(parts[4])
        p = procs.setdefault(tgid, [ppid, comm, 0])
        p[2] = max(p[2], hw)
        if int(parts[0]) == tgid:  # the main thread's record names the process
            p[0], p[1] = ppid, comm
    children = {}
    for tgid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(tgid)
    for arg in roots:
        root = int(arg.lstrip("="))
        total, comms, todo = 0, [], [root]
        if arg.startswith("=") and root in procs:  # the process itself counts too
            total, comms = procs[root][2], [procs[root][1]]
        while todo:
            for tgid in children.get(todo.pop(), []):
                total += procs[tgid][2]
                comms.append(procs[tgid][1])
                todo.append(tgid)
        print(total, len(comms), ",".join(comms) or "-")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "listen":
        listen(argv[2])
    elif len(argv) == 3 and argv[1] == "mark":
        return mark(argv[2])
    elif len(argv) >= 6 and argv[1] == "sum":
        return tree_sum(argv[2], int(argv[3]), int(argv[4]), argv[5:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
