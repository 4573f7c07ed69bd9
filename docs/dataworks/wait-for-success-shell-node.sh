#!/usr/bin/env bash
# DataWorks "EMR Shell" node placed before a downstream node: waits until the upstream job wrote
# _SUCCESS for ${bizdate} (the jobs write it last, and only when they succeed), up to 2 hours.
# shellcheck disable=SC2154  # bizdate is a DataWorks scheduling parameter
set -uo pipefail
MARKER=oss://my-bucket/warehouse/prompts/dt=${bizdate}/_SUCCESS
for _ in $(seq 1 240); do
  if hadoop fs -test -e "$MARKER"; then
    echo "found $MARKER"
    exit 0
  fi
  sleep 30
done
echo "no $MARKER after 2 hours: the upstream node failed or did not run" >&2
exit 1
