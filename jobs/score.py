"""spark-submit jobs/score.py --input URI --output URI --model PATH|URI [options]

A reward-model score for every row of a Parquet dataset. See README.md, or run with --help.
"""

import sys

from promptscore import cli, score


def main(argv=None) -> int:
    return cli.run("score", score.build_parser(), score.job, argv)


if __name__ == "__main__":
    sys.exit(main())
