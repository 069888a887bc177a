#!/usr/bin/env bash
# filesync vs rsync (daemon mode) on loopback.
#
# Usage: sudo bash bench/run.sh [options]
#   --quick             smoke run: 2,000 small files, 2 x 64 MiB, 3 runs
#   --runs N            timed runs per case and tool (default 5; 3 with --quick)
#   --fs tmpfs|ext4     filesystem made for the run (default tmpfs)
#   --fs-size SIZE      size of the tmpfs / ext4 image (default 8G)
#   --cases LIST        comma-separated trees: small,large (default both)
#   --only TOOL         rsync | filesync | both (default both)
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
# Needs root (it mounts a filesystem), rsync, python3, diffutils.
# Only 127.0.0.1 is ever contacted.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
GEN="$BENCH_DIR/gen_tree.py"

RUNS=""
QUICK=0
FS=tmpfs
FS_SIZE=8G
CASES=small,large
ONLY=both
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
        --full-verify) FULL_VERIFY=1 ;;
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
        small | large) TREES+=("$c") ;;
        *) die "unknown case '$c' (expected small,large)" ;;
    esac
done
((${#TREES[@]})) || die "no cases selected"

case $ONLY in
    both) TOOLS=(rsync filesync) ;;
    *) TOOLS=("$ONLY") ;;
esac
has_tool() { [[ " ${TOOLS[*]} " == *" $1 "* ]]; }

if ((QUICK)); then
    SMALL_FILES=2000
    LARGE_MIB=64
else
    SMALL_FILES=20000
    LARGE_MIB=512
fi
LARGE_COUNT=2
SEED=42
SMALL_ARGS=(--files "$SMALL_FILES" --seed "$SEED")
LARGE_ARGS=(--count "$LARGE_COUNT" --size-mib "$LARGE_MIB" --seed "$SEED")

# ------------------------------------------------------------------ preflight

((EUID == 0)) || die "must run as root (it mounts a filesystem): sudo bash bench/run.sh"
command -v rsync >/dev/null || die "rsync not found: apt-get install -y rsync"
command -v python3 >/dev/null || die "python3 not found: apt-get install -y python3"
for c in diff cmp; do
    command -v "$c" >/dev/null || die "$c not found: apt-get install -y diffutils"
done
if [[ $FS == ext4 ]]; then
    command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 not found: apt-get install -y e2fsprogs"
fi

if has_tool filesync; then
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
    mount -t tmpfs -o "size=$FS_SIZE,mode=0755" filesync-bench "$MNT"
    FS_DESC="tmpfs (size=$FS_SIZE), mounted fresh for this run"
else
    IMG="$WORK/fs.img"
    truncate -s "$FS_SIZE" "$IMG"
    # Initialise inode tables and journal now, so ext4lazyinit does not write
    # in the background while we measure.
    mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$IMG"
    mount -o loop "$IMG" "$MNT"
    backing=$(df -PT "$WORK" | awk 'NR==2 {print $2 " on " $1}')
    FS_DESC="ext4 (size=$FS_SIZE) on a loop device, image file on $backing, made fresh for this run"
fi
mountpoint -q "$MNT" || die "mount of $MNT failed"
log "mounted $FS at $MNT"

SRC="$MNT/src"
RSYNC_DST="$MNT/dst-rsync"
FS_ROOT="$MNT/dst-filesync"
FS_DST="$FS_ROOT/client_bench"
mkdir -p "$RSYNC_DST" "$FS_ROOT" "$MNT/tmp"

# -------------------------------------------------------------------- helpers

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_listen PORT PID NAME LOGFILE
wait_listen() {
    local port=$1 pid=$2 name=$3 logf=$4 i
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2; die "$name exited during start-up (log: $logf)"; }
        if command -v ss >/dev/null; then
            ss -Hltn "( sport = :$port )" 2>/dev/null | grep -q . && return 0
        else
            python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),1).close()' "$port" 2>/dev/null && return 0
        fi
        sleep 0.05
    done
    die "$name did not listen on 127.0.0.1:$port within 10 s (log: $logf)"
}

# Runs a command with stdin from /dev/null and output to a log file, and prints
# "<wall seconds> <exit code>", timed with a monotonic clock around the process.
# A command that outlives the timeout is killed and reported with exit code 124.
TIMER_PY='
import os, signal, subprocess, sys, time
timeout = float(sys.argv[1])
with open(sys.argv[2], "ab") as log:
    t0 = time.monotonic()
    p = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True)
    def stop(signum, frame):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        sys.exit(128 + signum)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        rc = 124
    t1 = time.monotonic()
print("%.6f %d" % (t1 - t0, rc))
'

sync_cmd() { # sync_cmd TOOL -> sets CMD array
    case $1 in
        rsync)
            CMD=(rsync -a --delete)
            if ((RSYNC_FSYNC)); then CMD+=(--fsync); fi
            CMD+=("$SRC/" "rsync://127.0.0.1:$RSYNC_PORT/mod/")
            ;;
        filesync)
            CMD=("$FILESYNC_BIN" sync --once --id bench --server "127.0.0.1:$FS_PORT" --dir "$SRC")
            ;;
    esac
}

dest_of() {
    case $1 in
        rsync) echo "$RSYNC_DST" ;;
        filesync) echo "$FS_DST" ;;
    esac
}

clear_dest() {
    case $1 in
        rsync) rm -rf "$RSYNC_DST" && mkdir -p "$RSYNC_DST" ;;
        filesync) rm -rf "$FS_DST" ;;
    esac
}

# run_sync TOOL TAG: one sync; sets ELAPSED; dies loudly on failure.
ELAPSED=""
run_sync() {
    local tool=$1 tag=$2 out secs rc logf
    logf="$LOGS/$tool.log"
    sync_cmd "$tool"
    sync -f "$MNT" # flush dirty data now, not during the timed command
    printf '\n=== %s %s: %s\n' "$(date +%T)" "$tag" "${CMD[*]}" >>"$logf"
    out=$(python3 -c "$TIMER_PY" "$TIMEOUT" "$logf" "${CMD[@]}")
    read -r secs rc <<<"$out"
    printf '=== exit %s after %s s\n' "$rc" "$secs" >>"$logf"
    if ((rc != 0)); then
        tail -n 30 "$logf" >&2
        if [[ $tool == filesync ]] && ! kill -0 "$FS_SERVER_PID" 2>/dev/null; then
            log "the filesync server is no longer running; its log ($LOGS/filesync-serve.log) ends:"
            tail -n 30 "$LOGS/filesync-serve.log" >&2
        fi
        ((rc == 124)) && log "(exit 124: killed after the --timeout of $TIMEOUT s)"
        die "$tool sync failed with exit code $rc ($tag); log: $logf"
    fi
    ELAPSED=$secs
}

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

# Tool order alternates between runs, so neither tool always goes first.
tools_for_run() {
    local r=$1
    if ((r % 2 == 1)) && ((${#TOOLS[@]} == 2)); then
        echo "${TOOLS[1]} ${TOOLS[0]}"
    else
        echo "${TOOLS[*]}"
    fi
}

declare -A TIMES=()
CASE_KEYS=()
declare -A CASE_LABEL=()

record() { # record CASEKEY TOOL SECONDS
    TIMES["$1|$2"]="${TIMES["$1|$2"]:-} $3"
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
    if [[ $1 == small ]]; then GARGS=("${SMALL_ARGS[@]}"); else GARGS=("${LARGE_ARGS[@]}"); fi
}

# ------------------------------------------------------------------- the cases

case_initial() {
    local tree=$1 key="$1-initial" r tool
    new_case "$key" "$2"
    for ((r = 0; r <= RUNS; r++)); do
        for tool in $(tools_for_run "$r"); do
            clear_dest "$tool"
            run_sync "$tool" "$key run $r"
            if ((r == 0)); then
                log "  warm-up $tool: ${ELAPSED}s"
                verify "$tool" "$key warm-up" 0
            else
                log "  run $r $tool: ${ELAPSED}s"
                record "$key" "$tool" "$ELAPSED"
                verify "$tool" "$key run $r" $((r == 1))
            fi
        done
    done
}

case_changed() {
    local tree=$1 key="$1-changed" r tool changed="$MNT/tmp/changed.txt"
    new_case "$key" "$2"
    gen_args "$tree"
    for ((r = 0; r <= RUNS; r++)); do
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
            run_sync "$tool" "$key run $r"
            if ((r == 0)); then
                log "  warm-up $tool: ${ELAPSED}s"
                verify "$tool" "$key warm-up" 0 "$changed"
            else
                log "  run $r $tool: ${ELAPSED}s"
                record "$key" "$tool" "$ELAPSED"
                verify "$tool" "$key run $r" $((r == 1)) "$changed"
            fi
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
            run_sync "$tool" "$key run $r"
            if ((r == 0)); then
                log "  warm-up $tool: ${ELAPSED}s"
                verify "$tool" "$key warm-up" 0
            else
                log "  run $r $tool: ${ELAPSED}s"
                record "$key" "$tool" "$ELAPSED"
                verify "$tool" "$key run $r" $((r == 1))
            fi
        done
    done
}

# -------------------------------------------------------------------- daemons

if has_tool rsync; then
    RSYNC_PORT=$(free_port)
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
    rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --address=127.0.0.1 \
        --port="$RSYNC_PORT" --log-file="$LOGS/rsyncd.log" >>"$LOGS/rsyncd.out" 2>&1 &
    PIDS+=($!)
    wait_listen "$RSYNC_PORT" "$!" "rsync daemon" "$LOGS/rsyncd.log"
    log "rsync daemon listening on 127.0.0.1:$RSYNC_PORT (module 'mod' -> $RSYNC_DST)"
fi

if has_tool filesync; then
    # filesync reads FILESYNC_* (and RUST_LOG) from the environment; run it with its
    # defaults plus the flags below, whatever the caller's shell has set.
    for v in $(compgen -e); do
        if [[ $v == FILESYNC_* || $v == RUST_LOG ]]; then export -n "${v?}"; fi
    done
    FS_PORT=$(free_port)
    # Keep any per-user state of filesync on the benchmark filesystem too.
    mkdir -p "$MNT/home"
    export HOME="$MNT/home" XDG_CONFIG_HOME="$MNT/home/.config" \
        XDG_STATE_HOME="$MNT/home/.local/state" XDG_CACHE_HOME="$MNT/home/.cache" \
        XDG_DATA_HOME="$MNT/home/.local/share"
    "$FILESYNC_BIN" serve --port "$FS_PORT" --root "$FS_ROOT" --bind 127.0.0.1 \
        --no-discovery --interval 30 >>"$LOGS/filesync-serve.log" 2>&1 &
    FS_SERVER_PID=$!
    PIDS+=("$FS_SERVER_PID")
    wait_listen "$FS_PORT" "$FS_SERVER_PID" "filesync server" "$LOGS/filesync-serve.log"
    log "filesync server listening on 127.0.0.1:$FS_PORT (root $FS_ROOT)"
fi

# ---------------------------------------------------------------------- run

GEN_NOTES=()
for tree in "${TREES[@]}"; do
    rm -rf "$SRC"
    for tool in "${TOOLS[@]}"; do clear_dest "$tool"; done
    gen_args "$tree"
    log "generating the $tree tree"
    t0=$(date +%s.%N)
    python3 "$GEN" "$tree" "$SRC" "${GARGS[@]}" 2>"$LOGS/gen-$tree.txt" || { cat "$LOGS/gen-$tree.txt" >&2; die "gen_tree.py $tree failed"; }
    t1=$(date +%s.%N)
    GEN_NOTES+=("$(head -n 1 "$LOGS/gen-$tree.txt")")
    log "  $(head -n 1 "$LOGS/gen-$tree.txt") ($(python3 -c "print(f'{$t1-$t0:.1f}')") s)"
    if [[ $tree == small ]]; then
        nfiles=$(python3 -c "print(f'{$SMALL_FILES:,}')")
        mb=$(find "$SRC" -type f -printf '%s\n' | awk '{t += $1} END {printf "%.0f", t / 1e6}')
        nchanged=$(python3 -c "print(max(1, round($SMALL_FILES*0.01)))")
        case_initial small "small: initial ($nfiles files, $mb MB)"
        case_changed small "small: 1% changed ($nchanged files rewritten)"
        case_nochange small "small: no change"
    else
        case_initial large "large: initial ($LARGE_COUNT × $LARGE_MIB MiB)"
        case_changed large "large: 1 MiB changed in one file"
        case_nochange large "large: no change"
    fi
    rm -rf "$SRC"
    for tool in "${TOOLS[@]}"; do clear_dest "$tool"; done
done

# -------------------------------------------------------------------- report

stat_of() { # stat_of median|min|max TIMES...
    local what=$1
    shift
    python3 -c '
import statistics, sys
v = [float(x) for x in sys.argv[2:]]
print("%.3f" % {"median": statistics.median, "min": min, "max": max}[sys.argv[1]](v))' "$what" "$@"
}

TABLE="| case | rsync median (s) | filesync median (s) | ratio (filesync/rsync) |
|---|---:|---:|---:|"
DETAILS="| case | tool | runs (s) | min | median | max |
|---|---|---|---:|---:|---:|"
for key in "${CASE_KEYS[@]}"; do
    declare -A med=([rsync]="–" [filesync]="–")
    for tool in "${TOOLS[@]}"; do
        read -r -a ts <<<"${TIMES["$key|$tool"]}"
        med[$tool]=$(stat_of median "${ts[@]}")
        DETAILS+="
| ${CASE_LABEL[$key]} | $tool | $(printf '%.3f ' "${ts[@]}")| $(stat_of min "${ts[@]}") | ${med[$tool]} | $(stat_of max "${ts[@]}") |"
    done
    ratio="–"
    if [[ ${med[rsync]} != "–" && ${med[filesync]} != "–" ]]; then
        ratio=$(python3 -c 'import sys; r=float(sys.argv[1]); print("%.2f" % (float(sys.argv[2])/r) if r > 0 else "inf")' "${med[rsync]}" "${med[filesync]}")
    fi
    TABLE+="
| ${CASE_LABEL[$key]} | ${med[rsync]} | ${med[filesync]} | $ratio |"
    unset med
done

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo 2>/dev/null || true)
rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo "no commit")
if [[ -n $(git -C "$REPO_DIR" status --porcelain 2>/dev/null || true) ]]; then rev+=" (work tree has uncommitted changes)"; fi
fs_version="not run (--only $ONLY)"
if has_tool filesync; then
    fs_version=$("$FILESYNC_BIN" --version 2>/dev/null | head -n 1 || true)
    fs_version="${fs_version:-unknown version} ($FILESYNC_BIN)"
fi
rsync_cmd="rsync -a --delete SRC/ rsync://127.0.0.1:PORT/mod/"
if ((RSYNC_FSYNC)); then rsync_cmd="rsync -a --delete --fsync SRC/ rsync://127.0.0.1:PORT/mod/"; fi
quick_note=""
if ((QUICK)); then quick_note=$'\n**Quick smoke run** (reduced trees and runs): not the reference figures.'; fi
verify_note=""
if ((FULL_VERIFY)); then verify_note=" (in this run: every timed run, --full-verify)"; fi

STAMP=$(date +%F)
if [[ -z $OUT ]]; then
    suffix=""
    if ((QUICK)); then suffix+="-quick"; fi
    if [[ $ONLY != both ]]; then suffix+="-$ONLY-only"; fi
    OUT="$BENCH_DIR/results-$STAMP$suffix.md"
fi

REPORT="# filesync vs rsync benchmark — $(date -u '+%F %T UTC')

$TABLE

Median of $RUNS timed runs after one warm-up run, wall-clock seconds per sync command
(monotonic clock). Ratio < 1 means filesync is faster.$quick_note

## Machine and setup

- CPU: ${cpu:-unknown}; nproc: $(nproc); memory: ${mem:-unknown}
- Kernel: $(uname -sr)
- Filesystem: $FS_DESC (source and both destinations on it)
- rsync: $(rsync --version | head -n 1), daemon mode on 127.0.0.1, client: \`$rsync_cmd\`
- filesync: $fs_version, git $rev; client: \`filesync sync --once --id bench --server 127.0.0.1:PORT --dir SRC\`, server: \`filesync serve --port PORT --root DIR --bind 127.0.0.1 --no-discovery --interval 30\`
- Python: $(python3 -V 2>&1 | cut -d' ' -f2); trees from \`bench/gen_tree.py\` (seed $SEED)
$(printf -- '  - %s\n' "${GEN_NOTES[@]}")
- Client and server of each tool run on the same machine over loopback and share its $(nproc) CPUs.
- The page cache was not dropped between runs: every run after the warm-up reads a warm cache.
- Verification: every timed run compares a listing (paths, sizes, mtimes to the second) of source and destination, plus the contents of the changed files; the first timed run of each case does a full \`diff -r\`$verify_note.

## All runs

$DETAILS
"

printf '%s\n' "$REPORT" >"$OUT"
printf '\n%s\n\n' "$TABLE"
log "results written to $OUT"
SUCCESS=1
