#!/usr/bin/env python3
"""A client of the original FileSync dialect, for tests (see seedwire.py).

Prints on stdout, flushed: `server HOST:PORT`, `status READY|BUSY`, `manifest files N bytes
M`, `tasks N`, `next_sync TIME in SECONDS` (from now, in local time). Exit codes: 0 synced,
1 error (protocol, connection), 3 BUSY (the reference closes on BUSY; with --wait-on-busy,
`closed after BUSY`), 4 no OFFER within --discovery-timeout.
"""

import argparse
import json
import os
import socket
import sys
import time
from datetime import datetime

from seedwire import GROUP, ProtocolError, Reader, Sender, encode, expect, log, mtime_str, parse_time, split_hostport
import seedwire


class Busy(Exception):
    pass


def discover(group, timeout):
    """DISCOVER to the group (TTL 2) until an OFFER; the server is the OFFER's source IP."""
    ip, port = group.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        s.sendto(encode({"type": "DISCOVER"}), (ip, int(port)))
        s.settimeout(5)
        try:
            while True:
                data, src = s.recvfrom(65536)
                try:
                    msg = json.loads(data)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("type") == "OFFER":
                    return src[0], int(msg["port"])
        except socket.timeout:
            pass
        if deadline and time.monotonic() + 10 > deadline:
            log("no OFFER", err=True)
            sys.exit(4)
        time.sleep(10)  # as the reference


def listing(root):
    """Every regular file (symlinks to files followed), sorted, with the reference's fields."""
    files = []
    for d, dirs, names in os.walk(root):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(d, n)
            if os.path.isfile(p):
                rel = os.path.relpath(p, root).replace(os.sep, "/")
                files.append({"name": n, "path": rel, "last_mod": mtime_str(p)})
    return files


def greeting(reader, args):
    """SERVER_STATUS_MESSAGE (or its documented alias); returns when READY."""
    first = True
    while True:
        try:
            msg = reader.single_recv() if args.single_recv and first else reader.json_value()
        except EOFError:
            if first:
                raise
            log("closed after BUSY")
            raise Busy() from None
        first = False
        status = expect(msg, "SERVER_STATUS_MESSAGE", "SERVER_STATUS").get("status")
        log(f"status {status}")
        if status == "READY":
            reader.expect_nothing_buffered("READY")
            return
        if status != "BUSY":
            raise ProtocolError(f"unknown status {status!r}")
        if not args.wait_on_busy:
            raise Busy()


def sync_once(addr, args):
    with socket.create_connection(addr, timeout=5) as conn:
        conn.settimeout(args.timeout)
        reader, sender = Reader(conn), Sender(conn, args.segment, args.segment_delay)
        greeting(reader, args)
        if args.hold:
            time.sleep(args.hold)
        files = listing(args.dir)
        info = encode({"type": "CLIENT_FILES_INFO", "client_id": args.id, "files": files})
        log(f"manifest files {len(files)} bytes {len(info)}")
        sender.send(info)
        tasks = expect(reader.line(), "TASKS").get("files_to_send")
        if not isinstance(tasks, list):
            raise ProtocolError(f"files_to_send is not a list: {tasks!r:.200}")
        listed = {f["path"] for f in files}
        if not set(tasks) <= listed:
            raise ProtocolError(f"TASKS names files not listed: {sorted(set(tasks) - listed)[:5]}")
        if tasks:  # else NEXT_SYNC may follow at once
            reader.expect_nothing_buffered("TASKS")
        log(f"tasks {len(tasks)}")
        wanted = set(tasks)
        for f in files:  # in the order of our list, as the reference
            if f["path"] not in wanted:
                continue
            p = os.path.join(args.dir, *f["path"].split("/"))
            with open(p, "rb") as fh:
                content = fh.read()
            header = {"type": "FILE_HEADER", "name": f["name"], "path": f["path"],
                      "size": len(content), "last_mod": mtime_str(p)}
            sender.send(encode(header, newline=True) + content)
        msg = reader.single_recv() if args.single_recv else reader.json_value()
        nxt = expect(msg, "NEXT_SYNC").get("time")
        when = parse_time(nxt, "NEXT_SYNC")
        reader.expect_nothing_buffered("NEXT_SYNC")
        log(f"next_sync {nxt} in {(when - datetime.now()).total_seconds():.1f}")
        return when


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--server", metavar="HOST:PORT", help="skip discovery")
    ap.add_argument("--group", default=GROUP)
    ap.add_argument("--discovery-timeout", type=float, default=0, help="seconds; 0: forever")
    ap.add_argument("--id", default=None)
    ap.add_argument("--dir", default=".")
    ap.add_argument("--once", action="store_true", help="exit after one sync")
    ap.add_argument("--wait-on-busy", action="store_true",
                    help="on BUSY stay connected until READY (documented queue)")
    ap.add_argument("--segment", type=int, default=0, metavar="N",
                    help="send every message in TCP segments of at most N bytes")
    ap.add_argument("--segment-delay", type=float, default=0.002)
    ap.add_argument("--hold", type=float, default=0, help="seconds to pause after READY")
    ap.add_argument("--single-recv", action="store_true",
                    help="read the greeting and NEXT_SYNC with one recv(8192), as the reference")
    ap.add_argument("--ascii-json", action="store_true", help="escape non-ASCII as \\uXXXX")
    ap.add_argument("--timeout", type=float, default=60, help="socket timeout")
    args = ap.parse_args()
    seedwire.ASCII_JSON = args.ascii_json
    addr = None
    while True:
        if addr is None:
            addr = split_hostport(args.server) if args.server else discover(args.group, args.discovery_timeout)
            log(f"server {addr[0]}:{addr[1]}")
        try:
            when = sync_once(addr, args)
        except Busy:
            if args.once:
                sys.exit(3)
            addr = None if not args.server else addr  # the reference discovers again
            time.sleep(1)
            continue
        except (ProtocolError, OSError, EOFError) as e:
            log(f"error: {type(e).__name__}: {e}", err=True)
            if args.once:
                sys.exit(1)
            addr = None if not args.server else addr
            time.sleep(1)
            continue
        if args.once:
            return
        time.sleep(max(0.0, (when - datetime.now()).total_seconds()))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
