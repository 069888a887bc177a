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
#   --cases LIST        comma-separated trees: small,large,many,million,delta,store
#                       (default small,large; delta: a 512 MiB file with 4 KiB
#                       changed and rewritten, and a 1 GiB file cut at 90% and
#                       resumed; store: the small tree pushed into a 3-node Garage
#                       cluster by `filesync serve --store s3://…` and by `rclone
#                       sync`, initial and no change, then 1 vs 2 filesync servers,
#                       and the per-request costs of the cluster; see bench/README.md)
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
#   GARAGE_BIN               the store case's Garage (default: garage on PATH, else
#                            ~/.cargo/bin/garage)
#
# Needs root (it mounts a filesystem), rsync, python3, diffutils, tar, util-linux
# (unshare, nsenter) and iproute2 (ip), and a kernel with taskstats (for the
# rsync server's peak RSS); the store case also Garage and rclone. Only 127.0.0.1
# is ever contacted.

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
        small | large | many | million | delta | store) TREES+=("$c") ;;
        *) die "unknown case '$c' (expected small,large,many,million,delta,store)" ;;
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
# The store case keeps every tree it pushes (a fresh prefix for each run; Garage frees
# the blocks of deleted objects only 10 minutes later, so deleting would not help):
# 4 pushes of the whole tree per run (filesync and rclone initial, and the two scale
# variants), each about 10 KB a file on the 3 nodes together, nearly all of it SQLite
# metadata (which also holds the objects under 3 KiB; Garage stores each distinct data
# block once, and every push has the same content), so 12 KB a file is counted, plus the
# Garage block files' inodes (one per object of 3 KiB or more, on each node).
STORE_PUSHES=$((4 * (RUNS + 1)))
STORE_NEED_MB=$((STORE_PUSHES * SMALL_FILES * 12 / 1000 + 1024))
if [[ -z $FS_SIZE ]]; then
    FS_SIZE=8G
    if has_tree million && ((MILLION_FILES > 200000)); then
        if [[ $FS == ext4 ]]; then FS_SIZE=24G; else FS_SIZE=16G; fi
    fi
    if has_tree store; then
        store_gib=$(((STORE_NEED_MB * 5 / 4 + 1023) / 1024 + 2))
        if ((store_gib > ${FS_SIZE%G})); then FS_SIZE=${store_gib}G; fi
    fi
fi
# Inodes: four copies of the largest tree (files + directories), plus slack.
NEED_INODES=50000
for t in "${TREES[@]}"; do
    case $t in
        many) n=$(((MANY_FILES + MANY_DIRS) * 4 + 50000)) ;;
        million) n=$(((MILLION_FILES + MILLION_DIRS) * 4 + 50000)) ;;
        store) n=$((STORE_PUSHES * SMALL_FILES * 3 + 300000)) ;;
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
GARAGE_CLUSTER="$REPO_DIR/tests/garage-cluster.sh"
if has_tree store; then
    has_tool filesync || die "the store case needs the filesync tool (--tools …,filesync)"
    GARAGE_BIN=${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
    [[ -x $GARAGE_BIN ]] || die "garage not found (the store case runs a 3-node Garage cluster): cargo install garage, or set GARAGE_BIN"
    export GARAGE_BIN
    command -v rclone >/dev/null || die "rclone not found (the store case's peer): apt-get install -y rclone"
    [[ -f $GARAGE_CLUSTER ]] || die "$GARAGE_CLUSTER not found (the store case starts its cluster with it)"
    if [[ $FS == tmpfs ]]; then
        # The cluster's data lives on the tmpfs, in memory.
        avail_mb=$(awk '/^MemAvailable/ {print int($2 / 1024)}' /proc/meminfo)
        ((STORE_NEED_MB + 2048 < avail_mb)) ||
            die "the store case needs about $STORE_NEED_MB MB on the tmpfs (Garage's data, $STORE_PUSHES pushes of the tree) and only $avail_mb MB of memory is available: use fewer --runs, or --fs ext4"
    fi
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

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# The commit measured (read now: the work tree may change while a long run goes on).
rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [[ -n $(git -C "$REPO_DIR" status --porcelain 2>/dev/null || true) ]]; then rev+=" (work tree has uncommitted changes at the start)"; fi

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
    # The store case's Garage logs live on the benchmark filesystem.
    if ((!SUCCESS)) && [[ -n ${GARAGE_DIR:-} && -d ${GARAGE_DIR:-} ]]; then
        local n
        for n in 0 1 2; do cp "$GARAGE_DIR/node$n/garage.log" "$LOGS/garage-node$n.log" 2>/dev/null; done
    fi
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

# push_fig ARRAY KEY VALUE: appends VALUE to the space-separated list ARRAY[KEY] (one
# figure per timed run).
push_fig() {
    local -n fig_array=$1
    fig_array["$2"]="${fig_array["$2"]:-} $3"
}

record() { # record CASEKEY TOOL: the figures of the last run_sync
    push_fig TIMES "$1|$2" "$ELAPSED"
    if [[ $2 != limit ]]; then
        push_fig CLIENT_RSS "$1|$2" "${CLIENT_KIB:-nan}"
        push_fig SERVER_RSS "$1|$2" "${SERVER_KIB:-nan}"
        push_fig WIRE_BYTES "$1|$2" "$WIRE"
        push_fig CPU_CLIENT "$1|$2" "${CLIENT_CPU:-nan}"
        push_fig CPU_SERVER "$1|$2" "${SERVER_CPU:-nan}"
        push_fig SENT_BYTES "$1|$2" "${SENT:-nan}"
        push_fig RECV_BYTES "$1|$2" "${RECV:-nan}"
        push_fig DELTA_FILES "$1|$2" "${NDELTA:-nan}"
        push_fig RESUMED_FILES "$1|$2" "${NRESUMED:-nan}"
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
        store) GARGS=("${SMALL_ARGS[@]}") ;;
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
# A rewrite run is followed by a second rewrite synced by filesync --whole-file
# (key delta-rewrite-whole): the same work with deltas off, the rewrite's baseline.
case_delta_edit() {
    local kind=$1 key="delta-$1" r tool changed="$MNT/tmp/changed.txt" fs_extra
    new_case "$key" "$2"
    if [[ $kind == rewrite ]] && has_tool filesync; then
        new_case delta-rewrite-whole "${2/rewritten/rewritten, sent with --whole-file}"
    fi
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
        if [[ $kind == rewrite ]] && has_tool filesync; then
            next_mtime
            python3 "$DTOOL" rewrite "$SRC/$DELTA_REL" --seed "$SEED" --variant $((r + 1000)) --mtime "$MTIME_SEQ"
            fs_extra=("${FS_EXTRA[@]}")
            FS_EXTRA+=(--whole-file)
            timed_run delta-rewrite-whole "$r" filesync "$changed"
            FS_EXTRA=("${fs_extra[@]}")
            # rsync syncs it too, untimed, so that both tools start the next run alike.
            for tool in "${TOOLS[@]}"; do
                [[ $tool == filesync ]] || run_sync "$tool" "$key run $r catch-up"
            done
        fi
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
                push_fig CUT_SEEN "$key|$tool" "$CUT_AT"
                push_fig CUT_KEPT "$key|$tool" "$KEPT"
            fi
        done
    done
}

# ------------------------------------------------------------- the store case

# The small tree pushed into an S3-compatible object store: a 3-node Garage cluster
# (replication 3, started by tests/garage-cluster.sh) whose data lives on the benchmark
# filesystem and which listens in the benchmark's network namespace. filesync: `serve
# --store s3://BUCKET/fs`, each initial run with a client id of its own (a fresh key
# prefix, fs/client_<id>/); rclone: `rclone sync` with its defaults into a fresh
# rclone/<run>/ of the same bucket. See bench/README.md, "Object store".
CLK_TCK=$(getconf CLK_TCK)
STORE_BUCKET="" STORE_URL="" GARAGE_DIR="" IDLE_WAIT="" GARAGE_CPU="" OTHER_CPU="" LOAD1="" STORE_OUT="" STORE_LAST=""
GARAGE_PIDS=() STORE_SERVER_PIDS=()
declare -A STORE_PORT=() STORE_PID=()
# Per key|tool, one value per timed run: wall time, CPU of the client command(s), of the
# filesync servers, of the Garage nodes, loopback bytes, the wait for Garage to go idle,
# the CPU other processes took during the run, and the 1-minute load average before it.
declare -A S_TIMES=() S_CCPU=() S_SCPU=() S_GCPU=() S_WIRE=() S_WAIT=() S_OTHER=() S_LOAD=()
STORE_KEYS=()
declare -A STORE_LABEL=()
STORE_PROBE="" STORE_NOTES=()

ticks_of() { # ticks_of PID...: user + system clock ticks of these processes, summed
    local p x t=0
    for p in "$@"; do
        x=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null) || die "process $p is gone (a filesync server or Garage node died; logs in $LOGS)"
        t=$((t + x))
    done
    echo "$t"
}
ticks_s() { awk -v t="$1" -v h="$CLK_TCK" 'BEGIN {printf "%.2f", t / h}'; }
# busy_ticks: clock ticks all CPUs of the machine spent busy so far (/proc/stat: user,
# nice, system, irq, softirq, steal), for the CPU that other processes took during a run.
busy_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# garage_idle: waits (at most 10 minutes) until the Garage nodes are idle: at most 2
# clock ticks of CPU in 0.5 s, twice in a row. A burst of writes leaves background work
# (Merkle trees, counters, reference GC) that must not run into the next timed command.
# Sets IDLE_WAIT (seconds waited).
garage_idle() {
    local t0 a b quiet=0 i
    t0=$(date +%s.%N)
    for ((i = 0; i < 1200 && quiet < 2; i++)); do
        a=$(ticks_of "${GARAGE_PIDS[@]}")
        sleep 0.5
        b=$(ticks_of "${GARAGE_PIDS[@]}")
        if ((b - a <= 2)); then quiet=$((quiet + 1)); else quiet=0; fi
    done
    IDLE_WAIT=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    ((quiet >= 2)) || log "  Garage still busy after ${IDLE_WAIT}s; going on"
}

# store_run TAG CMD...: one timed command, in the namespace, once Garage is idle. Sets
# ELAPSED, CLIENT_CPU (the command and everything it ran, wait4), SERVER_CPU (the filesync
# servers, /proc/PID/stat), GARAGE_CPU (the three nodes), WIRE (loopback bytes: clients,
# servers, Garage's S3 and RPC traffic) and STORE_OUT (the command's output); dies on
# failure.
store_run() {
    local tag=$1 logf="$LOGS/store.log" out secs rc s0 s1 g0 g1 lo0 lo1 b0 b1 off
    shift
    sync -f "$MNT"
    garage_idle
    printf '\n=== %s %s (Garage idle after %s s): %s\n' "$(date +%T)" "$tag" "$IDLE_WAIT" "$*" >>"$logf"
    off=$(stat -c %s "$logf")
    s0=$(ticks_of "${STORE_SERVER_PIDS[@]}")
    g0=$(ticks_of "${GARAGE_PIDS[@]}")
    lo0=$(lo_bytes)
    LOAD1=$(cut -d' ' -f1 /proc/loadavg)
    b0=$(busy_ticks)
    out=$("${NS[@]}" python3 -c "$TIMER_PY" "$TIMEOUT" "$logf" "$@")
    b1=$(busy_ticks)
    lo1=$(lo_bytes)
    g1=$(ticks_of "${GARAGE_PIDS[@]}")
    s1=$(ticks_of "${STORE_SERVER_PIDS[@]}")
    read -r secs rc _ CLIENT_CPU <<<"$out"
    printf '=== exit %s after %s s\n' "$rc" "$secs" >>"$logf"
    STORE_OUT=$(tail -c +$((off + 1)) "$logf")
    if ((rc != 0)); then
        tail -n 30 "$logf" >&2
        ((rc == 124)) && log "(exit 124: killed after the --timeout of $TIMEOUT s)"
        die "store: $tag failed with exit code $rc; log: $logf (servers: $LOGS/store-serve-*.log, Garage: $LOGS/garage-node*.log, copied at exit)"
    fi
    ELAPSED=$secs
    SERVER_CPU=$(ticks_s $((s1 - s0)))
    GARAGE_CPU=$(ticks_s $((g1 - g0)))
    WIRE=$((lo1 - lo0))
    # Whatever else ran on the machine meanwhile (another user's build, say).
    OTHER_CPU=$(awk -v b="$(ticks_s $((b1 - b0)))" -v c="$CLIENT_CPU" -v s="$SERVER_CPU" -v g="$GARAGE_CPU" \
        'BEGIN {o = b - c - s - g; printf "%.2f", o < 0 ? 0 : o}')
}

store_new_case() { # store_new_case KEY LABEL
    STORE_KEYS+=("$1")
    STORE_LABEL["$1"]=$2
    log "case: $2"
}

store_record() { # store_record KEY TOOL: the figures of the last store_run
    push_fig S_TIMES "$1|$2" "$ELAPSED"
    push_fig S_CCPU "$1|$2" "$CLIENT_CPU"
    push_fig S_SCPU "$1|$2" "$SERVER_CPU"
    push_fig S_GCPU "$1|$2" "$GARAGE_CPU"
    push_fig S_WIRE "$1|$2" "$WIRE"
    push_fig S_WAIT "$1|$2" "$IDLE_WAIT"
    push_fig S_OTHER "$1|$2" "$OTHER_CPU"
    push_fig S_LOAD "$1|$2" "$LOAD1"
}

store_note() { echo "${ELAPSED}s, CPU client $CLIENT_CPU s, filesync servers $SERVER_CPU s, Garage $GARAGE_CPU s, others $OTHER_CPU s, loopback $((WIRE >> 20)) MiB (Garage idle after ${IDLE_WAIT}s, load $LOAD1)"; }

# store_stored: files_stored summed over the filesync --json lines of the last run.
store_stored() {
    python3 -c '
import json, sys
print(sum(json.loads(l)["files_stored"] for l in sys.stdin.read().splitlines() if l.startswith("{")))' <<<"$STORE_OUT"
}
store_json_lines() { grep -c '^{' <<<"$STORE_OUT" || true; }

rclone_ns() { "${NS[@]}" env -u AWS_CA_BUNDLE rclone "$@"; }

# Paths and sizes, "path<TAB>size", sorted: of the files under a folder, and of the
# objects under a key prefix (LIST requests only).
src_listing() { (cd "$1" && find . -type f -printf '%P\t%s\n') | LC_ALL=C sort; }
store_listing() {
    rclone_ns lsf -R --files-only --fast-list --format ps --separator $'\t' "garage:$STORE_BUCKET/$1" | LC_ALL=C sort
}

# store_verify TAG SRC KIND WHAT LEVEL: the objects of filesync client id WHAT (KIND
# filesync) or under rclone/WHAT (KIND rclone) against the folder SRC. Level 0: paths and
# sizes (LIST requests). Level 1, also the contents: `rclone check` (sizes, and the MD5 of
# each file against the object's ETag, which the store computed from the bytes it
# received; both ways). Level 2 (filesync only; every level with --full-verify): also
# `filesync restore --store` into a new folder, compared by listing (types, paths,
# sizes, mtimes to the second) and `diff -r`: the client's index and the objects'
# metadata as filesync reads them back.
store_verify() {
    local tag=$1 src=$2 kind=$3 what=$4 level=$5 prefix dst="$MNT/restore" vlog="$LOGS/store-verify.log"
    case $kind in
        filesync) prefix="fs/client_$what" ;;
        rclone) prefix="rclone/$what" ;;
    esac
    if ((FULL_VERIFY)); then level=2; fi
    if ! diff <(src_listing "$src") <(store_listing "$prefix") >"$LOGS/verify-store.diff"; then
        head -n 20 "$LOGS/verify-store.diff" >&2
        die "VERIFY FAILED ($tag): the objects under $prefix (paths, sizes) differ from $src ($(wc -l <"$LOGS/verify-store.diff") diff lines; $LOGS/verify-store.diff)"
    fi
    ((level >= 1)) || return 0
    printf '\n=== %s %s: rclone check %s garage:%s/%s\n' "$(date +%T)" "$tag" "$src" "$STORE_BUCKET" "$prefix" >>"$vlog"
    rclone_ns check "$src" "garage:$STORE_BUCKET/$prefix" >>"$vlog" 2>&1 ||
        { tail -n 20 "$vlog" >&2; die "VERIFY FAILED ($tag): rclone check of $prefix against $src failed ($vlog)"; }
    log "  check ok: rclone check of $prefix against $(basename "$src") (sizes, MD5s, both ways)"
    ((level >= 2)) && [[ $kind == filesync ]] || return 0
    rm -rf "$dst"
    printf '\n=== %s %s: filesync restore --store %s --id %s --to %s\n' "$(date +%T)" "$tag" "$STORE_URL" "$what" "$dst" >>"$vlog"
    local t0=$SECONDS
    "${NS[@]}" "$FILESYNC_BIN" restore --store "$STORE_URL" --id "$what" --to "$dst" >>"$vlog" 2>&1 ||
        { tail -n 20 "$vlog" >&2; die "VERIFY FAILED ($tag): filesync restore --store of $what failed ($vlog)"; }
    if ! diff <(listing "$src") <(listing "$dst") >"$LOGS/verify-store.diff"; then
        head -n 20 "$LOGS/verify-store.diff" >&2
        die "VERIFY FAILED ($tag): the restored listing (types, paths, sizes, mtimes) differs from $src ($LOGS/verify-store.diff)"
    fi
    diff -r -q --no-dereference "$src" "$dst" >"$LOGS/verify-store.diff" 2>&1 ||
        { head -n 20 "$LOGS/verify-store.diff" >&2; die "VERIFY FAILED ($tag): diff -r of $src and the restored copy found differences"; }
    rm -rf "$dst"
    log "  check ok: filesync restore --store of $what ($((SECONDS - t0)) s) equals $(basename "$src") (listing with mtimes, diff -r)"
}

# store_cmd TOOL WHAT SRC: the command pushing SRC as client id / rclone prefix WHAT.
store_cmd() {
    case $1 in
        filesync) CMD=("$FILESYNC_BIN" sync --once --json --id "$2" --server "127.0.0.1:${STORE_PORT[a]}" --dir "$3") ;;
        rclone) CMD=(env -u AWS_CA_BUNDLE rclone sync "$3" "garage:$STORE_BUCKET/rclone/$2") ;;
    esac
}

# Two clients at once, each pushing one folder to one server; fails if either fails.
PAIR_SH='"$1" sync --once --json --id "$2" --server "$3" --dir "$4" & a=$!
"$1" sync --once --json --id "$5" --server "$6" --dir "$7" & b=$!
wait "$a"; ra=$?; wait "$b"; rb=$?; exit $((ra | rb))'

start_store_server() { # start_store_server NAME [FLAGS...]
    local name=$1 port pid logf="$LOGS/store-serve-$1.log"
    shift
    port=$(free_port)
    "${NS[@]}" "$FILESYNC_BIN" serve --port "$port" --bind 127.0.0.1 --no-discovery --interval 30 \
        --store "$STORE_URL" "$@" >>"$logf" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_listen "$port" "$pid" "filesync server $name" "$logf"
    STORE_PORT[$name]=$port
    STORE_PID[$name]=$pid
    STORE_SERVER_PIDS+=("$pid")
    log "filesync server $name (pid $pid) on 127.0.0.1:$port, --store $STORE_URL${*:+ $*}"
}

# free_port_base: a base for Garage's six ports (BASE+0/1, +10/11, +20/21) with none in
# use (only needed outside the benchmark's own namespace).
free_port_base() {
    local base off
    for base in $(seq 23900 1000 60900); do
        for off in 0 1 10 11 20 21; do
            python3 -c 'import socket,sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' $((base + off)) 2>/dev/null || continue 2
        done
        echo "$base"
        return 0
    done
    die "no free ports for Garage"
}

start_garage() {
    local base=3900 rc=0
    GARAGE_DIR="$MNT/garage"
    if ((!USE_NETNS)); then base=$(free_port_base); fi
    log "starting a 3-node Garage cluster (replication 3) in $GARAGE_DIR: $GARAGE_CLUSTER"
    "${NS[@]}" env GARAGE_PORT_BASE="$base" bash "$GARAGE_CLUSTER" "$GARAGE_DIR" >"$WORK/garage.env" 2>"$LOGS/garage-cluster.log" || rc=$?
    GARAGE_PIDS=()
    if [[ -f $GARAGE_DIR/pids ]]; then
        mapfile -t GARAGE_PIDS < <(grep . "$GARAGE_DIR/pids")
        PIDS+=("${GARAGE_PIDS[@]}")
    fi
    if ((rc != 0)) || ((${#GARAGE_PIDS[@]} != 3)); then
        tail -n 30 "$LOGS/garage-cluster.log" >&2
        die "the Garage cluster did not start (exit $rc; $LOGS/garage-cluster.log, and the nodes' logs, copied to $LOGS/garage-node*.log at exit)"
    fi
    # AWS_* for filesync and s3probe.py, RCLONE_CONFIG_GARAGE_* for rclone, BUCKET.
    # shellcheck disable=SC1091
    source "$WORK/garage.env"
    export RCLONE_CONFIG="$WORK/rclone.conf" # empty: the remote comes from the environment
    : >"$RCLONE_CONFIG"
    STORE_BUCKET=$BUCKET
    STORE_URL="s3://$STORE_BUCKET/fs"
    log "Garage up (pids ${GARAGE_PIDS[*]}), S3 at $AWS_ENDPOINT, bucket $STORE_BUCKET"
}

stop_garage() {
    local p i alive
    for p in "${GARAGE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for ((i = 0; i < 200; i++)); do
        alive=0
        for p in "${GARAGE_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.05
    done
    for p in "${GARAGE_PIDS[@]}"; do
        kill -9 "$p" 2>/dev/null || true
        forget_pid "$p"
    done
    GARAGE_PIDS=()
}

# store_case: the whole case on the tree in SRC.
store_case() {
    local r tool v id files mb last half d dirs n
    files=$(find "$SRC" -type f | wc -l)
    mb=$(find "$SRC" -type f -printf '%s\n' | awk '{t += $1} END {printf "%.0f", t / 1e6}')
    start_garage
    # a and b: default servers (one session at a time); m: one that runs two at once.
    STORE_SERVER_PIDS=()
    start_store_server a
    start_store_server b
    start_store_server m --max-sessions 2

    # Initial: each run pushes the tree to a fresh prefix, filesync and rclone in turn.
    store_new_case store-initial "store: initial ($(fmt_int "$files") files, $mb MB)"
    for ((r = 0; r <= RUNS; r++)); do
        for tool in $(tools_for_run "$r" filesync rclone); do
            id="init-r$r"
            store_cmd "$tool" "$id" "$SRC"
            store_run "store-initial run $r $tool" "${CMD[@]}"
            if [[ $tool == filesync ]] && [[ $(store_stored) != "$files" ]]; then
                die "store-initial run $r: filesync reported $(store_stored) files stored, not $files ($LOGS/store.log)"
            fi
            if ((r == 0)); then log "  warm-up $tool: $(store_note)"; else
                log "  run $r $tool: $(store_note)"
                store_record store-initial "$tool"
            fi
            # Contents: the warm-up and first timed run; filesync's read back by restore once.
            store_verify "store-initial run $r $tool" "$SRC" "$tool" "$id" $((r > 1 ? 0 : r == 1 ? 2 : 1))
        done
    done

    # No change: the last run's copies, pushed again unchanged.
    last="init-r$RUNS" STORE_LAST="init-r$RUNS"
    store_new_case store-nochange "store: no change"
    for ((r = 0; r <= RUNS; r++)); do
        for tool in $(tools_for_run "$r" filesync rclone); do
            store_cmd "$tool" "$last" "$SRC"
            store_run "store-nochange run $r $tool" "${CMD[@]}"
            if [[ $tool == filesync ]] && [[ $(store_json_lines) != 1 || $(store_stored) != 0 ]]; then
                die "store-nochange run $r: filesync reported $(store_stored) files stored, not 0 ($LOGS/store.log)"
            fi
            if ((r == 0)); then log "  warm-up $tool: $(store_note)"; else
                log "  run $r $tool: $(store_note)"
                store_record store-nochange "$tool"
            fi
            store_verify "store-nochange run $r $tool" "$SRC" "$tool" "$last" 0
        done
    done

    # 1 vs 2 servers: two clients (ids of their own), each pushing half of the tree's
    # top-level folders, at once; to one server running both sessions at once, or one
    # client to each of two servers on the same store.
    rm -rf "$MNT/half0" "$MNT/half1"
    mkdir -p "$MNT/half0" "$MNT/half1"
    mapfile -t dirs < <(cd "$SRC" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort)
    n=${#dirs[@]}
    for ((d = 0; d < n; d++)); do
        half=$((d * 2 >= n))
        cp -al "$SRC/${dirs[d]}" "$MNT/half$half/"
    done
    STORE_NOTES+=("1 vs 2 servers: half0 = the first $((n - n / 2)) of the tree's $n top-level folders ($(find "$MNT/half0" -type f | wc -l) files), half1 = the other $((n / 2)) ($(find "$MNT/half1" -type f | wc -l) files), hard links to the source")
    store_new_case store-scale "store: initial, 2 clients with half the files each, at once"
    for ((r = 0; r <= RUNS; r++)); do
        for v in $(tools_for_run "$r" one two); do
            id="scale-$v-r$r"
            if [[ $v == one ]]; then
                CMD=(bash -c "$PAIR_SH" pair "$FILESYNC_BIN" "$id-0" "127.0.0.1:${STORE_PORT[m]}" "$MNT/half0" \
                    "$id-1" "127.0.0.1:${STORE_PORT[m]}" "$MNT/half1")
            else
                CMD=(bash -c "$PAIR_SH" pair "$FILESYNC_BIN" "$id-0" "127.0.0.1:${STORE_PORT[a]}" "$MNT/half0" \
                    "$id-1" "127.0.0.1:${STORE_PORT[b]}" "$MNT/half1")
            fi
            store_run "store-scale run $r $v" "${CMD[@]}"
            if [[ $(store_json_lines) != 2 || $(store_stored) != "$files" ]]; then
                die "store-scale run $r ($v): the two clients reported $(store_stored) files stored, not $files ($LOGS/store.log)"
            fi
            if ((r == 0)); then log "  warm-up $v: $(store_note)"; else
                log "  run $r $v: $(store_note)"
                store_record store-scale "$v"
            fi
            store_verify "store-scale run $r $v" "$MNT/half0" filesync "$id-0" $((r <= 1))
            store_verify "store-scale run $r $v" "$MNT/half1" filesync "$id-1" $((r <= 1))
        done
    done
    rm -rf "$MNT/half0" "$MNT/half1"

    # Per-request costs of the cluster, one request at a time (bench/s3probe.py).
    n=500
    if ((QUICK)); then n=200; fi
    sync -f "$MNT"
    garage_idle
    log "per-request costs: s3probe.py, $n requests of each kind, one at a time"
    STORE_PROBE=$("${NS[@]}" python3 "$BENCH_DIR/s3probe.py" --json --n "$n" --size 1024 4096 \
        --pids "${GARAGE_PIDS[*]}" --list-prefix "fs/client_$last" --get-key "fs/.filesync/index/client_$last" \
        "$STORE_BUCKET" probe 2>>"$LOGS/store.log") || die "s3probe.py failed ($LOGS/store.log)"
    STORE_NOTES+=("Garage's data at the end: $(du -sh "$GARAGE_DIR" | cut -f1) on the benchmark filesystem (3 nodes: data $(du -sch "$GARAGE_DIR"/node*/data | tail -n 1 | cut -f1), metadata $(du -sch "$GARAGE_DIR"/node*/meta | tail -n 1 | cut -f1))")

    for v in a b m; do stop_pid "${STORE_PID[$v]}"; done
    STORE_SERVER_PIDS=()
    stop_garage
    rm -rf "$GARAGE_DIR"
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
    if [[ $tree == store ]]; then gtree=small; fi
    python3 "$GEN" "$gtree" "$SRC" "${GARGS[@]}" 2>"$LOGS/gen-$tree.txt" || { cat "$LOGS/gen-$tree.txt" >&2; die "gen_tree.py $tree failed"; }
    t1=$(date +%s.%N)
    GEN_NOTES+=("$(head -n 1 "$LOGS/gen-$tree.txt")")
    log "  $(head -n 1 "$LOGS/gen-$tree.txt") ($(python3 -c "print(f'{$t1-$t0:.1f}')") s)"
    # The store case runs servers of its own (and a Garage cluster).
    if [[ $tree != store ]]; then start_servers; fi
    case $tree in
        store) store_case ;;
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
            case_initial delta "delta: initial (1 × $DELTA_MIB MiB)"
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
    if [[ $tree != store ]]; then stop_servers; fi
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
ft, wt = med("delta-rewrite", "filesync", "t"), med("delta-rewrite-whole", "filesync", "t")
out.append(line("%s rewritten: time vs the same rewrite sent with --whole-file" % b(delta_bytes), s(ft), "--whole-file " + s(wt), R(ft, wt), 1.0))
it = med("delta-initial", "filesync", "t")
out.append(line("%s rewritten: time vs a whole-file send to an empty server (initial sync)" % b(delta_bytes), s(ft), "filesync initial " + s(it), R(ft, it), 1.0))
fs_ = med("delta-resume", "filesync", "sent")
out.append(line("%s cut at 90 %%: bytes sent to finish, share of the file" % b(resume_bytes), b(fs_), "file " + b(resume_bytes), R(fs_, resume_bytes), 0.15))
print("\n".join(out))
print("----")
det = ["| case | tool | client bytes sent | client bytes received | files_delta | files_resumed | killed at | server kept | wire |",
       "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
names = {"delta-initial": "initial", "delta-poke": "%s changed" % b(poke_len), "delta-rewrite": "rewritten",
         "delta-rewrite-whole": "rewritten, --whole-file", "delta-resume": "resume after cut at 90 %"}
for key in ("delta-initial", "delta-poke", "delta-rewrite", "delta-rewrite-whole", "delta-resume"):
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
    for key in delta-initial delta-poke delta-rewrite delta-rewrite-whole delta-resume; do
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
(as in the table above). The rewrite's baselines, in the same run: the same rewrite
synced by filesync \`--whole-file\` (deltas off; each run rewrites the file again for
it), and filesync's initial sync of the same file (a whole-file send to an empty server,
which has no old copy to set aside). Resume: the client
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

# The store case: its figures against the targets of issue 12 (filesync initial ≤ 1.0 ×
# rclone's time, no change ≤ 0.5 ×), where the CPU went, 1 vs 2 servers, the per-request
# costs and every run. Input lines: key TAB label TAB tool TAB times TAB client-CPU TAB
# server-CPU TAB Garage-CPU TAB loopback-bytes TAB idle-waits TAB other-CPU TAB load (one
# value per timed run);
# argv: files in the tree, nproc, the s3probe.py JSON lines.
STORE_PY='
import json, statistics, sys
files, nproc, probe = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rows, order = {}, []
for line in sys.stdin.read().splitlines():
    f = (line.split("\t") + [""] * 11)[:11]
    vals = lambda s: [float(x) for x in s.split() if x != "nan"]
    if f[0] not in rows:
        rows[f[0]] = {"label": f[1]}
        order.append(f[0])
    rows[f[0]][f[2]] = dict(zip(("t", "cc", "sc", "gc", "w", "idle", "oc", "load"), map(vals, f[3:11])))
med = lambda v: statistics.median(v) if v else None
names = {"filesync": "filesync", "rclone": "rclone", "one": "1 server (--max-sessions 2)", "two": "2 servers"}
def g(key, tool, what="t"):
    return med(rows.get(key, {}).get(tool, {}).get(what, []))
def s(v): return "–" if v is None else "%.3f" % v
out = ["| target (issue 12) | filesync median (s) | rclone median (s) | ratio (filesync/rclone) | per-run ratios: median (min–max) | target | met |",
       "|---|---:|---:|---:|---|---:|---|"]
for key, target in (("store-initial", 1.0), ("store-nochange", 0.5)):
    if key not in rows:
        continue
    f, r = g(key, "filesync"), g(key, "rclone")
    pr = [a / b for a, b in zip(rows[key]["filesync"]["t"], rows[key]["rclone"]["t"]) if b > 0]
    ratio = f / r if f and r else None
    out.append("| %s | %s | %s | %s | %s | ≤ %.1f | %s |" % (rows[key]["label"], s(f), s(r),
               "–" if ratio is None else "%.2f" % ratio,
               "%.2f (%.2f–%.2f)" % (med(pr), min(pr), max(pr)) if pr else "–", target,
               "–" if ratio is None else ("yes" if ratio <= target else "**no**")))
print("\n".join(out))
print("----")
out = ["| case | tool | wall (s) | CPU client (s) | CPU filesync server(s) (s) | CPU Garage, 3 nodes (s) | CPU all / (%d × wall) | CPU of other processes (s) | Garage CPU per file (ms) | filesync server CPU per file (ms) | loopback (MiB) |" % nproc,
       "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for key in order:
    for tool in ("filesync", "rclone", "one", "two"):
        if tool not in rows[key]:
            continue
        t, cc, sc, gc, w, oc = (g(key, tool, x) for x in ("t", "cc", "sc", "gc", "w", "oc"))
        busy = (cc or 0) + (sc or 0) + (gc or 0)
        per = lambda c: "–" if c is None else "%.2f" % (c * 1000 / files)
        initial = key != "store-nochange"
        out.append("| %s | %s | %s | %.2f | %s | %.2f | %.0f %% | %.2f | %s | %s | %.1f |" % (
            rows[key]["label"], names[tool], s(t), cc or 0, "%.2f" % sc if tool != "rclone" else "–", gc or 0,
            100 * busy / (nproc * t) if t else 0, oc or 0, per(gc) if initial else "–",
            per(sc) if initial and tool != "rclone" else "–", (w or 0) / 1048576))
print("\n".join(out))
print("----")
out = []
if "store-scale" in rows:
    one, two = g("store-scale", "one"), g("store-scale", "two")
    out = ["| store: %d files in two halves, 2 clients at once | median (s) | files/s | ratio (2 servers / 1 server) |" % files,
           "|---|---:|---:|---:|"]
    for tool, t in (("one", one), ("two", two)):
        out.append("| %s | %s | %s | %s |" % (names[tool], s(t), "%.0f" % (files / t) if t else "–",
                   "%.2f" % (t / one) if t and one and tool == "two" else "–"))
    fi = g("store-initial", "filesync")
    if fi:
        out.append("| (for reference) 1 server, 1 client with the whole tree (initial) | %s | %.0f | – |" % (s(fi), files / fi))
print("\n".join(out))
print("----")
out = ["| request (one at a time, keep-alive) | n | latency median (ms) | p10–p90 (ms) | requests/s one at a time | Garage CPU per request, 3 nodes (ms) |",
       "|---|---:|---:|---|---:|---:|"]
what = {"put-1024": "PUT of 1 KiB (stored inline in the metadata)", "put-4096": "PUT of 4 KiB (a data block)",
        "head": "HEAD", "list-1000": "LIST page of 1000 keys", "get": "GET of the index (%s)", "delete": "DELETE"}
for line in probe.splitlines():
    if not line.startswith("{"):
        continue
    p = json.loads(line)
    label = what.get(p["kind"], p["kind"])
    if p["kind"] == "get":
        label = label % ("%.0f KiB" % (p.get("bytes", 0) / 1024))
    out.append("| %s | %d | %.2f | %.2f–%.2f | %.0f | %s |" % (label, p["n"], p["median_ms"], p["p10_ms"], p["p90_ms"],
               p["per_s_sequential"], "–" if p["server_cpu_ms"] is None else "%.2f" % p["server_cpu_ms"]))
print("\n".join(out))
print("----")
out = ["| case | tool | runs (s) | min | median | max | CPU of other processes per run (s) | load average (1 min) before each run | Garage idle waits before the runs (s) |", "|---|---|---|---:|---:|---:|---|---|---|"]
for key in order:
    for tool in ("filesync", "rclone", "one", "two"):
        x = rows[key].get(tool)
        if not x:
            continue
        t = x["t"]
        out.append("| %s | %s | %s| %s | %s | %s | %s | %s | %s |" % (rows[key]["label"], names[tool], "".join("%.3f " % v for v in t),
                   s(min(t)), s(med(t)), s(max(t)), " ".join("%.2f" % v for v in x["oc"]),
                   " ".join("%.2f" % v for v in x["load"]), " ".join("%.1f" % v for v in x["idle"])))
print("\n".join(out))
'
STORE_REPORT=""
if has_tree store; then
    SMEAS="$LOGS/store.tsv"
    : >"$SMEAS"
    for key in "${STORE_KEYS[@]}"; do
        for tool in filesync rclone one two; do
            [[ -n ${S_TIMES["$key|$tool"]:-} ]] || continue
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "${STORE_LABEL[$key]}" "$tool" "${S_TIMES["$key|$tool"]}" \
                "${S_CCPU["$key|$tool"]}" "${S_SCPU["$key|$tool"]}" "${S_GCPU["$key|$tool"]}" \
                "${S_WIRE["$key|$tool"]}" "${S_WAIT["$key|$tool"]}" "${S_OTHER["$key|$tool"]}" "${S_LOAD["$key|$tool"]}" >>"$SMEAS"
        done
    done
    stables=$(python3 -c "$STORE_PY" "$SMALL_FILES" "$(nproc)" "$STORE_PROBE" <"$SMEAS") || die "store report failed ($SMEAS)"
    parts=()
    while [[ $stables == *$'\n----\n'* ]]; do
        parts+=("${stables%%$'\n'----$'\n'*}")
        stables=${stables#*$'\n'----$'\n'}
    done
    parts+=("$stables")
    ((${#parts[@]} == 5)) || die "store report: expected 5 tables, got ${#parts[@]} ($SMEAS)"
    st_target=${parts[0]} st_cpu=${parts[1]} st_scale=${parts[2]} st_probe=${parts[3]} st_runs=${parts[4]}
    STORE_REPORT="
## Object store: filesync serve --store vs rclone sync (3-node Garage)

$st_target

Median of $RUNS timed runs after one warm-up run, wall-clock seconds of the client
command (monotonic clock). Ratio < 1 means filesync is faster; per-run ratios: within
each run, where the two tools go back to back (alternating which goes first).$quick_note
Each initial run pushes the tree to a fresh key prefix: filesync as a client id of its
own (\`fs/client_init-rN/\`), rclone into \`rclone/init-rN/\`. The no-change runs push
the last initial run's copies again. Before every timed command the harness waits until
the Garage nodes are idle (the background work a burst of writes leaves behind).

### Where the CPU went

$st_cpu

CPU: user + system seconds, medians: of the client command (wait4: filesync's client, or
rclone, which is client and S3 uploader in one), of the filesync server(s)
(\`/proc/PID/stat\`, summed over the three servers of the case) and of the three Garage
nodes. CPU all / ($(nproc) × wall): the share of the machine's $(nproc) CPUs the benchmark's
processes kept busy; near 100 % the run is CPU-bound. CPU of other processes: all the
machine's busy time during the run (\`/proc/stat\`) less the figures before it, i.e. what
anything else running on the machine took from the benchmark. Per file: over the $(fmt_int "$SMALL_FILES")
files of the tree. Loopback: bytes of IP packets on the namespace's loopback (client to
server, server to Garage, and Garage's replication between its nodes).

### 1 vs 2 servers

$st_scale

Two clients with client ids of their own, each pushing one half of the tree (a fresh
prefix each run), started at once; the time is until both are done. 1 server: both to one
\`filesync serve --store … --max-sessions 2\` (so that it runs both sessions at once);
2 servers: one client to each of two \`filesync serve --store …\` (default
--max-sessions 1) on the same store. On a machine of $(nproc) CPUs that the Garage nodes
already keep busy, a second server cannot add throughput: see bench/README.md.

### Per-request costs of the cluster

$st_probe

\`bench/s3probe.py\`: one request at a time on one keep-alive connection (SigV4-signed,
path-style, from Python), so the latency is the cluster's plus the probe's own, not a
queue's; Garage CPU: user + system time of the three nodes over those requests, per
request. The LIST pages and the GET are of the last initial run's filesync client
(\`fs/client_$STORE_LAST\`; its index).

### Setup

- Garage: $("$GARAGE_BIN" --version 2>/dev/null | sed -n 1p); 3 nodes on 127.0.0.1 (\`tests/garage-cluster.sh\`: replication_factor 3, consistency_mode consistent, db_engine sqlite), metadata and data on the benchmark filesystem
- filesync servers: \`filesync serve --port PORT --bind 127.0.0.1 --no-discovery --interval 30 --store s3://$STORE_BUCKET/fs\` (AWS_* from the cluster script), started once for the whole case; clients: \`filesync sync --once --json --id ID --server 127.0.0.1:PORT --dir SRC\`
- rclone: $(rclone version 2>/dev/null | sed -n 1p); \`rclone sync SRC garage:$STORE_BUCKET/rclone/ID\` with its defaults (--transfers 4, --checkers 8), remote from RCLONE_CONFIG_GARAGE_* (type s3, provider Other, region garage, force_path_style, no_check_bucket), run with \`env -u AWS_CA_BUNDLE\`
$(printf -- '- %s\n' "${STORE_NOTES[@]}")
- Verification: every run lists the objects (paths and sizes, \`rclone lsf\`) against the source, and filesync's \`--json\` must report every file stored (initial) or none (no change); the warm-up and first timed run of the initial and scale cases also check the contents with \`rclone check\` (each file's MD5 against its object's ETag, both ways), and the first timed filesync initial run is read back with \`filesync restore --store\` and compared with \`diff -r\` and a listing with mtimes$verify_note.

### All runs (store)

$st_runs
"
fi
STAMP=$(date +%F)
if [[ -z $OUT ]]; then
    suffix=""
    if ((QUICK)); then suffix+="-quick"; fi
    if ((${#TOOLS[@]} == 1)); then suffix+="-${TOOLS[0]}-only"; fi
    if has_tool filesync-auth && ((${#TOOLS[@]} > 1)); then suffix+="-auth"; fi
    if has_tree store; then suffix+="-store"; fi
    OUT="$BENCH_DIR/results-$STAMP$suffix.md"
fi

TITLE="filesync vs rsync benchmark"
MAIN_REPORT="" ALL_RUNS=""
# Lines of the setup that concern the rsync/filesync cases only (not the store case).
fs_what="" RSYNC_SETUP="" FS_SETUP="" VERIFY_SETUP=""
if ((${#CASE_KEYS[@]})); then
    fs_what=" (source, both destinations and the durable-limit copy on it)"
    RSYNC_SETUP="- rsync: $(rsync --version | sed -n 1p), daemon mode on 127.0.0.1, client: \`$rsync_cmd\`
"
    FS_SETUP="; client: \`filesync sync --once --id bench --server 127.0.0.1:PORT --dir SRC\`, server: \`filesync serve --port PORT --root DIR --bind 127.0.0.1 --no-discovery --interval 30\`$auth_setup"
    VERIFY_SETUP="- Verification: every timed run compares a listing (paths, sizes, mtimes to the second) of source and destination, plus the contents of the changed files; the first timed run of each case does a full \`diff -r\`$verify_note.
"
fi
if ((${#CASE_KEYS[@]})); then
    MAIN_REPORT="
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
"
    ALL_RUNS="
## All runs

$DETAILS
"
else
    TITLE="filesync benchmark: object store"
fi
REPORT="# $TITLE — $(date -u '+%F %T UTC')
$MAIN_REPORT
## Machine and setup

- CPU: ${cpu:-unknown}; nproc: $(nproc); memory: ${mem:-unknown}
- Kernel: $(uname -sr)
- Load average (1, 5, 15 min): $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end
- Filesystem: $FS_DESC$fs_what
$RSYNC_SETUP- filesync: $fs_version, git $rev$FS_SETUP
- Python: $(python3 -V 2>&1 | cut -d' ' -f2); trees from \`bench/gen_tree.py\` (seed $SEED)
$(printf -- '  - %s\n' "${GEN_NOTES[@]}")
- Client and server of each tool run on the same machine over loopback and share its $(nproc) CPUs.
- The page cache was not dropped between runs: every run after the warm-up reads a warm cache.
$VERIFY_SETUP
$DELTA_REPORT$AUTH_REPORT$STORE_REPORT$ALL_RUNS"

printf '%s\n' "$REPORT" >"$OUT"
printf '\n%s\n\n' "$TABLE"
if [[ -n $DELTA_REPORT ]]; then printf '%s\n' "$DELTA_REPORT"; fi
if [[ -n $AUTH_REPORT ]]; then printf '%s\n' "$AUTH_REPORT"; fi
if [[ -n $STORE_REPORT ]]; then printf '%s\n' "$STORE_REPORT"; fi
log "results written to $OUT"
SUCCESS=1
