"""Why a row got no score: the values of ``score_error`` (before any ``: detail``).

Defined once here; the UDF (``udfs.prompts``, ``udfs.reward``) writes them and the score job's
report (``promptscore.score``) counts them.
"""

from __future__ import annotations

NULL_TEXT = "null_text"
EMPTY_TEXT = "empty_text"  # empty or whitespace only
NULL_RESPONSE = "null_response"
NO_TOKENS = "no_tokens"  # the tokenizer gave no tokens
ENGINE_REJECTED = "engine_rejected"  # followed by ": <the engine's error>"
NON_FINITE = "non_finite_score"

REASONS: tuple[str, ...] = (NULL_TEXT, EMPTY_TEXT, NULL_RESPONSE, NO_TOKENS, ENGINE_REJECTED, NON_FINITE)
