#!/usr/bin/env bash
# DataWorks "EMR Shell" node: convert one day of JSONL into <output>/dt=${bizdate}/.
# Node parameters: bizdate=$bizdate (DataWorks replaces ${bizdate} below with e.g. 20261122).
# Needs bootstrap/install-python-env.sh on the cluster (the Python of conf/emr-convert.conf) and
# this project's jobs/ and conf/ under /opt/promptscore/app (or change APP).
#
# Exit codes: 0 done (_SUCCESS written); 2 the call is wrong, fix the node, do not rerun;
# 3 too many malformed lines, see <output>/dt=.../_rejects/, rerunning will not help;
# 1 anything else (OSS, YARN), rerun.
# shellcheck disable=SC2154  # bizdate is a DataWorks scheduling parameter
set -uo pipefail
APP=/opt/promptscore/app
IN=oss://my-bucket/raw/prompts/${bizdate}/
OUT=oss://my-bucket/warehouse/prompts/

spark-submit --properties-file "$APP/conf/emr-convert.conf" "$APP/jobs/convert.py" \
  --input "$IN" --output "$OUT" --partition-col dt --partition-value "${bizdate}"
rc=$?
case $rc in
  0) echo "converted ${bizdate}: ${OUT}dt=${bizdate}/_report.json" ;;
  2) echo "convert: the call is wrong (see the error above); fix the node, a rerun fails the same way" ;;
  3) echo "convert: too many malformed lines; look at ${OUT}dt=${bizdate}/_rejects/ before rerunning" ;;
  *) echo "convert: failed unexpectedly (exit $rc); rerunning may help" ;;
esac
exit $rc
