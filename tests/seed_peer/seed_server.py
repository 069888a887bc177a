#!/usr/bin/env python3
"""A server of the original FileSync dialect, for tests (see seedwire.py).

Prints `listening on PORT` once ready, one `session ...` line per completed session on
stdout, and `session error: ...` on stderr for every session that broke the protocol.
Unlike the reference, it reads CLIENT_FILES_INFO off the stream robustly, unless
--single-recv asks for the reference's one recv of 8192 bytes.
"""

import argparse
import json
import os
import socket
import struct
import threading
from datetime import datetime, timedelta

from seedwire import GROUP, ProtocolError, Reader, Sender, encode, epoch_ns, expect, log, parse_time
import seedwire


def discovery(group, tcp_port):
    """Answer DISCOVER on the group with an OFFER, by unicast to the datagram's source."""
    ip, port = group.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    mreq = struct.pack("4s4s", socket.inet_aton(ip), socket.inet_aton("0.0.0.0"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)

    def loop():
        while True:
            data, src = s.recvfrom(65536)
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("type") == "DISCOVER":
                s.sendto(encode({"type": "OFFER", "port": tcp_port}), src)
                log(f"offer to {src[0]}:{src[1]}")

    threading.Thread(target=loop, daemon=True).start()


def safe_rel(path):
    parts = path.split("/") if isinstance(path, str) else []
    if not parts or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ProtocolError(f"unsafe path {path!r}")
    return os.path.join(*parts)


def session(conn, peer, args):
    reader, sender = Reader(conn), Sender(conn, args.segment)
    sender.send(encode({"type": "SERVER_STATUS_MESSAGE", "status": "READY"}))
    info = reader.single_recv() if args.single_recv else reader.json_value()
    expect(info, "CLIENT_FILES_INFO")
    reader.expect_nothing_buffered("CLIENT_FILES_INFO")
    cid, files = info.get("client_id"), info.get("files")
    if cid is None:
        folder = "client_" + peer[0].replace(".", "_")
    elif isinstance(cid, str) and cid and "/" not in cid and cid not in (".", ".."):
        folder = "client_" + cid
    else:
        raise ProtocolError(f"bad client_id {cid!r}")
    base = os.path.join(args.root, folder)
    if not isinstance(files, list):
        raise ProtocolError("files is not a list")
    listed, tasks = set(), []
    for f in files:
        if not isinstance(f, dict) or not {"name", "path", "last_mod"} <= set(f):
            raise ProtocolError(f"bad file entry {f!r}")
        rel = safe_rel(f["path"])
        if f["name"] != f["path"].split("/")[-1]:
            raise ProtocolError(f"name {f['name']!r} is not the last part of {f['path']!r}")
        client_mod = parse_time(f["last_mod"], f["path"])
        listed.add(rel)
        local = os.path.join(base, rel)
        if not os.path.isfile(local) or client_mod > datetime.fromtimestamp(os.path.getmtime(local)):
            tasks.append(f["path"])
    sender.send(encode({"type": "TASKS", "files_to_send": tasks}, newline=True))
    for want in tasks:
        h = expect(reader.line(), "FILE_HEADER")
        if h.get("path") != want:
            raise ProtocolError(f"FILE_HEADER for {h.get('path')!r}, expected {want!r}")
        if h.get("name") != want.split("/")[-1]:
            raise ProtocolError(f"FILE_HEADER name {h.get('name')!r} for {want!r}")
        size = h.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ProtocolError(f"bad size {size!r}")
        ns = epoch_ns(parse_time(h.get("last_mod"), want))
        target = os.path.join(base, safe_rel(want))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.seedtmp{threading.get_ident()}"
        with open(tmp, "wb") as out:
            reader.copy(out, size)
        os.replace(tmp, target)
        os.utime(target, ns=(ns, ns))
    reader.expect_nothing_buffered("the last file")
    deleted = 0
    for d, _, names in os.walk(base):
        for n in names:
            p = os.path.join(d, n)
            if os.path.relpath(p, base) not in listed:
                os.remove(p)
                deleted += 1
    nxt = (datetime.now() + timedelta(seconds=args.interval)).isoformat()
    sender.send(encode({"type": "NEXT_SYNC", "time": nxt}))
    log(f"session {folder}: files {len(files)}, stored {len(tasks)}, deleted {deleted}, next {nxt}")


def handle(conn, peer, args, busy):
    try:
        with conn:
            conn.settimeout(args.timeout)
            if busy:
                conn.sendall(encode({"type": "SERVER_STATUS_MESSAGE", "status": "BUSY"}))
                log(f"busy to {peer[0]}:{peer[1]}")
                return
            session(conn, peer, args)
    except Exception as e:  # noqa: BLE001 - a test fixture reports everything
        log(f"session error: {peer[0]}:{peer[1]}: {type(e).__name__}: {e}", err=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--root", default="./seed-data")
    ap.add_argument("--interval", type=float, default=30, help="seconds until NEXT_SYNC")
    ap.add_argument("--group", default=GROUP)
    ap.add_argument("--no-discovery", action="store_true")
    ap.add_argument("--busy-first", type=int, default=0, metavar="N",
                    help="answer the first N connections with BUSY, then close")
    ap.add_argument("--segment", type=int, default=0, metavar="N",
                    help="send every message in TCP segments of at most N bytes")
    ap.add_argument("--single-recv", action="store_true",
                    help="read CLIENT_FILES_INFO with one recv(8192), as the reference does")
    ap.add_argument("--ascii-json", action="store_true", help="escape non-ASCII as \\uXXXX")
    ap.add_argument("--timeout", type=float, default=60, help="socket timeout per session")
    args = ap.parse_args()
    seedwire.ASCII_JSON = args.ascii_json
    os.makedirs(args.root, exist_ok=True)
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", args.port))
    lst.listen(64)
    port = lst.getsockname()[1]
    if not args.no_discovery:
        discovery(args.group, port)
    log(f"listening on {port}")
    count = 0
    while True:
        conn, peer = lst.accept()
        busy = count < args.busy_first
        count += 1
        threading.Thread(target=handle, args=(conn, peer, args, busy), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
