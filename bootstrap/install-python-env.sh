#!/usr/bin/env bash
# EMR bootstrap action: one Python environment per node for promptscore's jobs, pinned versions.
#
#   install-python-env.sh [options]
#     --prefix DIR          where it goes (default /opt/promptscore): DIR/venv, DIR/bin
#     --wheels SRC          install offline from a wheel directory: a local path, oss://bucket/dir/
#                           (copied with ossutil or hadoop fs), or an http(s):// .tar.gz of one
#     --gpu | --cpu         the node type (default: GPU when nvidia-smi lists a GPU)
#     --extras LIST         the package's extras (default locked,score,oss; GPU nodes add gpu:
#                           vLLM 0.25.0 with torch 2.11.0)
#     --package SPEC        what to install (default promptscore; a wheel file works too)
#     --python PATH         the Python to build from, 3.10 or newer (default python3.11, else python3)
#     --system-site-packages  let the environment see the base Python's packages
#     --spark-env FILE      also add "export PYSPARK_PYTHON=..." to that spark-env.sh
#     --dry-run             say what would be done, do nothing
#
# Afterwards DIR/venv/bin/python runs the jobs: point Spark at it with
# spark.pyspark.python (DIR/spark-python.conf holds that line) or with --spark-env.
# DIR/app holds jobs/, conf/ and bootstrap/; DIR/bin/gpu-discovery.sh is Spark's GPU discovery
# script. Running it again with the same
# inputs does nothing. Logs go to stderr; any failure stops it with a non-zero exit code.
# EMR bootstrap action: after component startup (hadoop fs needs the installed components), failure
# policy Stop, on every node group, before stage-model.sh (docs/emr.md#bootstrap-actions).
set -euo pipefail

log() { echo "[promptscore install] $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }

prefix=/opt/promptscore
wheels=""
mode=auto
extras=""
package=promptscore
python=""
system_site=0
spark_env=""
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --wheels) wheels=${2:?--wheels needs a source}; shift 2 ;;
    --gpu) mode=gpu; shift ;;
    --cpu) mode=cpu; shift ;;
    --extras) extras=${2?--extras needs a list}; shift 2 ;;
    --package) package=${2:?--package needs a spec}; shift 2 ;;
    --python) python=${2:?--python needs a path}; shift 2 ;;
    --system-site-packages) system_site=1; shift ;;
    --spark-env) spark_env=${2:?--spark-env needs a file}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)

# The Python to build from.
if [ -z "$python" ]; then
  python=$(command -v python3.11 || command -v python3 || true)
fi
[ -n "$python" ] && [ -x "$(command -v "$python")" ] || \
  die "no python3 found: install Python 3.11 (Alibaba Cloud Linux 3: yum install -y python3.11) or pass --python"
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "cannot run $python"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
  die "$python is Python $version; the jobs need 3.10 or newer (yum install -y python3.11, or pass --python)"

# The node type.
if [ "$mode" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    mode=gpu
  else
    mode=cpu
  fi
fi
if [ -z "$extras" ]; then
  extras=locked,score,oss
  [ "$mode" = gpu ] && extras=$extras,gpu
fi
spec=$package
[ -n "$extras" ] && spec="${package}[${extras}]"

# Where the wheels come from.
pip_source=()
wheel_dir=""
if [ -n "$wheels" ]; then
  case "$wheels" in
    oss://*|http://*|https://*) wheel_dir=$prefix/wheels ;;
    *) wheel_dir=$wheels; [ -d "$wheel_dir" ] || die "--wheels $wheels is not a directory" ;;
  esac
  pip_source=(--no-index --find-links "$wheel_dir")
fi

venv=$prefix/venv
state_file=$prefix/install.state
plan="python=$python ($version) mode=$mode spec=$spec wheels=${wheels:-index} system_site=$system_site"
log "plan: $plan -> $venv"
if [ "$dry_run" = 1 ]; then
  echo "$plan"
  exit 0
fi

mkdir -p "$prefix/bin"
case "$wheels" in
  oss://*)
    # ossutil first; it may be installed but not configured (no AccessKey, no RAM role setting), so
    # when it fails, hadoop fs (JindoSDK with the node's RAM role; needs the installed components,
    # hence the bootstrap action's "after component startup") copies instead.
    mkdir -p "$wheel_dir"
    copied=0
    tried=""
    ossutil=$(command -v ossutil || command -v ossutil64 || true)
    if [ -n "$ossutil" ]; then
      log "copying $wheels with $ossutil"
      if "$ossutil" cp -r -f -u "$wheels" "$wheel_dir/" >&2; then
        copied=1
      else
        tried="ossutil failed (not configured on this node?)"
        log "$tried; trying hadoop fs"
      fi
    fi
    if [ "$copied" = 0 ] && command -v hadoop >/dev/null 2>&1; then
      log "copying $wheels with hadoop fs"
      if hadoop fs -copyToLocal -f "${wheels%/}/*" "$wheel_dir/"; then
        copied=1
      else
        tried="${tried:+$tried, }hadoop fs failed"
      fi
    fi
    [ "$copied" = 1 ] || die "--wheels $wheels: could not copy it (${tried:-no ossutil or hadoop on this node}); \
configure ossutil, run this after component startup so that hadoop fs works, or copy the directory first" ;;
  http://*|https://*)
    mkdir -p "$wheel_dir"
    log "downloading $wheels"
    curl -fsSL "$wheels" | tar -xz -C "$wheel_dir" || die "could not download and unpack $wheels"
    # a tarball of a directory: use the directory that holds the wheels
    found=$(find "$wheel_dir" -name '*.whl' -print -quit)
    [ -n "$found" ] || die "$wheels holds no .whl files"
    wheel_dir=$(dirname "$found"); pip_source=(--no-index --find-links "$wheel_dir") ;;
esac

# Same inputs as last time: nothing to do.
fingerprint=$plan
if [ -n "$wheel_dir" ]; then
  fingerprint="$fingerprint $(find "$wheel_dir" -maxdepth 1 -name '*.whl' -printf '%f %s\n' | sort | cksum)"
fi
if [ -f "$state_file" ] && [ "$(cat "$state_file")" = "$fingerprint" ] && [ -x "$venv/bin/python" ]; then
  log "already installed with the same inputs; nothing to do"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  venv_args=()
  [ "$system_site" = 1 ] && venv_args+=(--system-site-packages)
  log "creating $venv"
  "$python" -m venv "${venv_args[@]}" "$venv" || die "could not create a virtualenv with $python (python3-venv missing?)"
fi
log "installing $spec"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q "${pip_source[@]}" "$spec" >&2 || \
  die "pip could not install $spec${wheel_dir:+ from $wheel_dir}"

check='import promptscore, udfs, pyarrow, pandas; print("promptscore", promptscore.__version__, "pyarrow", pyarrow.__version__, "pandas", pandas.__version__)'
case ",$extras," in
  *,gpu,*) check="$check; import torch, vllm; print(\"torch\", torch.__version__, \"vllm\", vllm.__version__)" ;;
esac
"$venv/bin/python" -c "$check" >&2 || die "the environment does not import what the jobs need"

# jobs/, conf/ and bootstrap/ came with the wheel: DIR/app/jobs/convert.py, DIR/app/conf/...
ln -sfn "$venv/share/promptscore" "$prefix/app"
install -m 0755 "$venv/share/promptscore/bootstrap/gpu-discovery.sh" "$prefix/bin/gpu-discovery.sh" 2>/dev/null || \
  install -m 0755 "$here/gpu-discovery.sh" "$prefix/bin/gpu-discovery.sh"
echo "spark.pyspark.python $venv/bin/python" > "$prefix/spark-python.conf"
if [ -n "$spark_env" ]; then
  line="export PYSPARK_PYTHON=$venv/bin/python"
  touch "$spark_env"
  grep -qxF "$line" "$spark_env" || { echo "$line" >> "$spark_env"; log "added PYSPARK_PYTHON to $spark_env"; }
fi
echo "$fingerprint" > "$state_file"
log "done: $venv/bin/python ($mode node); Spark: spark.pyspark.python $venv/bin/python"
