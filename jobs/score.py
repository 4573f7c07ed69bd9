"""spark-submit jobs/score.py --input URI --output URI --model PATH|URI [options]

A reward-model score for every row of a Parquet dataset. See README.md, or run with --help.
"""

import sys

from promptscore import cli
from promptscore.score import options, run


def main(argv=None) -> int:
    return cli.run("score", options.score_parser(), run.job, argv)


if __name__ == "__main__":
    sys.exit(main())
