#!/usr/bin/env bash
# Spark GPU discovery script (spark.executor.resource.gpu.discoveryScript).
# Prints the GPUs this container sees, as Spark expects: {"name": "gpu", "addresses": ["0", "1"]}
# Needs nvidia-smi. On YARN with GPU isolation, nvidia-smi inside the container lists only the
# GPUs YARN gave it.
set -euo pipefail

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-discovery: nvidia-smi not found on PATH; is this a GPU node with the NVIDIA driver?" >&2
  exit 1
fi
# "No devices were found" exits non-zero: that is zero GPUs, not an error of this script.
indexes=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null) || indexes=""
addresses=""
for i in $indexes; do
  case "$i" in
    *[!0-9]*) echo "gpu-discovery: unexpected nvidia-smi output: $i" >&2; exit 1 ;;
  esac
  addresses="${addresses:+$addresses, }\"$i\""
done
echo "{\"name\": \"gpu\", \"addresses\": [$addresses]}"
