#!/usr/bin/env bash
# On a GPU machine where vLLM and PySpark are installed but not this package (e.g. wheels staged
# offline): run the gpu-marked tests or the score benchmark from this checkout.
#   bench/gpu_run.sh tests OUT             pytest -m gpu, log in OUT/ (needs pytest and chispa: the dev extra)
#   bench/gpu_run.sh bench OUT [STEPS]     bench/score_bench.py all (STEPS: comma list, see --help)
#   bench/gpu_run.sh lanes OUT STEPS0 STEPS1   two step lists at once, one per GPU (after prepare)
#   bench/gpu_run.sh scale OUT [STEPS]     one GPU, ~14 min (two calls: see bench/RESULTS.md): cold/warm start, engine busy
#                                          time vs bare LLM.classify, throughput at ~300 and ~1k tokens,
#                                          --compare-sample fp8 vs bf16 (STEPS: prepare,start,bare,job,compare)
#   bench/gpu_run.sh plan OUT              one GPU, ~3-5 min: jobs/score.py --plan --calibrate 4096 on
#                                          ~300-token prompts (the engine's start split into import and vLLM)
#   bench/gpu_run.sh report OUT            the Markdown tables from OUT/*.json
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
what=${1:?tests, bench, lanes, scale, plan or report}; out=${2:?output directory}; steps=${3:-}; steps1=${4:-}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYSPARK_PYTHON=$(command -v python3); export PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON=$PYSPARK_PYTHON
SPARK_HOME=$(python3 -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))'); export SPARK_HOME
export PROMPTSCORE_RUNTIME_DIR=${PROMPTSCORE_RUNTIME_DIR:-/tmp/promptscore-runtime}
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
case "$what" in
  tests)
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/spark/test_score_job.py 2>&1 | tee "$out/gpu-tests.log"
    rc=${PIPESTATUS[0]}
    cp "$PROMPTSCORE_RUNTIME_DIR"/*.log "$out/" 2>/dev/null
    exit "$rc" ;;
  bench)
    python3 bench/score_bench.py all --work /tmp/score-bench --out "$out" ${steps:+--steps "$steps"} ;;
  lanes)
    CUDA_VISIBLE_DEVICES=0 python3 bench/score_bench.py all --work /tmp/score-bench --out "$out" --steps "$steps" &
    CUDA_VISIBLE_DEVICES=1 python3 bench/score_bench.py all --work /tmp/score-bench --out "$out" --steps "$steps1" &
    wait %1; rc0=$?; wait %2; rc1=$?
    exit $((rc0 + rc1)) ;;
  scale)
    python3 bench/score_bench.py scale --work /tmp/score-bench --out "$out" ${steps:+--steps "$steps"}
    rc=$?
    # Few files come back from a device call: the logs go in one archive.
    tar -czf "$out/logs.tar.gz" -C "$out" bench-scale.log -C /tmp/score-bench/runtime . 2>/dev/null
    rm -f "$out/bench-scale.log"
    exit "$rc" ;;
  plan)
    python3 bench/score_bench.py prepare --work /tmp/score-bench --prompts 4096 --min-tokens 250 --max-tokens 350 \
      --name prompts-300 --device cuda > "$out/plan.log" 2>&1 || { tail -5 "$out/plan.log"; exit 1; }
    "$SPARK_HOME/bin/spark-submit" --master 'local[4]' --conf spark.driver.memory=8g --conf spark.log.level=WARN \
      --conf spark.ui.showConsoleProgress=false jobs/score.py --input /tmp/score-bench/prompts-300 \
      --model /tmp/score-bench/qwen1.5b --backend vllm --dtype bfloat16 --max-model-len 2048 --plan --calibrate 4096 \
      --gpus 8 --cache-dir /tmp/score-bench/cache --report "$out/plan.json" >> "$out/plan.log" 2>&1
    rc=$?
    grep -v ' WARN \| INFO ' "$out/plan.log" | tail -12
    tar -czf "$out/logs.tar.gz" -C "$out" plan.log -C "$PROMPTSCORE_RUNTIME_DIR" . 2>/dev/null
    exit "$rc" ;;
  report)
    python3 bench/score_bench.py report --out "$out" ;;
  *) echo "unknown: $what" >&2; exit 2 ;;
esac
