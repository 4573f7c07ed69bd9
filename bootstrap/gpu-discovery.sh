#!/usr/bin/env bash
# Spark GPU discovery script (spark.executor.resource.gpu.discoveryScript) for YARN executors.
# Prints the GPUs this executor owns, as Spark expects: {"name": "gpu", "addresses": ["0"]}
# It claims PROMPTSCORE_GPU_AMOUNT GPUs (default 1) of those nvidia-smi lists, each with a claim
# file in PROMPTSCORE_GPU_CLAIMS (default /tmp/promptscore-gpu-claims) naming the executor process
# (the script's parent): a GPU claimed by a live executor is not handed out again, so two executors
# on one node never share a GPU, even where YARN does not isolate GPUs. A claim whose executor has
# exited is taken over. With YARN GPU isolation (cgroups) a container sees only its own GPUs.
# Needs nvidia-smi and flock. Fewer free GPUs than asked for: exit 1 and the executor fails.
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
die() { echo "gpu-discovery: $*" >&2; exit 1; }

amount=${PROMPTSCORE_GPU_AMOUNT:-1}
claims=${PROMPTSCORE_GPU_CLAIMS:-/tmp/promptscore-gpu-claims}
owner=${PROMPTSCORE_GPU_OWNER_PID:-$PPID}
case "$amount" in
  ''|*[!0-9]*|0*) die "PROMPTSCORE_GPU_AMOUNT must be a positive integer, not '$amount'" ;;
esac
command -v nvidia-smi >/dev/null 2>&1 || \
  die "nvidia-smi not found on PATH; is this a GPU node with the NVIDIA driver?"
command -v flock >/dev/null 2>&1 || die "flock not found on PATH (util-linux)"

# "index, uuid" per GPU. "No devices were found" exits non-zero: that is zero GPUs.
listing=$(nvidia-smi --query-gpu=index,uuid --format=csv,noheader 2>/dev/null) || listing=""

# A process, told apart from a later one with the same pid by its start time.
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # shellcheck disable=SC2086  # the fields after "(comm) " split on spaces; starttime is the 20th
  set -- ${stat##*) }
  echo "${20}"
}
owner_start=$(start_time "$owner") || die "owner process $owner not found"

mkdir -p "$claims" 2>/dev/null || die "cannot create $claims"
chmod 1777 "$claims" 2>/dev/null || true   # executors of every user claim here
exec 9<"$claims"
flock -w 60 9 || die "timed out waiting for the lock on $claims"

addresses=()
mine=()
free=0
while IFS=', ' read -r index uuid; do
  [ -n "${index:-}" ] || continue
  case "$index" in *[!0-9]*) die "unexpected nvidia-smi output: $index, $uuid" ;; esac
  case "$uuid" in ''|*[!A-Za-z0-9-]*) die "unexpected GPU uuid for GPU $index: '$uuid'" ;; esac
  [ "${#addresses[@]}" -lt "$amount" ] || break
  claim="$claims/$uuid"
  pid="" started=""
  [ -s "$claim" ] && { read -r pid started < "$claim" || true; }
  if [ "$pid" = "$owner" ] && [ "$started" = "$owner_start" ]; then
    :   # ours already (the script ran before for this executor)
  elif [ -n "$pid" ] && [ "$(start_time "$pid" 2>/dev/null || true)" = "${started:-x}" ]; then
    continue   # a live executor owns it
  else
    # Free or stale: claim it (world-writable, so that an executor of another user can take it
    # over once this one has exited).
    (umask 000 && echo "$owner $owner_start" > "$claim") 2>/dev/null || continue
    mine+=("$claim")
  fi
  addresses+=("\"$index\"")
  free=$((free + 1))
done <<< "$listing"

if [ "$free" -lt "$amount" ]; then
  for claim in "${mine[@]}"; do : > "$claim"; done   # give back what this call took
  total=$(grep -c . <<< "$listing" || true)
  die "$free of $amount GPUs free on $(hostname) ($total listed; claims in $claims)"
fi
joined=$(IFS=,; echo "${addresses[*]}")
echo "{\"name\": \"gpu\", \"addresses\": [${joined//,/, }]}"
