"""The naive peer of the convert job: what one writes first. spark-submit bench/naive_convert.py IN OUT"""

import sys

from pyspark.sql import SparkSession

spark = SparkSession.builder.appName("naive-convert").getOrCreate()
spark.read.option("recursiveFileLookup", "true").json(sys.argv[1]).write.parquet(sys.argv[2])
spark.stop()
