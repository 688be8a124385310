"""The Hugging Face twin of a jaxprompt T5 config that the PEFT baselines run: a random-weight
`T5ForConditionalGeneration` built from the config.json jaxprompt itself writes (`checkpoints.hf_writer`)."""
from __future__ import annotations

from jaxprompt.checkpoints.hf_writer import hf_config
from jaxprompt.models.config import T5Config


def random_hf_t5(cfg: T5Config, seed: int = 0):
  """A random `T5ForConditionalGeneration` with `cfg`'s shapes, float32, head untied when `cfg` unties it."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  values = hf_config(cfg, 'float32')
  values.pop('dtype')
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**values))
  if not values['tie_word_embeddings']:
    # transformers 5 ties lm_head when it builds a T5, whatever the config says (ENV-NOTES): untie as T5 1.1 is.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
  return model
