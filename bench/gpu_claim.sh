#!/usr/bin/env bash
# GPU discovery for several Spark workers on ONE host (local-cluster benchmarks only): each call
# claims one GPU that no earlier call claimed, so two workers never get the same GPU.
# (On a cluster, use bootstrap's discovery script: YARN already gives each container its own GPUs.)
set -euo pipefail
claims=/tmp/promptscore-gpu-claims
mkdir -p "$claims"
for i in $(nvidia-smi --query-gpu=index --format=csv,noheader); do
  if mkdir "$claims/$i" 2>/dev/null; then
    echo "{\"name\": \"gpu\", \"addresses\": [\"$i\"]}"
    exit 0
  fi
done
echo '{"name": "gpu", "addresses": []}'
