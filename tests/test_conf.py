"""Every Spark properties file in conf/ parses, holds no secrets, and loads into a SparkSession."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from test_spark_submit import spark_submit

CONFS = sorted((ROOT / "conf").glob("*.conf"))
SECRET = re.compile(r"(secret|password|accesskey|access\.key|token)", re.I)


def parse_properties(path: Path) -> dict[str, str]:
    """Spark's properties-file format: ``key value`` or ``key=value``; ``#`` starts a comment line."""
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, _, value = re.split(r"(\s*[=:\s]\s*)", line, maxsplit=1)
        props[key] = value.strip()
    return props


@pytest.mark.parametrize("conf", CONFS, ids=lambda p: p.name)
def test_conf_parses_and_holds_no_secrets(conf):
    props = parse_properties(conf)
    assert props, "empty profile"
    assert all(k.startswith("spark.") for k in props), [k for k in props if not k.startswith("spark.")]
    assert not [k for k in props if SECRET.search(k) and "provider" not in k]


@pytest.mark.parametrize("conf", CONFS, ids=lambda p: p.name)
def test_conf_loads_into_a_local_session(conf, tmp_path):
    props = parse_properties(conf)
    # What cannot hold on this machine: the cluster manager, the nodes' Python, Maven downloads.
    local = {"spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
             "spark.jars.packages": ""}
    script = tmp_path / "print_conf.py"
    script.write_text("import json, sys\nfrom pyspark.sql import SparkSession\n"
                      "s = SparkSession.builder.getOrCreate()\n"
                      "print('CONF' + json.dumps(dict(s.sparkContext.getConf().getAll())))\n"
                      "s.stop()\n")
    args = ["--master", "local[1]", "--properties-file", conf]
    for k, v in local.items():
        args += ["--conf", f"{k}={v}"]
    proc = spark_submit([*args, script], timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(next(line[4:] for line in proc.stdout.splitlines() if line.startswith("CONF")))
    for key, value in props.items():
        if key in local or key == "spark.master":
            continue
        assert loaded.get(key) == value, key
    assert loaded["spark.master"] == "local[1]"
