#!/usr/bin/env bash
# DataWorks "EMR Shell" node: convert one day of JSONL into <output>/dt=${bizdate}/.
#
# The node runs on the DataWorks resource group that the workspace's EMR cluster is attached to (a
# serverless resource group, or an exclusive resource group for scheduling), not on a cluster node:
# /opt/promptscore and the bootstrap's environment do not exist there. So the job runs in YARN
# cluster mode: its driver runs in a YARN container on a cluster node, where
# bootstrap/install-python-env.sh installed the environment. jobs/convert.py was uploaded to
# oss://my-bucket/promptscore/jobs/ (README, step 1). Scheduling parameter: bizdate=$bizdate.
# Rerun settings and what each exit code means: docs/dataworks/README.md.
#
# The spark-submit command is generated from conf/emr-convert.conf; regenerate it after changing that file:
#   python -m promptscore.tools.submit convert --deploy-mode cluster --jobs-uri oss://my-bucket/promptscore/jobs --format lines -- --input 'oss://my-bucket/raw/prompts/${bizdate}/' --output oss://my-bucket/warehouse/prompts/ --partition-col dt --partition-value '${bizdate}'
# shellcheck disable=SC2154  # bizdate is a DataWorks scheduling parameter
set -uo pipefail
# No other dollar-brace expression in this file: DataWorks substitutes them all.
DAY=oss://my-bucket/warehouse/prompts/dt=${bizdate}/

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# DataWorks replaces ${bizdate} in this text before the shell runs it.
# shellcheck disable=SC2016
spark-submit \
  --conf spark.master=yarn \
  --conf spark.submit.deployMode=cluster \
  --conf spark.app.name=promptscore-convert \
  --conf spark.driver.memory=8g \
  --conf spark.driver.maxResultSize=2g \
  --conf spark.promptscore.convert.readAhead=7 \
  --conf spark.executor.cores=5 \
  --conf spark.executor.memory=8g \
  --conf spark.executor.memoryOverhead=2g \
  --conf spark.dynamicAllocation.enabled=true \
  --conf spark.dynamicAllocation.maxExecutors=2 \
  --conf spark.speculation=false \
  --conf spark.sql.files.openCostInBytes=8k \
  --conf spark.sql.sources.parallelPartitionDiscovery.threshold=8 \
  --conf spark.sql.sources.parallelPartitionDiscovery.parallelism=1000 \
  --conf spark.sql.files.ignoreCorruptFiles=false \
  --conf spark.sql.files.ignoreMissingFiles=false \
  --conf spark.sql.parquet.compression.codec=zstd \
  --conf spark.promptscore.convert.fileChecksums=false \
  --conf spark.hadoop.fs.oss.committer.magic.enabled=true \
  --conf spark.hadoop.fs.oss.committer.threads=16 \
  --conf spark.hadoop.fs.oss.retry.count=10 \
  --conf spark.hadoop.fs.oss.retry.interval.millisecond=1000 \
  --conf spark.pyspark.python=/opt/promptscore/venv/bin/python \
  --conf spark.pyspark.driver.python=/opt/promptscore/venv/bin/python \
  oss://my-bucket/promptscore/jobs/convert.py \
  --input 'oss://my-bucket/raw/prompts/${bizdate}/' \
  --output oss://my-bucket/warehouse/prompts/ \
  --partition-col dt \
  --partition-value '${bizdate}' \
  2>&1 | tee "$log"
rc=$?   # spark-submit's (pipefail; tee does not fail)
# In cluster mode spark-submit exits 1 whenever the application fails; the job's own exit code is
# in the application's diagnostics ("User application exited with status N").
if [ "$rc" -ne 0 ]; then
  code=$(sed -n 's/.*User application exited with status \([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
  [ -n "$code" ] && rc=$code
fi
case $rc in
  0) echo "convert: done: $DAY (_SUCCESS, _report.json)" ;;
  2) echo "convert: the call is wrong (see the error above): fix the node; a rerun fails the same way" ;;
  3) echo "convert: too many malformed lines: output, _rejects/ and _report.json are published, _SUCCESS is not; look at $DAY""_rejects/ (a rerun replaces them and makes nothing worse)" ;;
  4) echo "convert: out of resources (a disk or quota full, memory exhausted; the error above names the cause and the path): free or add the resource, then rerun the same command" ;;
  *) echo "convert: failed unexpectedly (exit $rc); a rerun of the same command is safe and may succeed" ;;
esac
exit "$rc"
