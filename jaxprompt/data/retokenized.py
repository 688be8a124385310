"""A registered task read with the model's own vocabulary: `retokenized(provider, vocabulary, inputs_eos)`.

GLUE / SuperGLUE (and any seqio task registered elsewhere) are tokenized with T5's vocabulary. A causal LM reads
them with its own tokenizer (VOCABULARY, which its models/*.gin gives `jaxprompt.ModelSource.vocabulary`): the
same source, preprocessors, postprocessing and metrics under the same name, only the output features' vocabulary
changed, and the inputs' EOS as the model family wants it (`converters.Family.inputs_eos`: a causal stream runs on
from the inputs into the targets, so it has none). The copy is made once per task, vocabulary and inputs EOS and is
not registered: seqio's registry keeps the original, and what looks a task up by name (label sets, a file task's
data) finds the same name. A mixture becomes a mixture of its tasks' copies at the same rates.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import seqio

# (name, vocabulary, inputs EOS) -> (the provider copied, its copy): a provider registered again is copied again.
_COPIES: dict[tuple[str, Any, bool], tuple[Any, Any]] = {}


def _fits(features: Mapping[str, seqio.Feature], vocabulary: Any, inputs_eos: bool) -> bool:
  """Whether a task's features already tokenize with `vocabulary` and end their inputs as wanted."""
  inputs = features.get('inputs')
  return all(f.vocabulary == vocabulary for f in features.values()) and (inputs is None or inputs.add_eos == inputs_eos)


def _features(features: Mapping[str, seqio.Feature], vocabulary: Any, inputs_eos: bool) -> dict[str, seqio.Feature]:
  return {
      name: dataclasses.replace(f, vocabulary=vocabulary, add_eos=inputs_eos if name == 'inputs' else f.add_eos)
      for name, f in features.items()
  }


def retokenized(provider: seqio.Task | seqio.Mixture, vocabulary: Any,
                inputs_eos: bool = True) -> seqio.Task | seqio.Mixture:
  """`provider` as it is when it already reads with `vocabulary` (and `inputs_eos`), else its copy that does."""
  if _fits(provider.output_features, vocabulary, inputs_eos):
    return provider
  key = (provider.name, vocabulary, inputs_eos)
  source, copy = _COPIES.get(key, (None, None))
  if source is not provider:
    if isinstance(provider, seqio.Mixture):
      copy = seqio.Mixture(provider.name,
                           [(retokenized(t, vocabulary, inputs_eos), provider.get_rate(t)) for t in provider.tasks])
    else:
      copy = provider.replace(output_features=_features(provider.output_features, vocabulary, inputs_eos))
    _COPIES[key] = (provider, copy)
  return copy
