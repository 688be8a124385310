"""A tiny causal LM as one Hugging Face folder, for the causal workflow tests and the doc-command runs: a random
Llama-style model (the config.json of `causal_helpers.ARCHS['llama']`: GQA, llama3 rope, q/k/v/o biases, 96 ids;
weights drawn by `causal_helpers.random_params` and written under their transformers names, no torch needed) and a
Llama-2-style tokenizer of fewer ids, trained on the tiny task's words and the instruction template (`<unk>` 0, `<s>`
1 put in front of every text, `</s>` 2). `models/hf_causal.gin` with HF_MODEL_DIR = the folder runs it."""
from __future__ import annotations

import json
import pathlib

import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from jaxprompt.checkpoints import hf_causal_names
from jaxprompt.data import instructions
from jaxprompt.models.decoder_config import rope_scaling_from
from tests import causal_helpers
from tests.tiny_task import _NEG, _NEUTRAL, _POS, LABELS

SPECIALS = ('<unk>', '<s>', '</s>')
ROPE = dict(rope_type='llama3', rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=64)
CONFIG = {
    'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'vocab_size': causal_helpers.VOCAB, 'hidden_size': 32,
    'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 8,
    'max_position_embeddings': 128, 'rms_norm_eps': 1e-6, 'rope_parameters': ROPE, 'attention_bias': True,
    'mlp_bias': False, 'hidden_act': 'silu', 'tie_word_embeddings': False, 'bos_token_id': 1, 'eos_token_id': 2
}
_WORDS = [*_POS, *_NEG, *_NEUTRAL, *LABELS, 'name', 'the', 'word', 'review', 'yes', 'no']


def _tokenizer() -> Tokenizer:
  tokenizer = Tokenizer(models.BPE(unk_token='<unk>'))
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement='▁', prepend_scheme='first')
  tokenizer.decoder = decoders.Metaspace(replacement='▁', prepend_scheme='first')
  corpus = [' '.join(_WORDS)] * 8 + [instructions.prompt('name the word', 'good movie') + 'positive'] * 4
  trainer = trainers.BpeTrainer(vocab_size=90, special_tokens=list(SPECIALS), show_progress=False)
  tokenizer.train_from_iterator(corpus, trainer)
  tokenizer.post_processor = processors.TemplateProcessing(single='<s> $A', pair='<s> $A <s> $B:1',
                                                           special_tokens=[('<s>', 1)])
  return tokenizer


def tiny_causal_folder(folder: pathlib.Path) -> pathlib.Path:
  """Writes the model (config.json, model.safetensors) and its tokenizer into `folder`; returns it."""
  folder.mkdir(parents=True, exist_ok=True)
  (folder / 'config.json').write_text(json.dumps(CONFIG))
  config, arch = hf_causal_names.decoder_config(CONFIG, 'config.json')
  assert config.rope_scaling == rope_scaling_from(ROPE, 'ROPE')
  params = traverse_util.flatten_dict(causal_helpers.random_params(config), sep='/')
  tensors = {}
  for path, entry in hf_causal_names.causal_plan(config, arch).items():
    value = np.asarray(params[path], np.float32)
    tensors[entry.key] = np.ascontiguousarray(value.T if entry.transpose else value)
  save_file(tensors, str(folder / 'model.safetensors'))
  tokenizer = _tokenizer()
  assert tokenizer.get_vocab_size() <= causal_helpers.VOCAB, tokenizer.get_vocab_size()
  tokenizer.save(str(folder / 'tokenizer.json'))
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': '<s>', 'eos_token': '</s>', 'unk_token': '<unk>'}
  (folder / 'tokenizer_config.json').write_text(json.dumps(config))
  return folder
