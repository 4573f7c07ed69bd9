#!/usr/bin/env bash
# DataWorks "EMR Shell" node for a consumer outside the workflow that runs the job: waits until the
# job wrote _SUCCESS for ${bizdate} (written last, only when the job succeeded), up to 2 hours.
# Inside one workflow it is not needed: a node downstream of the convert node runs only after that
# node exited 0, which is when _SUCCESS was written.
# Runs on the DataWorks resource group and reads OSS through the cluster's Hadoop client there
# (hadoop fs). Scheduling parameter: bizdate=$bizdate.
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
echo "no $MARKER after 2 hours: the upstream job failed, did not run, or ended with exit 3" >&2
exit 1
