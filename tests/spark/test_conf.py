"""Every Spark profile in conf/ parses, holds no secrets, and applies on top of spark-defaults.conf."""

from __future__ import annotations

import json
import re
import sys

import pytest
from conftest import ROOT

from promptscore.tools.submit import conf_args, read_profile

CONFS = sorted((ROOT / "conf").glob("*.conf"))
SECRET = re.compile(r"(secret|password|accesskey|access\.key|token)", re.I)
PRINT_CONF = ("import json\nfrom pyspark.sql import SparkSession\n"
              "s = SparkSession.builder.getOrCreate()\n"
              "print('CONF' + json.dumps(dict(s.sparkContext.getConf().getAll())))\n"
              "s.stop()\n")
# What cannot hold on this machine: the cluster manager, the nodes' Python, Maven downloads.
LOCAL = {"spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
         "spark.jars.packages": ""}


def loaded_conf(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(next(line[4:] for line in proc.stdout.splitlines() if line.startswith("CONF")))


@pytest.fixture
def cluster_defaults(tmp_path):
    """A SPARK_CONF_DIR like a cluster's: spark-defaults.conf sets what the profiles do not."""
    conf_dir = tmp_path / "spark-conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        f"spark.eventLog.dir                   file:{tmp_path}/spark-events\n"
        "spark.sql.parquet.compression.codec  snappy\n")
    script = tmp_path / "print_conf.py"
    script.write_text(PRINT_CONF)
    return {"SPARK_CONF_DIR": str(conf_dir)}, script


@pytest.mark.parametrize("conf", CONFS, ids=lambda p: p.name)
def test_conf_parses_and_holds_no_secrets(conf):
    props = read_profile(conf)  # refuses keys that are not spark.*
    assert props, "empty profile"
    assert not [k for k in props if SECRET.search(k) and "provider" not in k]


def submit_properties(spark, args: list, env: dict) -> dict:
    """The Spark properties spark-submit would run with, from Spark's own argument parser
    (``SparkSubmitArguments``, which also reads ``$SPARK_CONF_DIR/spark-defaults.conf``), run in
    the test session's JVM instead of a new one."""
    jvm = spark.sparkContext._jvm
    utils = jvm.org.apache.spark.api.python.PythonUtils
    parsed = jvm.org.apache.spark.deploy.SparkSubmitArguments(
        utils.toSeq(jvm.java.util.ArrayList([str(a) for a in args])), utils.toScalaMap(env))
    found = parsed.sparkProperties()
    props = {str(k): str(found.apply(k)) for k in jvm.scala.collection.JavaConverters.setAsJavaSet(found.keySet())}
    props["spark.master"] = parsed.master()
    return props


@pytest.mark.parametrize("conf", CONFS, ids=lambda p: p.name)
def test_profile_applies_on_top_of_spark_defaults(spark, conf, cluster_defaults, tmp_path):
    env, script = cluster_defaults
    props = read_profile(conf)
    loaded = submit_properties(spark, ["--master", "local[1]", *conf_args(conf, LOCAL), script], env)
    for key, value in props.items():
        if key in LOCAL or key == "spark.master":
            continue
        assert loaded.get(key) == value, key
    assert loaded["spark.master"] == "local[1]"
    # The cluster's own settings stay in effect...
    assert loaded["spark.eventLog.dir"] == f"file:{tmp_path}/spark-events"
    # ...and the profile wins where both set a key.
    if "spark.sql.parquet.compression.codec" in props:
        assert loaded["spark.sql.parquet.compression.codec"] == props["spark.sql.parquet.compression.codec"]
    else:
        assert loaded["spark.sql.parquet.compression.codec"] == "snappy"


def test_properties_file_would_drop_spark_defaults(spark, cluster_defaults):
    """Why profiles go in as --conf pairs: Spark 3.5 reads a --properties-file instead of
    spark-defaults.conf, so the cluster's settings vanish."""
    env, script = cluster_defaults
    loaded = submit_properties(spark, ["--master", "local[1]", "--properties-file", ROOT / "conf" / "local.conf",
                                       script], env)
    assert loaded["spark.sql.files.openCostInBytes"] == "8k"
    assert "spark.eventLog.dir" not in loaded
