"""The score job: a reward-model score for every row of a Parquet dataset.

``run`` is the job; ``options`` what it takes; ``model`` the checks of the model and the input;
``plan`` what it settles first (with ``fingerprint``), ``write`` the chunks it scores and commits
(``pieces``), ``report`` what it says; ``dryrun`` (``--plan``, with ``estimate``) and ``compare``
(``--compare-sample``) are the two checks that write no output.
"""
