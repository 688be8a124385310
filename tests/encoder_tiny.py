"""A tiny BERT as one Hugging Face folder, for the encoder workflow tests: the `bert_test_tiny` network's random
weights (drawn by jaxprompt, written under transformers' BertModel names through `hf_encoder_names.encoder_plan`, no
torch needed), a config.json describing it and the lowercasing WordPiece tokenizer of `hf_tokenizers.bert_folder`
(fewer ids than the 256 rows). `models/hf_encoder.gin` with HF_MODEL_DIR = the folder runs it. `write_conll` writes
a tiny CoNLL tagging directory (tags O, B-LOC, B-PER) for the tagging workflow and the doc-command runs."""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import save_file

from jaxprompt.checkpoints import hf_encoder_names
from jaxprompt.models import families
from tests.hf_tokenizers import bert_folder

CONLL = {
    'train.txt': 'Anna\tB-PER\nvisits\tO\nParis\tB-LOC\n\nThe\tO\nfox\tO\nsees\tO\nBob\tB-PER\n\n' * 4,
    'dev.txt': 'Bob\tB-PER\nlikes\tO\nRome\tB-LOC\n'
}
VOCAB = 256
CONFIG = {
    'architectures': ['BertModel'], 'model_type': 'bert', 'vocab_size': VOCAB, 'hidden_size': 32,
    'intermediate_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4, 'max_position_embeddings': 64,
    'type_vocab_size': 2, 'layer_norm_eps': 1e-12, 'hidden_act': 'gelu', 'pad_token_id': 0
}


def tiny_bert_folder(folder: pathlib.Path) -> pathlib.Path:
  """Writes the tokenizer, config.json and model.safetensors (with a pooler) into `folder`; returns it."""
  bert_folder(folder)
  (folder / 'config.json').write_text(json.dumps(CONFIG))
  config, _ = hf_encoder_names.encoder_config(CONFIG, 'config.json', pooler=True)
  params = jax.jit(families.build_model(config).init_params)(jax.random.PRNGKey(0))
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, params), sep='/')
  tensors = {}
  for path, entry in hf_encoder_names.encoder_plan(config, '').items():
    value = np.asarray(flat[path], np.float32)
    tensors[entry.key] = np.ascontiguousarray(value.T if entry.transpose else value)
  save_file(tensors, str(folder / 'model.safetensors'))
  return folder


def write_conll(folder: pathlib.Path) -> pathlib.Path:
  """The CONLL split files in `folder` (made); returns it."""
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in CONLL.items():
    (folder / name).write_text(text)
  return folder
