"""Is a trained prompt meant for the frozen model it is about to run on? `eval`, `infer` and `inspect` ask here.

A prompt source (any `--prompt_file` kind, a PEFT folder, a training MODEL_DIR or step dir) records the
fingerprint of the model it was trained on (`jaxprompt.models.fingerprint`, read by
`prompt_files.recorded_fingerprint`); the loaded model's own is computed from its config, vocabulary and token
embedding. Another model is refused unless the caller allows a deliberate transfer; a source with no record
loads with a warning.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from jaxprompt.commands.prompt_files import recorded_fingerprint
from jaxprompt.errors import ConfigError
from jaxprompt.models import fingerprint as fingerprint_lib
from jaxprompt.models.base import ModelConfig


def token_embedding(frozen_params: Mapping[str, Any], where: str = 'frozen_params') -> Any:
  """The [vocab, embed] token embedding of a T5X-named parameter tree (numpy or jax, possibly sharded)."""
  try:
    return frozen_params['token_embedder']['embedding']
  except (KeyError, TypeError) as e:
    keys = sorted(frozen_params)[:6] if isinstance(frozen_params, Mapping) else type(frozen_params).__name__
    raise ConfigError(f"{where} has no token_embedder/embedding (the frozen T5's parameters are needed to "
                      f'identify the model; got {keys})') from e


def check_prompt_source(source: str | os.PathLike, step: int | None, config: ModelConfig, vocabulary: Any,
                        frozen_params: Mapping[str, Any], *, allow_other_model: bool = False) -> bool | None:
  """Refuses (PromptError naming both models) a prompt `source` recorded for another frozen model than the one
  given by `config`, `vocabulary` (seqio) and `frozen_params` (its loaded T5X tree), unless `allow_other_model`.

  `step` picks a checkpoint dir's step (None: the latest; ignored for files). Returns True when the models
  match, False when they differ and `allow_other_model` let it through (warned), None when `source` records
  no model (warned). Every process of a pod must call it: it gathers the embedding's first rows.
  """
  return check_prompt_sources({'': source}, step, config, vocabulary, frozen_params,
                              allow_other_model=allow_other_model)['']


def check_prompt_sources(sources: Mapping[str, str | os.PathLike], step: int | None, config: ModelConfig,
                         vocabulary: Any, frozen_params: Mapping[str, Any], *,
                         allow_other_model: bool = False) -> dict[str, bool | None]:
  """`check_prompt_source` for named sources (a prompt bank's, an ensemble's), the model's fingerprint
  computed once: {name: True / False / None}."""
  actual = fingerprint_lib.model_fingerprint(config, vocabulary, token_embedding(frozen_params))
  out = {}
  for name, source in sources.items():
    where = (f'prompt {name}={os.fspath(source)}'
             if name else f'prompt {os.fspath(source)}') + (f' (step {step})' if step is not None else '')
    out[name] = fingerprint_lib.check(recorded_fingerprint(source, step), actual, what=where,
                                      allow_other_model=allow_other_model)
  return out
