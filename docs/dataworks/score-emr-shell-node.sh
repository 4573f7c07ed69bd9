#!/usr/bin/env bash
# DataWorks "EMR Shell" node: score one day of prompts on the cluster's GPU nodes (after the convert node; the
# model was copied to every GPU node by bootstrap/stage-model.sh).
#
# The node runs on the DataWorks resource group that the workspace's EMR cluster is attached to (a
# serverless resource group, or an exclusive resource group for scheduling), not on a cluster node:
# /opt/promptscore and the bootstrap's environment do not exist there. So the job runs in YARN
# cluster mode: its driver runs in a YARN container on a cluster node, where
# bootstrap/install-python-env.sh installed the environment. jobs/score.py was uploaded to
# oss://my-bucket/promptscore/jobs/ (README, step 1). Scheduling parameter: bizdate=$bizdate.
# Rerun settings and what each exit code means: docs/dataworks/README.md.
#
# The spark-submit command is generated from conf/emr-score-gpu.conf; regenerate it after changing that file:
#   python -m promptscore.tools.submit score --deploy-mode cluster --jobs-uri oss://my-bucket/promptscore/jobs --format lines -- --input 'oss://my-bucket/warehouse/prompts/dt=${bizdate}/' --output oss://my-bucket/warehouse/prompt_scores/ --partition-col dt --partition-value '${bizdate}' --model /mnt/disk1/models/reward-model --template chat --max-model-len 4096
# shellcheck disable=SC2154  # bizdate is a DataWorks scheduling parameter
set -uo pipefail
# No other dollar-brace expression in this file: DataWorks substitutes them all.
DAY=oss://my-bucket/warehouse/prompt_scores/dt=${bizdate}/

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# DataWorks replaces ${bizdate} in this text before the shell runs it.
# shellcheck disable=SC2016
spark-submit \
  --conf spark.master=yarn \
  --conf spark.submit.deployMode=cluster \
  --conf spark.app.name=promptscore-score \
  --conf spark.executor.resource.gpu.amount=1 \
  --conf spark.task.resource.gpu.amount=1 \
  --conf spark.executor.resource.gpu.discoveryScript=/opt/promptscore/bin/gpu-discovery.sh \
  --conf spark.executorEnv.PROMPTSCORE_GPU_AMOUNT=1 \
  --conf spark.executor.cores=8 \
  --conf spark.executor.memory=16g \
  --conf spark.executor.memoryOverhead=32g \
  --conf spark.python.worker.reuse=true \
  --conf spark.python.daemon.module=udfs.worker_daemon \
  --conf spark.promptscore.score.prestart=true \
  --conf spark.sql.execution.arrow.pyspark.enabled=true \
  --conf spark.sql.execution.arrow.maxRecordsPerBatch=1024 \
  --conf spark.sql.files.maxPartitionBytes=64m \
  --conf spark.locality.wait=0s \
  --conf spark.speculation=false \
  --conf spark.task.maxFailures=4 \
  --conf spark.dynamicAllocation.enabled=true \
  --conf spark.dynamicAllocation.minExecutors=1 \
  --conf spark.dynamicAllocation.initialExecutors=8 \
  --conf spark.dynamicAllocation.maxExecutors=8 \
  --conf spark.dynamicAllocation.executorIdleTimeout=1800s \
  --conf spark.dynamicAllocation.schedulerBacklogTimeout=5s \
  --conf spark.dynamicAllocation.shuffleTracking.enabled=true \
  --conf spark.scheduler.minRegisteredResourcesRatio=0.8 \
  --conf spark.scheduler.maxRegisteredResourcesWaitingTime=300s \
  --conf spark.sql.parquet.compression.codec=zstd \
  --conf spark.hadoop.fs.oss.committer.magic.enabled=true \
  --conf spark.hadoop.fs.oss.retry.count=10 \
  --conf spark.hadoop.fs.oss.retry.interval.millisecond=1000 \
  --conf spark.pyspark.python=/opt/promptscore/venv/bin/python \
  --conf spark.pyspark.driver.python=/opt/promptscore/venv/bin/python \
  oss://my-bucket/promptscore/jobs/score.py \
  --input 'oss://my-bucket/warehouse/prompts/dt=${bizdate}/' \
  --output oss://my-bucket/warehouse/prompt_scores/ \
  --partition-col dt \
  --partition-value '${bizdate}' \
  --model /mnt/disk1/models/reward-model \
  --template chat \
  --max-model-len 4096 \
  2>&1 | tee "$log"
rc=$?   # spark-submit's (pipefail; tee does not fail)
# In cluster mode spark-submit exits 1 whenever the application fails; the job's own exit code is
# in the application's diagnostics ("User application exited with status N").
if [ "$rc" -ne 0 ]; then
  code=$(sed -n 's/.*User application exited with status \([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
  [ -n "$code" ] && rc=$code
fi
case $rc in
  0) echo "score: done: $DAY (_SUCCESS, _report.json)" ;;
  2) echo "score: the call is wrong (see the error above): fix the node; a rerun fails the same way" ;;
  3) echo "score: too many rows got no score: output and _report.json are published, _SUCCESS is not; see score_error in $DAY (a rerun replaces them and makes nothing worse)" ;;
  4) echo "score: out of resources (a disk or quota full, memory exhausted; the error above names the cause and the path): free or add the resource, then rerun the same command" ;;
  *) echo "score: failed unexpectedly (exit $rc); a rerun of the same command is safe and may succeed" ;;
esac
exit "$rc"
