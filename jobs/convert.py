"""spark-submit jobs/convert.py --input URI --output URI [options]

Many small JSONL files -> a few large Parquet files. See README.md, or run with --help.
"""

import sys

from promptscore import cli
from promptscore.convert import options, run


def main(argv=None) -> int:
    return cli.run("convert", options.convert_parser(), run.job, argv)


if __name__ == "__main__":
    sys.exit(main())
