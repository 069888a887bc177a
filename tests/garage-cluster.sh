#!/usr/bin/env bash
# A 3-node Garage cluster on loopback, by hand: the steps GarageCluster::start runs in
# tests/src/garage.rs (keep the two alike). Usage:
#
#   eval "$(bash tests/garage-cluster.sh DIR)"   # start it; AWS_* and RCLONE_CONFIG_GARAGE_*
#   filesync serve --store "s3://$BUCKET/prefix" …
#   kill $(cat DIR/pids)                         # stop it
#
# Node i (0, 1, 2) serves S3 on port BASE+10i and RPC on BASE+10i+1, BASE being
# $GARAGE_PORT_BASE (3900). DIR/node<i>/ holds its garage.toml, garage.log, meta and data.
# Progress and errors go to stderr, the export lines alone to stdout.
set -euo pipefail
dir=${1:?usage: garage-cluster.sh DIR}
base=${GARAGE_PORT_BASE:-3900}
garage=${GARAGE_BIN:-$(command -v garage || echo "$HOME/.cargo/bin/garage")}
bucket=filesync-test
mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
secret=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')

g() { "$garage" -c "$dir/node$1/garage.toml" "${@:2}"; } # g NODE ARGS…: the CLI on node NODE
# Retries a command for up to 30 s (a node still starting); the last try shows its error.
retry() {
  for _ in $(seq 150); do "$@" >/dev/null 2>&1 && return 0; check_alive; sleep 0.2; done
  "$@"
}
check_alive() {
  local i=0
  for pid in $(cat "$dir/pids"); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "garage node $i exited; its errors, then the end of $dir/node$i/garage.log:" >&2
      grep -m 10 -E ' ERROR |panicked' "$dir/node$i/garage.log" >&2 || true
      tail -n 30 "$dir/node$i/garage.log" >&2
      exit 1
    fi
    i=$((i + 1))
  done
}
all_up() { [ "$(g 0 json-api GetClusterStatus | grep -c '"isUp": *true')" = 3 ]; }
healthy() { g "$1" json-api GetClusterHealth | grep -q '"status": *"healthy"'; }
s3_up() { (exec 3<>"/dev/tcp/127.0.0.1/$((base + 10 * $1))") 2>/dev/null; }

: >"$dir/pids"
for i in 0 1 2; do
  mkdir -p "$dir/node$i/meta" "$dir/node$i/data"
  cat >"$dir/node$i/garage.toml" <<EOF
metadata_dir = "$dir/node$i/meta"
data_dir = "$dir/node$i/data"
db_engine = "sqlite"
replication_factor = 3
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$((base + 10 * i + 1))"
rpc_public_addr = "127.0.0.1:$((base + 10 * i + 1))"
rpc_secret = "$secret"
rpc_timeout_msec = 5000 # not 300 s: how long a read waits on an unreachable node

[s3_api]
api_bind_addr = "127.0.0.1:$((base + 10 * i))"
s3_region = "garage"
root_domain = ".s3.garage.localhost"
EOF
  NO_COLOR=1 "$garage" -c "$dir/node$i/garage.toml" server </dev/null >>"$dir/node$i/garage.log" 2>&1 &
  echo $! >>"$dir/pids"
done

ids=()
for i in 0 1 2; do
  retry g $i node id --quiet
  ids+=("$(g $i node id --quiet)") # <hex id>@127.0.0.1:<rpc port>
done
for i in 1 2; do retry g 0 node connect "${ids[$i]}"; done
retry all_up
g 0 layout assign -z dc1 -c 1G "${ids[@]%@*}" >&2
g 0 layout apply --version 1 >&2
for i in 0 1 2; do retry s3_up $i; retry healthy $i; done
key=$(g 0 key create filesync-test)
key_id=$(awk '/^Key ID:/ { print $3 }' <<<"$key")
key_secret=$(awk '/^Secret key:/ { print $3 }' <<<"$key")
g 0 bucket create $bucket >&2
g 0 bucket allow --read --write --owner $bucket --key "$key_id" >&2
echo "garage: 3 nodes up in $dir (pids $(tr '\n' ' ' <"$dir/pids"))" >&2

endpoint="http://127.0.0.1:$base"
cat <<EOF
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
export AWS_REGION=garage AWS_DEFAULT_REGION=garage
export AWS_ENDPOINT=$endpoint AWS_ENDPOINT_URL=$endpoint
export AWS_ALLOW_HTTP=true
unset AWS_CA_BUNDLE # or rclone 1.60 fails: "unable to load custom CA bundle"
export BUCKET=$bucket
export RCLONE_CONFIG_GARAGE_TYPE=s3 RCLONE_CONFIG_GARAGE_PROVIDER=Other
export RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID=$key_id RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY=$key_secret
export RCLONE_CONFIG_GARAGE_REGION=garage RCLONE_CONFIG_GARAGE_ENDPOINT=$endpoint
export RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE=true RCLONE_CONFIG_GARAGE_NO_CHECK_BUCKET=true
EOF
