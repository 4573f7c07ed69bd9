"""The scorer that runs on Spark's executors: the reward-model pandas UDF and what it needs.

The executor-side library: the driver's package (``promptscore``) imports it, never the other way.
"""
