#!/usr/bin/env bash
# DataWorks "EMR Shell" node: score one day of prompts on the cluster's GPU nodes.
# Runs after the convert node (it waits on the convert output's _SUCCESS, see
# wait-for-success-shell-node.sh). Node parameters: bizdate=$bizdate.
# The model was copied to every GPU node by bootstrap/stage-model.sh.
#
# Exit codes: 0 done; 2 fix the node; 3 too many rows could not be scored (see score_error in the
# output); 1 retry.
# shellcheck disable=SC2154  # bizdate is a DataWorks scheduling parameter
set -uo pipefail
APP=/opt/promptscore/app
IN=oss://my-bucket/warehouse/prompts/dt=${bizdate}/
OUT=oss://my-bucket/warehouse/prompt_scores/

spark-submit --properties-file "$APP/conf/emr-score-gpu.conf" "$APP/jobs/score.py" \
  --input "$IN" --output "$OUT" --partition-col dt --partition-value "${bizdate}" \
  --model /mnt/disk1/models/reward-model --template chat --max-model-len 4096
rc=$?
case $rc in
  0) echo "scored ${bizdate}: ${OUT}dt=${bizdate}/_report.json" ;;
  2) echo "score: the call is wrong (see the error above); fix the node, a rerun fails the same way" ;;
  3) echo "score: too many rows got no score; see score_error in ${OUT}dt=${bizdate}/" ;;
  *) echo "score: failed unexpectedly (exit $rc); rerunning may help" ;;
esac
exit $rc
