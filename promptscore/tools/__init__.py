"""Commands around the jobs, run by people and bootstrap actions, never by executors: ``submit``
(spark-submit or EMR Serverless from a profile), ``show`` (a report), ``sample_data`` and
``tiny_model`` (the demo's input and model), ``stage_model`` (a model onto a node, with
``oss_source`` and ``ecs_metadata``)."""
