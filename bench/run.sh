#!/usr/bin/env bash
# filesync vs rsync (daemon mode) on loopback.
#
# Usage: sudo bash bench/run.sh [options]
#   --quick             smoke run: 2,000 small files, 2 x 64 MiB, 20,000 (many) and
#                       100,000 (million) tiny files, 3 runs
#   --runs N            timed runs per case and tool (default 5; 3 with --quick)
#   --fs tmpfs|ext4     filesystem made for the run (default tmpfs)
#   --fs-size SIZE      size of the tmpfs / ext4 image (default 8G; 16G tmpfs or
#                       24G ext4 when the full million tree is among the cases)
#   --cases LIST        comma-separated trees: small,large,many,million,delta
#                       (default small,large; delta: a 512 MiB file with 4 KiB
#                       changed and rewritten, and a 1 GiB file cut at 90% and
#                       resumed; see bench/README.md)
#   --only TOOL         rsync | filesync | both (default both)
#   --tools LIST        comma-separated tools: rsync,filesync,filesync-auth (default
#                       rsync,filesync). filesync-auth is filesync with authentication
#                       (serve --auth-file, sync --secret-file): the session runs in
#                       TLS 1.3. Its rows get a table of their own against filesync.
#   --auth              add filesync-auth to the tools (same as --tools
#                       rsync,filesync,filesync-auth unless --tools/--only is given)
#   --no-limit          skip the durable-limit row (tar | tar, then sync -f) that
#                       the initial case of every tree gets
#   --no-netns          run servers and clients in the machine's own network
#                       namespace (default: a private one, so that the loopback
#                       byte counters see only the benchmark's traffic)
#   --full-verify       full `diff -r` after every timed run (default: the first
#                       timed run of each case and tool; the others compare a
#                       listing of paths, sizes and mtimes, plus the changed files)
#   --rsync-fsync       give rsync --fsync (for durability parity with filesync)
#   --timeout SECS      fail if one sync command takes longer (default 900)
#   --out FILE          results file (default bench/results-<date>[-quick].md)
#   -h, --help
# Environment:
#   FILESYNC_BIN             use this binary instead of `cargo build --release`
#   FILESYNC_VERIFY_EXCLUDE  space-separated file/dir names that verification ignores
#   BENCH_TMPDIR             where the work dir (logs, rsyncd.conf, ext4 image) goes
#                            (default /tmp)
#
# Needs root (it mounts a filesystem), rsync, python3, diffutils, tar, util-linux
# (unshare, nsenter) and iproute2 (ip), and a kernel with taskstats (for the
# rsync server's peak RSS). Only 127.0.0.1 is ever contacted.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
GEN="$BENCH_DIR/gen_tree.py"
DTOOL="$BENCH_DIR/delta_tool.py"
TASKSTATS="$BENCH_DIR/taskstats.py"

RUNS=""
QUICK=0
FS=tmpfs
FS_SIZE=""
CASES=small,large
LIMIT=1
USE_NETNS=1
ONLY=both
TOOLS_ARG=""
AUTH=0
FULL_VERIFY=0
RSYNC_FSYNC=0
OUT=""
TIMEOUT=900

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --runs) RUNS=${2:?--runs needs a value}; shift ;;
        --runs=*) RUNS=${1#*=} ;;
        --fs) FS=${2:?--fs needs a value}; shift ;;
        --fs=*) FS=${1#*=} ;;
        --fs-size) FS_SIZE=${2:?--fs-size needs a value}; shift ;;
        --fs-size=*) FS_SIZE=${1#*=} ;;
        --cases) CASES=${2:?--cases needs a value}; shift ;;
        --cases=*) CASES=${1#*=} ;;
        --only) ONLY=${2:?--only needs a value}; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --tools) TOOLS_ARG=${2:?--tools needs a value}; shift ;;
        --tools=*) TOOLS_ARG=${1#*=} ;;
        --auth) AUTH=1 ;;
        --full-verify) FULL_VERIFY=1 ;;
        --no-limit) LIMIT=0 ;;
        --no-netns) USE_NETNS=0 ;;
        --rsync-fsync) RSYNC_FSYNC=1 ;;
        --timeout) TIMEOUT=${2:?--timeout needs a value}; shift ;;
        --timeout=*) TIMEOUT=${1#*=} ;;
        --out) OUT=${2:?--out needs a value}; shift ;;
        --out=*) OUT=${1#*=} ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done

[[ $FS == tmpfs || $FS == ext4 ]] || die "--fs must be tmpfs or ext4"
[[ $ONLY == both || $ONLY == rsync || $ONLY == filesync ]] || die "--only must be rsync, filesync or both"
if [[ -z $RUNS ]]; then
    if ((QUICK)); then RUNS=3; else RUNS=5; fi
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer"
TREES=()
IFS=, read -r -a _cases <<<"$CASES"
for c in "${_cases[@]}"; do
    case $c in
        small | large | many | million | delta) TREES+=("$c") ;;
        *) die "unknown case '$c' (expected small,large,many,million,delta)" ;;
    esac
done
((${#TREES[@]})) || die "no cases selected"

if [[ -n $TOOLS_ARG ]]; then
    [[ $ONLY == both ]] || die "give --tools or --only, not both"
    TOOLS=()
    IFS=, read -r -a _tools <<<"$TOOLS_ARG"
    for t in "${_tools[@]}"; do
        case $t in
            rsync | filesync | filesync-auth)
                [[ " ${TOOLS[*]} " == *" $t "* ]] || TOOLS+=("$t") ;;
            *) die "unknown tool '$t' (expected rsync,filesync,filesync-auth)" ;;
        esac
    done
    ((${#TOOLS[@]})) || die "no tools selected"
else
    case $ONLY in
        both) TOOLS=(rsync filesync) ;;
        *) TOOLS=("$ONLY") ;;
    esac
fi
if ((AUTH)) && [[ " ${TOOLS[*]} " != *" filesync-auth "* ]]; then TOOLS+=(filesync-auth); fi
has_tool() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }
# Either filesync tool (both need the binary; each has a server of its own).
has_filesync() { has_tool filesync || has_tool filesync-auth; }

has_tree() { [[ " ${TREES[*]} " == *" $1 "* ]]; }

if ((QUICK)); then
    SMALL_FILES=2000
    LARGE_MIB=64
    MANY_FILES=20000 MANY_DIRS=6000
    MILLION_FILES=100000 MILLION_DIRS=30000
    DELTA_MIB=64 RESUME_MIB=128
else
    SMALL_FILES=20000
    LARGE_MIB=512
    MANY_FILES=200000 MANY_DIRS=60000
    MILLION_FILES=1000000 MILLION_DIRS=300000
    DELTA_MIB=512 RESUME_MIB=1024
fi
LARGE_COUNT=2
SEED=42
SMALL_ARGS=(--files "$SMALL_FILES" --seed "$SEED")
LARGE_ARGS=(--count "$LARGE_COUNT" --size-mib "$LARGE_MIB" --seed "$SEED")
MANY_ARGS=(--files "$MANY_FILES" --dirs "$MANY_DIRS" --seed "$SEED")
MILLION_ARGS=(--files "$MILLION_FILES" --dirs "$MILLION_DIRS" --seed "$SEED")
# The delta case: one file of DELTA_MIB (gen_tree.py's large tree with one file), and
# later one of RESUME_MIB (another seed), each alone in the source.
DELTA_ARGS=(--count 1 --size-mib "$DELTA_MIB" --seed "$SEED")
RESUME_ARGS=(--count 1 --size-mib "$RESUME_MIB" --seed "$((SEED + 1))")
DELTA_REL=large_0.bin
DELTA_BYTES=$((DELTA_MIB << 20))
RESUME_BYTES=$((RESUME_MIB << 20))
POKE_LEN=4096
POKE_OFFSET=$((DELTA_BYTES / 2 + 12345)) # the middle, not aligned to any block size

# Room on the filesystem. At most three copies of a tree exist at once (source and
# the two tools' destinations; the initial case keeps only the source and the copy
# being made). Tiny files take a 4 KiB block (ext4) or page (tmpfs) each.
if [[ -z $FS_SIZE ]]; then
    FS_SIZE=8G
    if has_tree million && ((MILLION_FILES > 200000)); then
        if [[ $FS == ext4 ]]; then FS_SIZE=24G; else FS_SIZE=16G; fi
    fi
fi
# Inodes: four copies of the largest tree (files + directories), plus slack.
NEED_INODES=50000
for t in "${TREES[@]}"; do
    case $t in
        many) n=$(((MANY_FILES + MANY_DIRS) * 4 + 50000)) ;;
        million) n=$(((MILLION_FILES + MILLION_DIRS) * 4 + 50000)) ;;
        *) n=0 ;;
    esac
    if ((n > NEED_INODES)); then NEED_INODES=$n; fi
done

# ------------------------------------------------------------------ preflight

((EUID == 0)) || die "must run as root (it mounts a filesystem): sudo bash bench/run.sh"
command -v rsync >/dev/null || die "rsync not found: apt-get install -y rsync"
command -v python3 >/dev/null || die "python3 not found: apt-get install -y python3"
for c in diff cmp; do
    command -v "$c" >/dev/null || die "$c not found: apt-get install -y diffutils"
done
command -v tar >/dev/null || die "tar not found: apt-get install -y tar"
if ((USE_NETNS)); then
    for c in unshare nsenter; do
        command -v "$c" >/dev/null || die "$c not found: apt-get install -y util-linux (or use --no-netns)"
    done
    command -v ip >/dev/null || die "ip not found: apt-get install -y iproute2 (or use --no-netns)"
fi
if [[ $FS == ext4 ]]; then
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found: apt-get install -y e2fsprogs"
fi

if has_filesync; then
    if [[ -n ${FILESYNC_BIN:-} ]]; then
        log "using FILESYNC_BIN=$FILESYNC_BIN"
    else
        log "building filesync: cargo build --release -p filesync-cli"
        (cd "$REPO_DIR" && cargo build --release -p filesync-cli) || die "cargo build failed"
        FILESYNC_BIN="${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/filesync"
    fi
    [[ -x $FILESYNC_BIN ]] || die "filesync binary not found or not executable: $FILESYNC_BIN"
    FILESYNC_BIN=$(realpath "$FILESYNC_BIN")
    "$FILESYNC_BIN" serve --help >/dev/null 2>&1 || die "'$FILESYNC_BIN serve --help' failed"
    "$FILESYNC_BIN" sync --help >/dev/null 2>&1 || die "'$FILESYNC_BIN sync --help' failed"
fi

# ---------------------------------------------------------- work dir, cleanup

WORK=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/filesync-bench.XXXXXX")
MNT="$WORK/mnt"
LOGS="$WORK/logs"
IMG=""
mkdir -p "$MNT" "$LOGS"
PIDS=()
SUCCESS=0

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if mountpoint -q "$MNT"; then
        local i
        for i in 1 2 3 4 5; do
            umount "$MNT" 2>/dev/null && break
            sleep 1
        done
        if mountpoint -q "$MNT"; then
            log "umount $MNT failed; lazy unmount"
            umount -l "$MNT"
        fi
    fi
    if [[ -n $IMG ]]; then
        local dev
        for dev in $(losetup -j "$IMG" -O NAME -n 2>/dev/null); do
            losetup -d "$dev"
        done
        rm -f "$IMG"
    fi
    if ((SUCCESS)); then
        rm -rf "$WORK"
    else
        rm -rf "$MNT" "$WORK/rsyncd.conf"
        log "failed (exit $rc); logs kept in $LOGS"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ the filesystem

if [[ $FS == tmpfs ]]; then
    # tmpfs allows one inode per two pages of RAM by default; the many and million
    # trees may need more.
    opts="size=$FS_SIZE,mode=0755" inode_note=""
    default_inodes=$(awk '/^MemTotal/ {print int($2 / 8)}' /proc/meminfo)
    if ((NEED_INODES > default_inodes)); then
        opts+=",nr_inodes=$NEED_INODES"
        inode_note=", nr_inodes=$NEED_INODES"
    fi
    mount -t tmpfs -o "$opts" filesync-bench "$MNT"
    FS_DESC="tmpfs (size=$FS_SIZE$inode_note), mounted fresh for this run"
else
    IMG="$WORK/fs.img"
    truncate -s "$FS_SIZE" "$IMG"
    # mkfs.ext4 makes one inode per 16 KiB by default; the many and million trees
    # may need more (-N).
    mkfs_opts=() inode_note=""
    img_bytes=$(stat -c %s "$IMG")
    if ((NEED_INODES > img_bytes / 16384)); then
        mkfs_opts=(-N "$NEED_INODES")
        inode_note=", mkfs.ext4 -N $NEED_INODES"
    fi
    # Initialise inode tables and journal now, so ext4lazyinit does not write
    # in the background while we measure.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "${mkfs_opts[@]}" "$IMG"
    mount -o loop "$IMG" "$MNT"
    backing=$(df -PT "$WORK" | awk 'NR==2 {print $2 " on " $1}')
    FS_DESC="ext4 (size=$FS_SIZE$inode_note) on a loop device, image file on $backing, made fresh for this run"
fi
mountpoint -q "$MNT" || die "mount of $MNT failed"
log "mounted $FS at $MNT ($(df -Pi "$MNT" | awk 'NR==2 {print $2}') inodes)"

SRC="$MNT/src"
RSYNC_DST="$MNT/dst-rsync"
FS_ROOT="$MNT/dst-filesync"
FS_DST="$FS_ROOT/client_bench"
# filesync-auth: a second filesync server, with --auth-file, on a root of its own.
FSA_ROOT="$MNT/dst-filesync-auth"
FSA_DST="$FSA_ROOT/client_bench"
LIMIT_DST="$MNT/dst-limit"
mkdir -p "$RSYNC_DST" "$FS_ROOT" "$FSA_ROOT" "$MNT/tmp"

# ------------------------------------------ network namespace, RSS listener

# Servers and clients run in a network namespace of their own (held open by a
# sleeping process), with only a loopback interface: its byte counters then see
# the benchmark's traffic and nothing else on the machine.
NS=()
NETDEV=/proc/net/dev
if ((USE_NETNS)); then
    unshare --net sleep infinity &
    NS_PID=$!
    PIDS+=("$NS_PID")
    for ((i = 0; i < 200; i++)); do
        [[ $(readlink "/proc/$NS_PID/ns/net" 2>/dev/null) != "$(readlink /proc/self/ns/net)" ]] && break
        kill -0 "$NS_PID" 2>/dev/null || die "unshare --net failed (use --no-netns to count the machine's loopback traffic instead)"
        sleep 0.05
    done
    NS=(nsenter "--net=/proc/$NS_PID/ns/net")
    "${NS[@]}" ip link set lo up || die "could not bring up lo in the benchmark's network namespace"
    NETDEV="/proc/$NS_PID/net/dev"
    log "network namespace held by pid $NS_PID (loopback only)"
fi

# Exit records of all tasks (pid, ppid, peak RSS), for the rsync daemon's
# per-connection processes, which are gone before they could be read from /proc.
TS_FILE="$LOGS/taskstats.txt"
: >"$TS_FILE"
coproc TSL { exec python3 "$TASKSTATS" listen "$TS_FILE" 2>"$LOGS/taskstats.err"; }
TSL_PID=$TSL_PID
PIDS+=("$TSL_PID")
read -r -t 10 ready <&"${TSL[0]}" || true
[[ ${ready:-} == ready ]] || { cat "$LOGS/taskstats.err" >&2; die "the taskstats listener did not start (needs CONFIG_TASKSTATS, CONFIG_TASK_XACCT and root)"; }

# -------------------------------------------------------------------- helpers

free_port() {
    "${NS[@]}" python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_listen PORT PID NAME LOGFILE
wait_listen() {
    local port=$1 pid=$2 name=$3 logf=$4 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2; die "$name exited during start-up (log: $logf)"; }
        if command -v ss >/dev/null; then
            "${NS[@]}" ss -Hltn "( sport = :$port )" 2>/dev/null | grep -q . && return 0
        else
            "${NS[@]}" python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1).close()' "$port" 2>/dev/null && return 0
        fi
        sleep 0.05
    done
    die "$name did not listen on 127.0.0.1:$port within 10 s (log: $logf)"
}

# Runs a command with stdin from /dev/null and output to a log file, and prints
# "<wall seconds> <exit code> <pid> <CPU seconds>", timed with a monotonic clock around
# the process (CPU: user + system time of the command and its reaped children, wait4). (The pid lets the caller find the command's exit record in the
# taskstats file.) A command that outlives the timeout is killed
# and reported with exit code 124. It runs inside the benchmark's network
# namespace, entered (by nsenter) before the clock starts.
TIMER_PY='
import os, signal, subprocess, sys, threading, time
timeout = float(sys.argv[1])
with open(sys.argv[2], "ab") as log:
    t0 = time.monotonic()
    p = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    expired = threading.Event()
    def kill():
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    def expire():
        expired.set()
        kill()
    def stop(signum, frame):
        kill()
        os.waitpid(p.pid, 0)
        sys.exit(128 + signum)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    timer = threading.Timer(timeout, expire)
    timer.start()
    _, status, ru = os.wait4(p.pid, 0)
    t1 = time.monotonic()
    timer.cancel()
    p.returncode = rc = 124 if expired.is_set() else os.waitstatus_to_exitcode(status)
    if rc < 0:
        rc = 128 - rc
print("%.6f %d %d %.3f" % (t1 - t0, rc, p.pid, ru.ru_utime + ru.ru_stime))
'

# Extra client flags: the delta case adds --stats (rsync) and --json (filesync), whose
# byte counts it reports, and --partial for rsync's resume runs.
RSYNC_EXTRA=() FS_EXTRA=()
sync_cmd() { # sync_cmd TOOL -> sets CMD array
    case $1 in
        rsync)
            CMD=(rsync -a --delete)
            if ((RSYNC_FSYNC)); then CMD+=(--fsync); fi
            CMD+=("${RSYNC_EXTRA[@]}" "$SRC/" "rsync://127.0.0.1:$RSYNC_PORT/mod/")
            ;;
        filesync)
            CMD=("$FILESYNC_BIN" sync --once --id bench --server "127.0.0.1:$FS_PORT" --dir "$SRC" "${FS_EXTRA[@]}")
            ;;
        filesync-auth) # the same client, authenticating: the session runs in TLS 1.3
            CMD=("$FILESYNC_BIN" sync --once --id bench --server "127.0.0.1:$FSA_PORT" --dir "$SRC"
                --secret-file "$AUTH_DIR/secret" --known-servers "$AUTH_DIR/known_servers" "${FS_EXTRA[@]}")
            ;;
        limit) # the durable limit: a local copy that is on disk when it ends
            CMD=(bash -c 'set -eo pipefail; tar -C "$1" -cf - . | tar -C "$2" -xf -; sync -f "$2"' limit "$SRC" "$LIMIT_DST")
            ;;
    esac
}

dest_of() {
    case $1 in
        rsync) echo "$RSYNC_DST" ;;
        filesync) echo "$FS_DST" ;;
        filesync-auth) echo "$FSA_DST" ;;
        limit) echo "$LIMIT_DST" ;;
    esac
}

# The server root, server pid and server log of filesync or filesync-auth.
fs_root_of() {
    case $1 in
        filesync) echo "$FS_ROOT" ;;
        filesync-auth) echo "$FSA_ROOT" ;;
    esac
}
fs_pid_of() {
    case $1 in
        filesync) echo "$FS_SERVER_PID" ;;
        filesync-auth) echo "$FSA_SERVER_PID" ;;
    esac
}
fs_log_of() { echo "$LOGS/$1-serve.log"; }

clear_dest() {
    case $1 in
        rsync) rm -rf "$RSYNC_DST" && mkdir -p "$RSYNC_DST" ;;
        # The server's block signatures of the client's files (cached when a file is
        # stored, checked against its size and mtime) and kept partial files go too: a
        # sync to an empty destination must not find a signature of the same file made
        # by an earlier run, which would spare it the signing a real first sync does.
        filesync) rm -rf "$FS_DST" "$FS_ROOT/.filesync/sigs/client_bench" "$FS_ROOT/.filesync/partial"/* ;;
        filesync-auth) rm -rf "$FSA_DST" "$FSA_ROOT/.filesync/sigs/client_bench" "$FSA_ROOT/.filesync/partial"/* ;;
        limit) rm -rf "$LIMIT_DST" && mkdir -p "$LIMIT_DST" ;;
    esac
}

# lo_bytes: bytes received on the loopback interface of the benchmark's network
# namespace. On lo every packet is sent and received once and both counters count
# it; we read the receive counter, so each packet of either direction counts once.
lo_bytes() {
    awk -F'[: ]+' '$2 == "lo" {print $3; found = 1} END {if (!found) print 0}' "$NETDEV"
}

# wait_daemon_idle: wait until the rsync daemon has no child left (the last
# connection's processes have exited, so their exit records have been sent).
wait_daemon_idle() {
    local i kids
    for ((i = 0; i < 600; i++)); do
        kids=$(cat "/proc/$RSYNC_PID/task/$RSYNC_PID/children" 2>/dev/null || true)
        [[ -z ${kids// /} ]] && return 0
        sleep 0.05
    done
    die "the rsync daemon still has children ($kids) 30 s after the client exited"
}

# run_sync TOOL TAG: one sync; sets ELAPSED, CLIENT_KIB, SERVER_KIB (peak RSS of
# the client and of the server side during this sync) and WIRE (bytes on the
# loopback during it); dies loudly on failure.
ELAPSED="" CLIENT_KIB="" SERVER_KIB="" WIRE="" SENT="" RECV="" NDELTA="" NRESUMED="" CLIENT_CPU="" SERVER_CPU=""
# cpu_ticks PID: user + system time of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo nan; }
run_sync() {
    local tool=$1 tag=$2 out secs rc cpid logf lo0 lo1 ts0 ts1 procs cprocs sums off
    logf="$LOGS/$tool.log"
    sync_cmd "$tool"
    sync -f "$MNT" # flush dirty data now, not during the timed command
    case $tool in
        rsync) wait_daemon_idle ;;
        filesync | filesync-auth) echo 5 >"/proc/$(fs_pid_of "$tool")/clear_refs" ;; # VmHWM := VmRSS
    esac
    if [[ $tool != limit ]]; then
        ts0=$(python3 "$TASKSTATS" mark "$TS_FILE") || die "taskstats mark failed"
    fi
    local st0="" st1=""
    if [[ $tool == filesync* ]]; then st0=$(cpu_ticks "$(fs_pid_of "$tool")"); fi
    lo0=$(lo_bytes)
    printf '\n=== %s %s: %s\n' "$(date +%T)" "$tag" "${CMD[*]}" >>"$logf"
    off=$(stat -c %s "$logf")
    out=$("${NS[@]}" python3 -c "$TIMER_PY" "$TIMEOUT" "$logf" "${CMD[@]}")
    read -r secs rc cpid CLIENT_CPU <<<"$out"
    SERVER_CPU=""
    if [[ $tool == filesync* ]]; then
        st1=$(cpu_ticks "$(fs_pid_of "$tool")")
        SERVER_CPU=$(python3 -c "import os,sys; print('%.2f' % ((float(sys.argv[2]) - float(sys.argv[1])) / os.sysconf('SC_CLK_TCK')))" "$st0" "$st1")
    fi
    printf '=== exit %s after %s s\n' "$rc" "$secs" >>"$logf"
    CLIENT_KIB="" SERVER_KIB=""
    if [[ $tool != limit ]] && ((rc == 0)); then
        if [[ $tool == filesync* ]]; then
            SERVER_KIB=$(awk '/^VmHWM:/ {print $2}' "/proc/$(fs_pid_of "$tool")/status" 2>/dev/null || true)
        else
            wait_daemon_idle
        fi
        ts1=$(python3 "$TASKSTATS" mark "$TS_FILE") || die "taskstats mark failed"
        if [[ $tool == rsync ]]; then
            sums=$(python3 "$TASKSTATS" sum "$TS_FILE" "$ts0" "$ts1" "=$cpid" "$RSYNC_PID")
            read -r SERVER_KIB procs _ <<<"$(sed -n 2p <<<"$sums")"
            ((procs > 0)) || die "no exit record of the rsync daemon's children for $tag ($TS_FILE)"
        else
            sums=$(python3 "$TASKSTATS" sum "$TS_FILE" "$ts0" "$ts1" "=$cpid")
        fi
        read -r CLIENT_KIB cprocs _ <<<"$(sed -n 1p <<<"$sums")"
        ((cprocs > 0)) || die "no exit record of the $tool client for $tag ($TS_FILE)"
        printf '=== peak RSS (KiB): client %s (%s), server %s\n' "$CLIENT_KIB" "$(sed -n 1p <<<"$sums" | cut -d' ' -f3)" \
            "$SERVER_KIB${procs:+ ($(sed -n 2p <<<"$sums" | cut -d' ' -f3))}" >>"$logf"
    fi
    lo1=$(lo_bytes)
    WIRE=$((lo1 - lo0))
    if ((rc != 0)); then
        tail -n 30 "$logf" >&2
        if [[ $tool == filesync* ]] && ! kill -0 "$(fs_pid_of "$tool")" 2>/dev/null; then
            log "the $tool server is no longer running; its log ($(fs_log_of "$tool")) ends:"
            tail -n 30 "$(fs_log_of "$tool")" >&2
        fi
        ((rc == 124)) && log "(exit 124: killed after the --timeout of $TIMEOUT s)"
        die "$tool sync failed with exit code $rc ($tag); log: $logf"
    fi
    ELAPSED=$secs
    SENT="" RECV="" NDELTA="" NRESUMED=""
    if [[ $tool != limit ]]; then
        read -r SENT RECV NDELTA NRESUMED <<<"$(tail -c +$((off + 1)) "$logf" | python3 -c "$STATS_PY" "$tool")"
    fi
}

# Byte counts a client printed (filesync --json, rsync --stats), from its output on
# stdin: "<sent> <received> <files_delta> <files_resumed>", nan where not printed.
# filesync's bytes_sent counts the literal file data it sent; rsync's "Total bytes
# sent" everything the client wrote to the socket, "received" what it read.
STATS_PY='
import json, re, sys
text = sys.stdin.read()
out = ["nan"] * 4
if sys.argv[1].startswith("filesync"):
    js = [l for l in text.splitlines() if l.startswith("{")]
    if js:
        v = json.loads(js[-1])
        out = [str(v.get("bytes_sent", "nan")), "nan", str(v.get("files_delta", "nan")), str(v.get("files_resumed", "nan"))]
else:
    for i, what in enumerate(("sent", "received")):
        m = re.search(r"Total bytes %s: ([0-9,.]+)" % what, text)
        if m:
            out[i] = m.group(1).replace(",", "").replace(".", "")
print(" ".join(out))
'

EXCLUDES=()
read -r -a EXCLUDES <<<"${FILESYNC_VERIFY_EXCLUDE:-}"

# listing DIR: sorted "type path size mtime-seconds" lines of everything below DIR.
listing() {
    local prune=() x
    for x in "${EXCLUDES[@]}"; do
        prune+=(-name "$x" -prune -o)
    done
    (cd "$1" && find . -mindepth 1 "${prune[@]}" \( \
        -type f -printf 'f\t%P\t%s\t%T@\n' -o \
        -type d -printf 'd\t%P\n' -o \
        -printf '%y\t%P\n' \)) |
        sed -E 's/^(f\t.*\t[0-9]+)\.[0-9]+$/\1/' | LC_ALL=C sort
}

# verify TOOL TAG FULL [CHANGED_LIST]
verify() {
    local tool=$1 tag=$2 full=$3 changed=${4:-} dst rel x
    dst=$(dest_of "$tool")
    [[ -d $dst ]] || die "VERIFY FAILED ($tool, $tag): destination $dst does not exist"
    if ! diff <(listing "$SRC") <(listing "$dst") >"$LOGS/verify-$tool.diff"; then
        head -n 20 "$LOGS/verify-$tool.diff" >&2
        die "VERIFY FAILED ($tool, $tag): listing (path/size/mtime) of $dst differs from the source ($(wc -l <"$LOGS/verify-$tool.diff") diff lines; $LOGS/verify-$tool.diff)"
    fi
    if [[ -n $changed ]]; then
        while IFS= read -r rel; do
            cmp -s "$SRC/$rel" "$dst/$rel" ||
                die "VERIFY FAILED ($tool, $tag): changed file $rel differs from the source"
        done <"$changed"
    fi
    if ((full || FULL_VERIFY)); then
        local xs=()
        for x in "${EXCLUDES[@]}"; do xs+=(-x "$x"); done
        if ! diff -r -q --no-dereference "${xs[@]}" "$SRC" "$dst" >"$LOGS/verify-$tool.diff" 2>&1; then
            head -n 20 "$LOGS/verify-$tool.diff" >&2
            die "VERIFY FAILED ($tool, $tag): diff -r of $SRC and $dst found differences ($LOGS/verify-$tool.diff)"
        fi
        log "  $tool: full diff -r ok"
    fi
}

# Tool order rotates between runs, so no tool always goes first (with two tools:
# they alternate).
tools_for_run() { # tools_for_run RUN [TOOL...]
    local r=$1
    shift
    local list=("$@") n=$#
    ((n)) || { list=("${TOOLS[@]}"); n=${#TOOLS[@]}; }
    local i out=()
    for ((i = 0; i < n; i++)); do out+=("${list[(i + r) % n]}"); done
    echo "${out[*]}"
}

declare -A TIMES=() CLIENT_RSS=() SERVER_RSS=() WIRE_BYTES=() CPU_CLIENT=() CPU_SERVER=()
# The delta case's extra figures, per run: client byte counts, and for the resume runs
# the size of the server's temporary file when the client was killed and the bytes the
# server kept.
declare -A SENT_BYTES=() RECV_BYTES=() DELTA_FILES=() RESUMED_FILES=() CUT_SEEN=() CUT_KEPT=()
CASE_KEYS=()
declare -A CASE_LABEL=() CASE_BYTES=()

record() { # record CASEKEY TOOL: the figures of the last run_sync
    TIMES["$1|$2"]="${TIMES["$1|$2"]:-} $ELAPSED"
    if [[ $2 != limit ]]; then
        CLIENT_RSS["$1|$2"]="${CLIENT_RSS["$1|$2"]:-} ${CLIENT_KIB:-nan}"
        SERVER_RSS["$1|$2"]="${SERVER_RSS["$1|$2"]:-} ${SERVER_KIB:-nan}"
        WIRE_BYTES["$1|$2"]="${WIRE_BYTES["$1|$2"]:-} $WIRE"
        CPU_CLIENT["$1|$2"]="${CPU_CLIENT["$1|$2"]:-} ${CLIENT_CPU:-nan}"
        CPU_SERVER["$1|$2"]="${CPU_SERVER["$1|$2"]:-} ${SERVER_CPU:-nan}"
        SENT_BYTES["$1|$2"]="${SENT_BYTES["$1|$2"]:-} ${SENT:-nan}"
        RECV_BYTES["$1|$2"]="${RECV_BYTES["$1|$2"]:-} ${RECV:-nan}"
        DELTA_FILES["$1|$2"]="${DELTA_FILES["$1|$2"]:-} ${NDELTA:-nan}"
        RESUMED_FILES["$1|$2"]="${RESUMED_FILES["$1|$2"]:-} ${NRESUMED:-nan}"
    fi
}

new_case() { # new_case KEY LABEL
    CASE_KEYS+=("$1")
    CASE_LABEL["$1"]=$2
    log "case: $2"
}

# Strictly increasing mtimes for the restore/mutate rounds (2025-06-15 onwards):
# later than every baseline mtime (2023-11), so even a "newer than" rule sees each
# change, and still in the past, so no tool sees a timestamp from the future.
MTIME_SEQ=1750000000
next_mtime() { MTIME_SEQ=$((MTIME_SEQ + 10)); }

gen_args() { # gen_args TREE -> GARGS
    case $1 in
        small) GARGS=("${SMALL_ARGS[@]}") ;;
        large) GARGS=("${LARGE_ARGS[@]}") ;;
        many) GARGS=("${MANY_ARGS[@]}") ;;
        million) GARGS=("${MILLION_ARGS[@]}") ;;
        delta) GARGS=("${DELTA_ARGS[@]}") ;;
    esac
}

run_note() { # run_note TOOL: the log line of a run
    if [[ $1 == limit ]]; then
        echo "${ELAPSED}s"
    else
        local extra=""
        if [[ ${SENT:-nan} != nan ]]; then extra+=", bytes sent $SENT"; fi
        if [[ ${RECV:-nan} != nan ]]; then extra+=", received $RECV"; fi
        if [[ ${NDELTA:-nan} != nan ]]; then extra+=", files_delta $NDELTA, files_resumed $NRESUMED"; fi
        echo "${ELAPSED}s, RSS client $((${CLIENT_KIB:-0} / 1024)) MiB, server $((${SERVER_KIB:-0} / 1024)) MiB, wire $((WIRE / 1024)) KiB$extra"
    fi
}

# ------------------------------------------------------------------- the cases

# timed_run KEY R TOOL [CHANGED_LIST]: one sync of run R (0 = warm-up), recorded and checked.
timed_run() {
    local key=$1 r=$2 tool=$3 changed=${4:-}
    run_sync "$tool" "$key run $r"
    if ((r == 0)); then
        log "  warm-up $tool: $(run_note "$tool")"
        verify "$tool" "$key warm-up" 0 "$changed"
    else
        log "  run $r $tool: $(run_note "$tool")"
        record "$key" "$tool"
        verify "$tool" "$key run $r" $((r == 1)) "$changed"
    fi
}

case_initial() {
    local tree=$1 key="$1-initial" r tool t tools=("${TOOLS[@]}")
    if ((LIMIT)); then tools+=(limit); fi
    new_case "$key" "$2"
    # The bytes of the tree, for the throughput column of the authentication table.
    CASE_BYTES["$key"]=$(find "$SRC" -type f -printf '%s\n' | awk '{t += $1} END {printf "%.0f", t}')
    for ((r = 0; r <= RUNS; r++)); do
        for tool in $(tools_for_run "$r" "${tools[@]}"); do
            # Only the source and the copy being made exist during a run (this
            # bounds the space the many/million trees need).
            for t in "${tools[@]}"; do clear_dest "$t"; done
            timed_run "$key" "$r" "$tool"
        done
    done
    clear_dest limit
}

case_changed() {
    local tree=$1 key="$1-changed" r tool changed="$MNT/tmp/changed.txt"
    new_case "$key" "$2"
    gen_args "$tree"
    for ((r = 0; r <= RUNS; r++)); do
        # filesync keeps what a sync replaces (serve --keep-versions): in the large tree
        # 512 MiB per restore and per change, so the records go between runs, untimed.
        prune_versions
        # Back to the baseline content (with a fresh mtime), synced untimed by both tools ...
        next_mtime
        python3 "$GEN" mutate "$tree" "$SRC" "${GARGS[@]}" --restore --mtime "$MTIME_SEQ" >/dev/null
        for tool in "${TOOLS[@]}"; do
            run_sync "$tool" "$key run $r restore"
            verify "$tool" "$key run $r restore" 0
        done
        # ... then the same change for both, and the timed sync.
        next_mtime
        python3 "$GEN" mutate "$tree" "$SRC" "${GARGS[@]}" --mtime "$MTIME_SEQ" >"$changed"
        for tool in $(tools_for_run "$r"); do
            timed_run "$key" "$r" "$tool" "$changed"
        done
    done
}

case_nochange() {
    local tree=$1 key="$1-nochange" r tool
    new_case "$key" "$2"
    for tool in "${TOOLS[@]}"; do # make sure both start in sync
        run_sync "$tool" "$key prepare"
    done
    for ((r = 0; r <= RUNS; r++)); do
        for tool in $(tools_for_run "$r"); do
            timed_run "$key" "$r" "$tool"
        done
    done
}

# ------------------------------------------------------- the delta case's cases

# prune_versions: the filesync server keeps what a sync replaces (serve
# --keep-versions, 30 days by default) under .filesync/versions; every run of the
# delta case replaces a whole 512 MiB file, so the records are deleted between runs,
# untimed, to bound the space they take.
prune_versions() {
    local tool root
    for tool in filesync filesync-auth; do
        has_tool "$tool" || continue
        root=$(fs_root_of "$tool")
        if [[ -d $root/.filesync/versions ]]; then
            find "$root/.filesync/versions" -mindepth 2 -maxdepth 2 -exec rm -rf {} +
        fi
    done
}

# case_delta_edit KIND LABEL: KIND poke (POKE_LEN bytes of new content at POKE_OFFSET)
# or rewrite (the whole file new, same size), applied before every run; both tools
# then sync the same change. The tools start in sync (after case_initial).
case_delta_edit() {
    local kind=$1 key="delta-$1" r tool changed="$MNT/tmp/changed.txt"
    new_case "$key" "$2"
    echo "$DELTA_REL" >"$changed"
    for tool in "${TOOLS[@]}"; do # make sure both start in sync
        run_sync "$tool" "$key prepare"
    done
    for ((r = 0; r <= RUNS; r++)); do
        prune_versions
        next_mtime
        case $kind in
            poke) python3 "$DTOOL" poke "$SRC/$DELTA_REL" --offset "$POKE_OFFSET" --length "$POKE_LEN" \
                --seed "$SEED" --variant "$r" --mtime "$MTIME_SEQ" ;;
            rewrite) python3 "$DTOOL" rewrite "$SRC/$DELTA_REL" --seed "$SEED" --variant "$r" --mtime "$MTIME_SEQ" ;;
        esac
        for tool in $(tools_for_run "$r"); do
            timed_run "$key" "$r" "$tool" "$changed"
        done
    done
    prune_versions
}

# interrupt_sync TOOL TAG AT: a sync of the (empty-destination) resume file, killed
# (SIGKILL) once the server's temporary file holds AT bytes: filesync's newest file in
# <root>/.filesync/tmp, rsync's temporary .NAME.XXXXXX in the module (rsync gets
# --partial, so its daemon keeps what it received in place of the file). Waits until
# the server has kept its partial file; sets CUT_AT (size seen) and KEPT (bytes kept).
CUT_AT="" KEPT=""
interrupt_sync() {
    local tool=$1 tag=$2 at=$3 logf="$LOGS/$1.log" watch out n0 i line slog
    sync_cmd "$tool"
    sync -f "$MNT"
    slog=$(fs_log_of "$tool")
    case $tool in
        filesync | filesync-auth)
            watch="$(fs_root_of "$tool")/.filesync/tmp"
            n0=$(grep -c 'kept the beginning of an interrupted file' "$slog" || true)
            ;;
        rsync)
            watch="$RSYNC_DST"
            wait_daemon_idle
            ;;
    esac
    printf '\n=== %s %s (killed at %s bytes in %s): %s\n' "$(date +%T)" "$tag" "$at" "$watch" "${CMD[*]}" >>"$logf"
    out=$("${NS[@]}" python3 "$DTOOL" interrupt --watch "$watch" --at "$at" --log "$logf" --timeout "$TIMEOUT" -- "${CMD[@]}") ||
        die "$tool: the sync to be interrupted ($tag) did not reach $at bytes (log: $logf)"
    read -r CUT_AT secs <<<"$out"
    printf '=== killed (SIGKILL) after %s s, temporary file at %s bytes\n' "$secs" "$CUT_AT" >>"$logf"
    KEPT=""
    case $tool in
        filesync | filesync-auth)
            for ((i = 0; i < 1200; i++)); do
                if (($(grep -c 'kept the beginning of an interrupted file' "$slog" || true) > n0)); then
                    line=$(grep 'kept the beginning of an interrupted file' "$slog" | tail -n 1 | sed 's/\x1b\[[0-9;]*m//g')
                    KEPT=$(sed -nE 's/.*bytes=([0-9]+).*/\1/p' <<<"$line")
                    break
                fi
                sleep 0.05
            done
            [[ -n $KEPT ]] || die "$tool: the server did not log that it kept the interrupted file within 60 s ($slog)"
            ;;
        rsync)
            wait_daemon_idle
            KEPT=$(stat -c %s "$RSYNC_DST/$DELTA_REL" 2>/dev/null || echo 0)
            ;;
    esac
    log "  $tag $tool: killed at $CUT_AT bytes ($(python3 -c "print(f'{$CUT_AT*100/$RESUME_BYTES:.1f}')") %) after ${secs}s; the server kept $KEPT bytes"
}

# case_resume LABEL: for each run and tool, from an empty destination: a sync killed at
# 90 % of the file, then the timed sync that finishes it.
case_resume() {
    local key="delta-resume" r tool changed="$MNT/tmp/changed.txt" at=$((RESUME_BYTES * 9 / 10))
    new_case "$key" "$1"
    echo "$DELTA_REL" >"$changed"
    for ((r = 0; r <= RUNS; r++)); do
        for tool in $(tools_for_run "$r"); do
            clear_dest "$tool"
            if [[ $tool == rsync ]]; then RSYNC_EXTRA=(--stats --partial); fi
            interrupt_sync "$tool" "$key run $r" "$at"
            timed_run "$key" "$r" "$tool" "$changed"
            RSYNC_EXTRA=(--stats)
            if ((r > 0)); then
                CUT_SEEN["$key|$tool"]="${CUT_SEEN["$key|$tool"]:-} $CUT_AT"
                CUT_KEPT["$key|$tool"]="${CUT_KEPT["$key|$tool"]:-} $KEPT"
            fi
        done
    done
}

# -------------------------------------------------------------------- daemons

if has_tool rsync; then
    cat >"$WORK/rsyncd.conf" <<EOF
# minimal rsync daemon config for the filesync benchmark
use chroot = no
read only = no
uid = root
gid = root
reverse lookup = no
max connections = 0

[mod]
    path = $RSYNC_DST
    comment = filesync benchmark destination
EOF
fi

if has_filesync; then
    # filesync reads FILESYNC_* (and RUST_LOG) from the environment; run it with its
    # defaults plus the flags below, whatever the caller's shell has set.
    for v in $(compgen -e); do
        if [[ $v == FILESYNC_* || $v == RUST_LOG ]]; then export -n "${v?}"; fi
    done
    # Keep any per-user state of filesync on the benchmark filesystem too.
    mkdir -p "$MNT/home"
    export HOME="$MNT/home" XDG_CONFIG_HOME="$MNT/home/.config" \
        XDG_STATE_HOME="$MNT/home/.local/state" XDG_CACHE_HOME="$MNT/home/.cache" \
        XDG_DATA_HOME="$MNT/home/.local/share"
fi

# filesync-auth's credentials, in the work dir (not on the benchmark filesystem): one
# secret from `filesync gen-secret`, in the server's auth file for client id "bench" and
# in the client's secret file (both mode 0600, as filesync requires), and the client's
# known-servers file, where the auth server's key is pinned on the first sync.
AUTH_DIR="$WORK/auth"
if has_tool filesync-auth; then
    mkdir -p -m 0700 "$AUTH_DIR"
    secret=$("$FILESYNC_BIN" gen-secret) || die "filesync gen-secret failed"
    (
        umask 077
        printf 'bench %s\n' "$secret" >"$AUTH_DIR/auth"
        printf '%s\n' "$secret" >"$AUTH_DIR/secret"
    )
    unset secret
fi

forget_pid() { # forget_pid PID: drop it from the PIDS that cleanup stops
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop_pid() { # stop_pid PID: SIGTERM, wait (SIGKILL after 10 s)
    local i
    kill "$1" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.05
    done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# Both servers are started fresh for every tree, so the peak RSS of a server in
# one tree's cases does not depend on the trees before it.
start_servers() {
    if has_tool rsync; then
        RSYNC_PORT=$(free_port)
        "${NS[@]}" rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --address=127.0.0.1 \
            --port="$RSYNC_PORT" --log-file="$LOGS/rsyncd.log" >>"$LOGS/rsyncd.out" 2>&1 &
        RSYNC_PID=$!
        PIDS+=("$RSYNC_PID")
        wait_listen "$RSYNC_PORT" "$RSYNC_PID" "rsync daemon" "$LOGS/rsyncd.log"
        log "rsync daemon (pid $RSYNC_PID) listening on 127.0.0.1:$RSYNC_PORT (module 'mod' -> $RSYNC_DST)"
    fi
    if has_tool filesync; then
        FS_PORT=$(free_port)
        "${NS[@]}" "$FILESYNC_BIN" serve --port "$FS_PORT" --root "$FS_ROOT" --bind 127.0.0.1 \
            --no-discovery --interval 30 >>"$LOGS/filesync-serve.log" 2>&1 &
        FS_SERVER_PID=$!
        PIDS+=("$FS_SERVER_PID")
        wait_listen "$FS_PORT" "$FS_SERVER_PID" "filesync server" "$LOGS/filesync-serve.log"
        log "filesync server (pid $FS_SERVER_PID) listening on 127.0.0.1:$FS_PORT (root $FS_ROOT)"
    fi
    if has_tool filesync-auth; then
        FSA_PORT=$(free_port)
        "${NS[@]}" "$FILESYNC_BIN" serve --port "$FSA_PORT" --root "$FSA_ROOT" --bind 127.0.0.1 \
            --no-discovery --interval 30 --auth-file "$AUTH_DIR/auth" >>"$(fs_log_of filesync-auth)" 2>&1 &
        FSA_SERVER_PID=$!
        PIDS+=("$FSA_SERVER_PID")
        wait_listen "$FSA_PORT" "$FSA_SERVER_PID" "filesync-auth server" "$(fs_log_of filesync-auth)"
        log "filesync-auth server (pid $FSA_SERVER_PID) listening on 127.0.0.1:$FSA_PORT (root $FSA_ROOT, --auth-file)"
    fi
}

stop_servers() {
    if has_tool rsync; then
        wait_daemon_idle
        stop_pid "$RSYNC_PID"
    fi
    if has_tool filesync; then
        kill -0 "$FS_SERVER_PID" 2>/dev/null || die "the filesync server (pid $FS_SERVER_PID) died; log: $LOGS/filesync-serve.log"
        stop_pid "$FS_SERVER_PID"
    fi
    if has_tool filesync-auth; then
        kill -0 "$FSA_SERVER_PID" 2>/dev/null || die "the filesync-auth server (pid $FSA_SERVER_PID) died; log: $(fs_log_of filesync-auth)"
        stop_pid "$FSA_SERVER_PID"
    fi
}

# ---------------------------------------------------------------------- run

GEN_NOTES=()
fmt_int() { python3 -c 'import sys; print(f"{int(sys.argv[1]):,}")' "$1"; }
for tree in "${TREES[@]}"; do
    rm -rf "$SRC"
    for tool in "${TOOLS[@]}" limit; do clear_dest "$tool"; done
    gen_args "$tree"
    log "generating the $tree tree"
    t0=$(date +%s.%N)
    gtree=$tree
    if [[ $tree == delta ]]; then gtree=large; fi
    python3 "$GEN" "$gtree" "$SRC" "${GARGS[@]}" 2>"$LOGS/gen-$tree.txt" || { cat "$LOGS/gen-$tree.txt" >&2; die "gen_tree.py $tree failed"; }
    t1=$(date +%s.%N)
    GEN_NOTES+=("$(head -n 1 "$LOGS/gen-$tree.txt")")
    log "  $(head -n 1 "$LOGS/gen-$tree.txt") ($(python3 -c "print(f'{$t1-$t0:.1f}')") s)"
    start_servers
    case $tree in
        small)
            nfiles=$(fmt_int "$SMALL_FILES")
            mb=$(find "$SRC" -type f -printf '%s\n' | awk '{t += $1} END {printf "%.0f", t / 1e6}')
            nchanged=$(python3 -c "print(max(1, round($SMALL_FILES*0.01)))")
            case_initial small "small: initial ($nfiles files, $mb MB)"
            case_changed small "small: 1% changed ($nchanged files rewritten)"
            case_nochange small "small: no change"
            ;;
        large)
            case_initial large "large: initial ($LARGE_COUNT × $LARGE_MIB MiB)"
            case_changed large "large: 1 MiB changed in one file"
            case_nochange large "large: no change"
            ;;
        many)
            mb=$(find "$SRC" -type f -printf '%s\n' | awk '{t += $1} END {printf "%.0f", t / 1e6}')
            nchanged=$(fmt_int "$(python3 -c "print(max(1, round($MANY_FILES*0.01)))")")
            case_initial many "many: initial ($(fmt_int "$MANY_FILES") files, $mb MB, $(fmt_int "$MANY_DIRS") dirs)"
            case_changed many "many: 1% changed ($nchanged files rewritten)"
            case_nochange many "many: no change"
            ;;
        million)
            mb=$(find "$SRC" -type f -printf '%s\n' | awk '{t += $1} END {printf "%.0f", t / 1e6}')
            case_initial million "million: initial ($(fmt_int "$MILLION_FILES") files, $mb MB, $(fmt_int "$MILLION_DIRS") dirs)"
            case_nochange million "million: no change"
            ;;
        delta)
            RSYNC_EXTRA=(--stats) FS_EXTRA=(--json)
            case_initial delta "delta: initial (1 × $DELTA_MIB MiB; baseline of the rewrite)"
            case_delta_edit poke "delta: 4 KiB changed in the middle of $DELTA_MIB MiB"
            case_delta_edit rewrite "delta: $DELTA_MIB MiB rewritten (new content, same size)"
            # The resume file replaces the first one, alone in the source.
            rm -rf "$SRC"
            for tool in "${TOOLS[@]}" limit; do clear_dest "$tool"; done
            prune_versions
            log "generating the resume file"
            python3 "$GEN" large "$SRC" "${RESUME_ARGS[@]}" 2>>"$LOGS/gen-$tree.txt" || die "gen_tree.py large (resume file) failed"
            GEN_NOTES+=("resume file: $(tail -n 2 "$LOGS/gen-$tree.txt" | head -n 1) (seed $((SEED + 1)))")
            case_resume "delta: $RESUME_MIB MiB cut at 90 %, then finished"
            RSYNC_EXTRA=() FS_EXTRA=()
            ;;
    esac
    stop_servers
    rm -rf "$SRC"
    for tool in "${TOOLS[@]}" limit; do clear_dest "$tool"; done
done

# -------------------------------------------------------------------- report

# Input lines: key TAB label TAB tool TAB times TAB client-KiB TAB server-KiB TAB wire-bytes
# TAB tree-bytes TAB client-CPU TAB server-CPU (space-separated values, one per timed run;
# tree-bytes: the size of the source, initial cases only; CPU seconds: the client command's
# user + system time, and the filesync server's during the sync). Prints the main table, a line "----", the table of all
# runs, a line "----" and, when filesync-auth ran, its tables against filesync.
REPORT_PY='
import math, statistics, sys
rows, order = {}, []
for line in sys.stdin.read().splitlines():
    key, label, tool, times, client, server, wire, tbytes, ccpu, scpu = (line.split("\t") + [""] * 10)[:10]
    if key not in rows:
        rows[key] = {"label": label, "bytes": float(tbytes) if tbytes else None}
        order.append(key)
    vals = lambda s: [float(x) for x in s.split() if x != "nan"]
    rows[key][tool] = {"t": vals(times), "c": vals(client), "s": vals(server), "w": vals(wire), "cc": vals(ccpu), "sc": vals(scpu)}
med = lambda v: statistics.median(v) if v else None
def f_s(v): return "–" if v is None else "%.3f" % v
def f_mib(v): return "–" if v is None else "%.1f" % (v / 1024)
def f_wire(v):
    if v is None:
        return "–"
    m = v / 1048576
    return "%.0f" % m if m >= 100 else "%.1f" % m if m >= 10 else "%.2f" % m if m >= 0.1 else "%.3f" % m
def ratio(a, b): return "–" if a is None or b is None else ("%.2f" % (a / b) if b > 0 else "inf")
def rss(r): return "–" if r is None else "%s / %s" % (f_mib(med(r["c"])), f_mib(med(r["s"])))
table = ["| case | rsync median (s) | filesync median (s) | ratio (filesync/rsync) | durable limit (s) | filesync/limit | rsync RSS client / server (MiB) | filesync RSS client / server (MiB) | rsync wire (MiB) | filesync wire (MiB) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
details = ["| case | tool | runs (s) | min | median | max | client RSS (MiB) | server RSS (MiB) | wire (MiB) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
for key in order:
    r = rows[key]
    rs, fs, lim = r.get("rsync"), r.get("filesync"), r.get("limit")
    mt = lambda x: med(x["t"]) if x else None
    table.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        r["label"], f_s(mt(rs)), f_s(mt(fs)), ratio(mt(fs), mt(rs)),
        f_s(mt(lim)), ratio(mt(fs), mt(lim)) if lim else "–",
        rss(rs), rss(fs),
        f_wire(med(rs["w"])) if rs else "–", f_wire(med(fs["w"])) if fs else "–"))
    for tool in ("rsync", "filesync", "filesync-auth", "limit"):
        x = r.get(tool)
        if not x:
            continue
        name = "durable limit (tar, sync -f)" if tool == "limit" else tool
        t = x["t"]
        details.append("| %s | %s | %s| %s | %s | %s | %s | %s | %s |" % (
            r["label"], name, "".join("%.3f " % v for v in t), f_s(min(t)), f_s(med(t)), f_s(max(t)),
            f_mib(med(x["c"])) if tool != "limit" else "–", f_mib(med(x["s"])) if tool != "limit" else "–",
            f_wire(med(x["w"])) if tool != "limit" else "–"))
print("\n".join(table))
print("----")
print("\n".join(details))
print("----")
# filesync with authentication (TLS 1.3) against filesync without, case by case.
auth = [k for k in order if "filesync" in rows[k] and "filesync-auth" in rows[k]]
if auth:
    out = ["| case | filesync median (s) | filesync-auth median (s) | ratio (auth/plain) | per-run ratios: median (min–max) | filesync runs (s) | filesync-auth runs (s) | throughput plain / auth (MiB/s) | CPU client + server, plain (s) | CPU client + server, auth (s) | CPU ratio (auth/plain) | filesync RSS client / server (MiB) | filesync-auth RSS client / server (MiB) | filesync wire (MiB) | filesync-auth wire (MiB) |",
           "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    span = lambda t: "%.3f–%.3f" % (min(t), max(t)) if t else "–"
    for key in auth:
        r = rows[key]
        p, a = r["filesync"], r["filesync-auth"]
        tp, ta = med(p["t"]), med(a["t"])
        thr = "–"
        if r["bytes"] and tp and ta:
            thr = "%.0f / %.0f" % (r["bytes"] / 1048576 / tp, r["bytes"] / 1048576 / ta)
        # The two tools of a run go one after the other, so the ratio within each run
        # is less exposed to a load that comes and goes than the ratio of the medians.
        pr = [x / y for x, y in zip(a["t"], p["t"]) if y > 0]
        prs = "%.2f (%.2f–%.2f)" % (med(pr), min(pr), max(pr)) if pr else "–"
        def cpu(x):
            c, s_ = med(x["cc"]), med(x["sc"])
            return (None, "–") if c is None or s_ is None else (c + s_, "%.2f + %.2f" % (c, s_))
        (cp, cps), (ca, cas) = cpu(p), cpu(a)
        out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["label"], f_s(tp), f_s(ta), ratio(ta, tp), prs, span(p["t"]), span(a["t"]), thr, cps, cas, ratio(ca, cp),
            rss(p), rss(a), f_wire(med(p["w"])), f_wire(med(a["w"]))))
    # The targets of the issue "authentication and encryption": on large files (the
    # initial 2 x 512 MiB) at least 0.7 x the throughput without authentication; on small
    # files (every case of the 20,000-file tree) at most 1.15 x the time.
    tg = ["| target | filesync | filesync-auth | result | met |", "|---|---:|---:|---:|---|"]
    for key in auth:
        r = rows[key]
        tp, ta = med(r["filesync"]["t"]), med(r["filesync-auth"]["t"])
        if key == "large-initial":
            x = tp / ta
            tg.append("| %s: throughput with auth ≥ 0.7 × without | %s s | %s s | %.2f × | %s |" % (
                r["label"], f_s(tp), f_s(ta), x, "yes" if x >= 0.7 else "**no**"))
        elif key.startswith("small-"):
            x = ta / tp
            tg.append("| %s: time with auth ≤ 1.15 × without | %s s | %s s | %.2f × | %s |" % (
                r["label"], f_s(tp), f_s(ta), x, "yes" if x <= 1.15 else "**no**"))
    print("\n".join(out))
    if len(tg) > 2:
        print()
        print("\n".join(tg))
'

MEAS="$LOGS/measurements.tsv"
: >"$MEAS"
for key in "${CASE_KEYS[@]}"; do
    for tool in "${TOOLS[@]}" limit; do
        [[ -n ${TIMES["$key|$tool"]:-} ]] || continue
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "${CASE_LABEL[$key]}" "$tool" "${TIMES["$key|$tool"]}" \
            "${CLIENT_RSS["$key|$tool"]:-}" "${SERVER_RSS["$key|$tool"]:-}" "${WIRE_BYTES["$key|$tool"]:-}" \
            "${CASE_BYTES[$key]:-}" "${CPU_CLIENT["$key|$tool"]:-}" "${CPU_SERVER["$key|$tool"]:-}" >>"$MEAS"
    done
done
tables=$(python3 -c "$REPORT_PY" <"$MEAS") || die "report failed ($MEAS)"

# The delta case: its figures against the targets of the issue "Large files: resume an
# interrupted transfer, send only the changed blocks", and the byte counts of every run.
# Input lines: key TAB tool TAB times TAB wire TAB sent TAB received TAB files_delta TAB
# files_resumed TAB cut-at TAB kept (space-separated values, one per timed run).
DELTA_PY='
import statistics, sys
delta_bytes, resume_bytes, poke_len = (int(x) for x in sys.argv[1:4])
rows = {}
for line in sys.stdin.read().splitlines():
    f = (line.split("\t") + [""] * 10)[:10]
    vals = lambda s: [float(x) for x in s.split() if x != "nan"]
    rows[(f[0], f[1])] = dict(zip(("t", "w", "sent", "recv", "nd", "nr", "cut", "kept"), map(vals, f[2:])))
def med(key, tool, what):
    v = rows.get((key, tool), {}).get(what)
    return statistics.median(v) if v else None
def b(v):
    if v is None:
        return "–"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= div:
            return "%.2f %s" % (v / div, unit)
    return "%d B" % v
def s(v): return "–" if v is None else "%.3f s" % v
def line(what, fs, ref, ratio, target, op=lambda r, t: r <= t):
    met = "–" if ratio is None else ("yes" if op(ratio, target) else "**no**")
    return "| %s | %s | %s | %s | ≤ %s | %s |" % (what, fs, ref, "–" if ratio is None else "%.2f" % ratio, target, met)
R = lambda a, b_: None if a is None or not b_ else a / b_
out = ["| target (filesync) | filesync | against | ratio | target | met |", "|---|---:|---:|---:|---:|---|"]
fw, rw = med("delta-poke", "filesync", "w"), med("delta-poke", "rsync", "w")
out.append(line("%s changed in %s: bytes on the wire vs rsync" % (b(poke_len), b(delta_bytes)), b(fw), "rsync " + b(rw), R(fw, rw), 1.5))
ft, rt = med("delta-poke", "filesync", "t"), med("delta-poke", "rsync", "t")
out.append(line("%s changed in %s: time vs rsync" % (b(poke_len), b(delta_bytes)), s(ft), "rsync " + s(rt), R(ft, rt), 0.5))
ft, it = med("delta-rewrite", "filesync", "t"), med("delta-initial", "filesync", "t")
out.append(line("%s rewritten: time vs its whole-file send (initial sync)" % b(delta_bytes), s(ft), "filesync initial " + s(it), R(ft, it), 1.0))
fs_ = med("delta-resume", "filesync", "sent")
out.append(line("%s cut at 90 %%: bytes sent to finish, share of the file" % b(resume_bytes), b(fs_), "file " + b(resume_bytes), R(fs_, resume_bytes), 0.15))
print("\n".join(out))
print("----")
det = ["| case | tool | client bytes sent | client bytes received | files_delta | files_resumed | killed at | server kept | wire |",
       "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
names = {"delta-initial": "initial", "delta-poke": "%s changed" % b(poke_len), "delta-rewrite": "rewritten", "delta-resume": "resume after cut at 90 %"}
for key in ("delta-initial", "delta-poke", "delta-rewrite", "delta-resume"):
    for tool in ("rsync", "filesync", "filesync-auth"):
        if (key, tool) not in rows:
            continue
        g = lambda w: med(key, tool, w)
        i = lambda v: "–" if v is None else "%d" % v
        det.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (names[key], tool, b(g("sent")), b(g("recv")),
                   i(g("nd")), i(g("nr")), b(g("cut")), b(g("kept")), b(g("w"))))
print("\n".join(det))
'
DELTA_REPORT=""
if has_tree delta; then
    DMEAS="$LOGS/delta.tsv"
    : >"$DMEAS"
    for key in delta-initial delta-poke delta-rewrite delta-resume; do
        for tool in "${TOOLS[@]}"; do
            [[ -n ${TIMES["$key|$tool"]:-} ]] || continue
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$tool" "${TIMES["$key|$tool"]}" \
                "${WIRE_BYTES["$key|$tool"]:-}" "${SENT_BYTES["$key|$tool"]:-}" "${RECV_BYTES["$key|$tool"]:-}" \
                "${DELTA_FILES["$key|$tool"]:-}" "${RESUMED_FILES["$key|$tool"]:-}" \
                "${CUT_SEEN["$key|$tool"]:-}" "${CUT_KEPT["$key|$tool"]:-}" >>"$DMEAS"
        done
    done
    dtables=$(python3 -c "$DELTA_PY" "$DELTA_BYTES" "$RESUME_BYTES" "$POKE_LEN" <"$DMEAS") || die "delta report failed ($DMEAS)"
    DELTA_REPORT="
## Large files: deltas and resume

${dtables%%$'\n'----$'\n'*}

Medians over the runs. In this case the clients also get \`--stats\` (rsync) and
\`--json\` (filesync), for their byte counts. Wire: bytes on the loopback, both directions, headers included
(as in the table above). The rewrite's baseline is filesync's own initial sync of the
same file (a whole-file send to an empty server), in the same run. Resume: the client
was killed (SIGKILL) when the server's temporary file reached 90 % of the file; the
figure is filesync's \`--json\` \`bytes_sent\` (literal file data) of the sync that
finished it. rsync's resume runs use \`--partial\` (without it the daemon deletes
what it received).

Byte counts of the clients (medians): filesync's \`--json\` \`bytes_sent\` (file data
sent as literal bytes), rsync's \`--stats\` \`Total bytes sent\` / \`received\` (all it
wrote to and read from the socket); \`killed at\`: the server's temporary file when the
client was killed; \`server kept\`: what the server kept to resume from.

${dtables#*$'\n'----$'\n'}
"
fi
TABLE=${tables%%$'\n'----$'\n'*}
tables=${tables#*$'\n'----$'\n'}
DETAILS=${tables%%$'\n'----*}
AUTH_TABLES=""
if [[ $tables == *$'\n'----$'\n'* ]]; then AUTH_TABLES=${tables#*$'\n'----$'\n'}; fi
AUTH_REPORT=""
if [[ -n $AUTH_TABLES ]]; then
    AUTH_REPORT="
## Authentication: filesync-auth against filesync

$AUTH_TABLES

filesync-auth is the same binary with authentication: the client gets \`--secret-file\`
and \`--known-servers\` (the server's key is pinned on the first sync), its server
\`--auth-file\`, and the whole session runs in TLS 1.3 (rustls, AES-GCM) after an HMAC
exchange. Each has a server of its own. Ratio: the medians, auth over plain (above 1:
authentication is slower); per-run ratios: auth over plain within each timed run (the
two run back to back). CPU: median user + system seconds of the client command (wait4)
and of the server process during the sync (\`/proc/PID/stat\`, clock ticks), less
exposed to other load on the machine than the wall time; CPU ratio: of the sums. Throughput (initial rows): the tree's bytes over the median
time. Wire: as above; TLS adds its record headers and tags (22 bytes a record of up to
16 KiB) and the handshake.
"
fi

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo 2>/dev/null || true)
rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [[ -n $(git -C "$REPO_DIR" status --porcelain 2>/dev/null || true) ]]; then rev+=" (work tree has uncommitted changes)"; fi
fs_version="not run (tools: ${TOOLS[*]})"
if has_filesync; then
    fs_version=$("$FILESYNC_BIN" --version 2>/dev/null | head -n 1 || true)
    fs_version="${fs_version:-unknown version} ($FILESYNC_BIN)"
fi
rsync_cmd="rsync -a --delete SRC/ rsync://127.0.0.1:PORT/mod/"
if ((RSYNC_FSYNC)); then rsync_cmd="rsync -a --delete --fsync SRC/ rsync://127.0.0.1:PORT/mod/"; fi
quick_note=""
if ((QUICK)); then quick_note=$'\n**Quick smoke run** (reduced trees and runs): not the reference figures.'; fi
verify_note=""
if ((FULL_VERIFY)); then verify_note=" (in this run: every timed run, --full-verify)"; fi
limit_note=""
if ((!LIMIT)); then limit_note="; not run in this run, --no-limit"; fi
wire_note=" (a network namespace of the benchmark's own, so nothing else is counted)"
if ((!USE_NETNS)); then wire_note=" (--no-netns: the machine's loopback, so any other loopback traffic during a run is counted too)"; fi

auth_setup=""
if has_tool filesync-auth; then
    auth_setup="
- filesync-auth: the same binary; client: \`filesync sync --once --id bench --server 127.0.0.1:PORT --dir SRC --secret-file SECRET --known-servers KNOWN\`, server: the same as filesync's plus \`--auth-file AUTH\` (its own root and port; the secret from \`filesync gen-secret\`)"
fi

STAMP=$(date +%F)
if [[ -z $OUT ]]; then
    suffix=""
    if ((QUICK)); then suffix+="-quick"; fi
    if ((${#TOOLS[@]} == 1)); then suffix+="-${TOOLS[0]}-only"; fi
    if has_tool filesync-auth && ((${#TOOLS[@]} > 1)); then suffix+="-auth"; fi
    OUT="$BENCH_DIR/results-$STAMP$suffix.md"
fi

REPORT="# filesync vs rsync benchmark — $(date -u '+%F %T UTC')

$TABLE

Median of $RUNS timed runs after one warm-up run, wall-clock seconds per sync command
(monotonic clock). Ratio < 1 means filesync is faster.$quick_note
Durable limit: \`tar -C SRC -cf - . | tar -C DEST -xf -\` then \`sync -f DEST\`, timed the
same way (initial rows only$limit_note). RSS: peak resident set, MiB, median over the
runs; client = the sync command (taskstats hiwater_rss); server = the filesync serve process
(VmHWM, reset before each run) or the sum over the rsync daemon's processes for that
connection (taskstats hiwater_rss). Wire: bytes of IP packets on the loopback
interface during the sync, both directions (each packet once, headers included), MiB
(2^20 bytes), median$wire_note.

## Machine and setup

- CPU: ${cpu:-unknown}; nproc: $(nproc); memory: ${mem:-unknown}
- Kernel: $(uname -sr)
- Filesystem: $FS_DESC (source, both destinations and the durable-limit copy on it)
- rsync: $(rsync --version | head -n 1), daemon mode on 127.0.0.1, client: \`$rsync_cmd\`
- filesync: $fs_version, git $rev; client: \`filesync sync --once --id bench --server 127.0.0.1:PORT --dir SRC\`, server: \`filesync serve --port PORT --root DIR --bind 127.0.0.1 --no-discovery --interval 30\`$auth_setup
- Python: $(python3 -V 2>&1 | cut -d' ' -f2); trees from \`bench/gen_tree.py\` (seed $SEED)
$(printf -- '  - %s\n' "${GEN_NOTES[@]}")
- Client and server of each tool run on the same machine over loopback and share its $(nproc) CPUs.
- The page cache was not dropped between runs: every run after the warm-up reads a warm cache.
- Verification: every timed run compares a listing (paths, sizes, mtimes to the second) of source and destination, plus the contents of the changed files; the first timed run of each case does a full \`diff -r\`$verify_note.

$DELTA_REPORT$AUTH_REPORT
## All runs

$DETAILS
"

printf '%s\n' "$REPORT" >"$OUT"
printf '\n%s\n\n' "$TABLE"
if [[ -n $DELTA_REPORT ]]; then printf '%s\n' "$DELTA_REPORT"; fi
if [[ -n $AUTH_REPORT ]]; then printf '%s\n' "$AUTH_REPORT"; fi
log "results written to $OUT"
SUCCESS=1
