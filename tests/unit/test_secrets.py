"""No job takes an AccessKey as an argument, and none writes one it reads from the environment to
an output, report, marker, cache or log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


@pytest.mark.parametrize("job", ["convert", "score", "submit", "stage_model"])
def test_no_flag_takes_a_credential(job):
    if job in ("convert", "score"):
        from promptscore.convert.options import convert_parser
        from promptscore.score.options import score_parser

        parser = convert_parser() if job == "convert" else score_parser()
        flags = [opt for action in parser._actions for opt in action.option_strings]
    else:
        text = (Path(__file__).parents[2] / "promptscore" / "tools" / f"{job}.py").read_text()
        flags = re.findall(r'add_argument\(\s*"(--[\w-]+)"', text)
    assert flags
    credential = r"access.?key|key.?id|secret|password|credential|(session|security|sts).?token|^--(ak|sk)$"
    assert not [f for f in flags if re.search(credential, f, re.I)]
