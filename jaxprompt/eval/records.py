"""What a prediction record says about its score: each field named for what it is.

  prediction_by     log-likelihood / score field    what the number is
  rank_classification  log_likelihood               log p(label tokens + EOS | input): summed over the tokens,
                                                    the highest among the labels
  beam_search          beam_score                   t5x's beam score: the decode's summed log-probability
                                                    divided by the brevity penalty ((5 + length) / 6) ** alpha
  sampling             sample_log_prob              the sample's summed log-probability under the sampling
                                                    distribution (temperature / top-k / top-p applied)
  head                 probability                  an encoder-only model's task head: the softmax probability of
                                                    the predicted class or choice (a regression value or a tagged
                                                    sentence's tags have no score field)

Every record also keeps `score`, the same number under its old name, for readers written before the fields had
names; an ensemble's `scores` {prompt: number} likewise sits beside `log_likelihoods` / `beam_scores` /
`sample_log_probs`.
"""
from __future__ import annotations

from typing import Any

RANKED, HEAD = 'rank_classification', 'head'
# prediction_by -> the name of its score field
SCORE_FIELDS = {
    RANKED: 'log_likelihood', 'beam_search': 'beam_score', 'sampling': 'sample_log_prob', HEAD: 'probability'
}
_BY_DECODING = {'beam': 'beam_search', 'sample': 'sampling'}


def prediction_by(ranked: bool, decode_method: str) -> str:
  """How a prediction was made: rank classification over labels, else the decoding method's name."""
  return RANKED if ranked else _BY_DECODING[decode_method]


def score_fields(value: float, by: str) -> dict[str, Any]:
  """A record's fields for a prediction made `by` (`prediction_by`) with score `value`."""
  return {'prediction_by': by, SCORE_FIELDS[by]: float(value), 'score': float(value)}


def ensemble_score_fields(values: dict[str, float], by: str) -> dict[str, Any]:
  """An ensemble record's per-prompt scores {name: value}, named as `score_fields` names one."""
  values = {k: float(v) for k, v in values.items()}
  return {'prediction_by': by, SCORE_FIELDS[by] + 's': values, 'scores': values}
