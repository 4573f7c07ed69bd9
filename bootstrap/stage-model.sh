#!/usr/bin/env bash
# EMR bootstrap action: copy a model directory from OSS (or a mounted directory) to local disk
# once, so that the score job's --model can point at a local path on every node.
#
#   stage-model.sh SOURCE DEST [--python PATH] [--region REGION | --endpoint ENDPOINT]
#     SOURCE  oss://bucket/models/name/ or a directory; for a bucket in another region than the
#             node, oss://bucket.oss-REGION-internal.aliyuncs.com/models/name/ or --region REGION
#     DEST    local directory, e.g. /mnt/disk1/models/name
#
# Credentials: the ECS instance's RAM role, or OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET
# (/ OSS_SESSION_TOKEN) in the environment; never arguments. Resumable: run it again after a
# failure and it continues; a complete copy is detected and left alone. Sizes are checked.
# Uses the Python environment made by install-python-env.sh (default /opt/promptscore/venv).
# EMR bootstrap action: after component startup, failure policy Stop, on the GPU node group, after
# install-python-env.sh (docs/emr.md#bootstrap-actions).
set -euo pipefail

log() { echo "[promptscore stage-model] $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

python=/opt/promptscore/venv/bin/python
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --python) python=${2:?--python needs a path}; shift 2 ;;
    --endpoint) args+=(--endpoint "${2:?--endpoint needs a value}"); shift 2 ;;
    --region) args+=(--region "${2:?--region needs a value}"); shift 2 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) args+=("$1"); shift ;;
  esac
done
[ "${#args[@]}" -ge 2 ] || { usage >&2; die "SOURCE and DEST are required"; }
[ -x "$python" ] || die "no Python at $python: run install-python-env.sh first, or pass --python"
log "staging ${args[0]} into ${args[1]} with $python"
"$python" -m promptscore.tools.stage_model "${args[@]}"
log "done"
