"""The batches and FLOP counts of `bench/real_lengths.py`: the same sampled examples as fixed-length, bucketed,
packed and PEFT-collated batches, their useful tokens, and matmul FLOPs per batch shape."""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from bench import lengths as lengths_lib
from bench import prompt_step
from jaxprompt.data import pipeline
from jaxprompt.models.config import T5Config

PROMPT = 100
BATCH = 32
INPUTS = 512  # the reference's TASK_FEATURE_LENGTHS['inputs']
TARGETS = 8  # ... and ['targets']: the longest label here is 4 pieces with EOS ("False")
# Packed rows hold several examples, so their targets need room for several labels: with 8, SST-2 rows would
# stop at 4 examples (2 target tokens each) although 5-6 fit the inputs. The bench reports both densities.
PACK_TARGETS = 32
# dataset -> (train shape, rank-classification shape): SST-2 trains on phrases and is scored on sentences.
DATASETS = {'sst2': ('sst2_train', 'sst2_validation'), 'boolq': ('boolq', 'boolq')}
TRAIN_VARIANTS = ('fixed512', 'buckets64', 'buckets16', 'packed64', 'peft')
RANK_VARIANTS = ('rank_buckets64', 'rank_fixed512', 'rank_peft')
DEFAULT_VARIANTS = ('fixed512', 'buckets64', 'buckets16', 'packed64', 'peft', 'rank_buckets64', 'rank_peft')
# Unpacked train steps per pass and rank-classification batches per pass: (default, --quick). BoolQ steps are
# 3-6x longer than SST-2's, so it gets fewer.
BATCHES = {'sst2': (4, 1), 'boolq': (2, 1)}
RANK_BATCHES = {'sst2': (4, 1), 'boolq': (2, 1)}
TARGETS_TO_MEET = {'sst2_vs_fixed': 4.0, 'sst2_vs_peft': 1.2, 'boolq_vs_peft': 1.5, 'rank_vs_peft': 1.5}
LABELS = {
    'fixed512': 'fixed 512 (+100 prompt), targets 8', 'buckets64': 'buckets, step 64', 'buckets16': 'buckets, step 16',
    'packed64': 'packed (prompt per example) + buckets 64', 'peft': 'HF PEFT, DataCollatorForSeq2Seq',
    'rank_buckets64': 'ours rank_classify, buckets 64', 'rank_fixed512': 'ours rank_classify, fixed 512',
    'rank_peft': 'HF PEFT, one forward per label'
}


def buckets_module():
  """`jaxprompt.data.buckets` (imported late so the PEFT side and the distributions run without it)."""
  from jaxprompt.data import buckets  # pylint: disable=import-outside-toplevel
  return buckets


# --------------------------------------------------------------------------------------------------------------
# Batches.
# --------------------------------------------------------------------------------------------------------------
def examples_dataset(examples: list[dict[str, np.ndarray]]) -> tf.data.Dataset:
  spec = {'inputs': tf.TensorSpec([None], tf.int32), 'targets': tf.TensorSpec([None], tf.int32)}
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=spec)


def unpacked_batches(examples: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
  """seqio features of every 32 examples, padded to the reference lengths (inputs 512, targets 8)."""
  ds = pipeline.convert_features(examples_dataset(examples), {'inputs': INPUTS, 'targets': TARGETS})
  return [pipeline.as_float_weights(b) for b in ds.batch(BATCH, drop_remainder=True).as_numpy_iterator()]


def packed_batches(examples: list[dict[str, np.ndarray]], targets: int, min_examples: int,
                   max_batches: int = 1000) -> list[dict[str, np.ndarray]]:
  """Packed batches of 32 rows (inputs 512 + 100 prompt slots) over the examples, repeated, until they hold at
  least `min_examples` examples: the same examples as the unpacked variants, about once."""
  ds = pipeline.convert_features(
      examples_dataset(examples).repeat(), {'inputs': INPUTS, 'targets': targets}, pack=True, prompt_slots=PROMPT)
  out, held = [], 0
  for batch in ds.batch(BATCH, drop_remainder=True).as_numpy_iterator():
    out.append(pipeline.as_float_weights(batch))
    held += examples_in(out[-1])
    if held >= min_examples or len(out) >= max_batches:
      break
  return out


def examples_in(batch: dict[str, np.ndarray]) -> int:
  if 'encoder_segment_ids' in batch:
    return int(np.asarray(batch['encoder_segment_ids']).max(axis=1).sum())
  return int(np.any(batch['encoder_input_tokens'] != 0, axis=1).sum())


def useful_tokens(batch: dict[str, np.ndarray]) -> tuple[int, int]:
  """(non-padding input tokens, non-padding target tokens); the prompt slots of packed rows are not counted."""
  inputs = int(np.count_nonzero(batch['encoder_input_tokens']))
  if 'encoder_segment_ids' in batch:
    inputs -= PROMPT * examples_in(batch)
  return inputs, int(np.count_nonzero(batch['decoder_target_tokens']))


def shape_key(batch: dict[str, Any]) -> tuple:
  return tuple(sorted((k, tuple(np.shape(v))) for k, v in batch.items()))


# --------------------------------------------------------------------------------------------------------------
# FLOPs (matmuls only; `prompt_step.matmul_flops` for a train step, the same rules split for scoring).
# --------------------------------------------------------------------------------------------------------------
def encoder_width(batch: dict[str, np.ndarray]) -> int:
  """Encoder positions per row: packed rows already hold the prompt slots, unpacked rows get 100 more."""
  width = batch['encoder_input_tokens'].shape[1]
  return width if 'encoder_segment_ids' in batch else width + PROMPT


def train_flops(cfg: T5Config, rows: int, enc: int, dec: int) -> float:
  """Forward + prompt backward model FLOPs of one train step over [rows, enc] encoder (prompt included) and
  [rows, dec] decoder positions."""
  f = prompt_step.matmul_flops(cfg, prompt_step.Shape(batch=rows, inputs=enc - PROMPT, targets=dec, prompt=PROMPT))
  return float(f['forward'] + f['prompt_backward'])


def forward_parts(cfg: T5Config, rows: int, enc: int, dec_rows: int, dec: int) -> dict[str, float]:
  """Forward matmul FLOPs: the encoder over [rows, enc]; the decoder over [dec_rows, dec] (dec_rows = rows x
  candidates), its cross-attention keys/values projected once per encoder row (as `rank_classify` does since
  e9597cc); the logits."""
  mm = lambda m, k, n: 2.0 * m * k * n
  e, inner, f, v = cfg.emb_dim, cfg.num_heads * cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  h, hd, na = cfg.num_heads, cfg.head_dim, len(cfg.mlp_activations)
  te, td = rows * enc, dec_rows * dec
  encoder = cfg.num_encoder_layers * (4 * mm(te, e, inner) + 2 * mm(rows * h * enc, hd, enc) + na * mm(te, e, f) +
                                      mm(te, f, e))
  cross_kv = cfg.num_decoder_layers * 2 * mm(rows * enc, e, inner)
  decoder = cfg.num_decoder_layers * (6 * mm(td, e, inner) + 2 * mm(dec_rows * h * dec, hd, dec) +
                                      2 * mm(dec_rows * h * dec, hd, enc) + na * mm(td, e, f) + mm(td, f, e))
  return {'encoder': encoder, 'cross_kv': cross_kv, 'decoder': decoder + mm(td, e, v)}


def peft_features(examples: list[dict[str, np.ndarray]], labels: bool = True) -> list[dict[str, list[int]]]:
  out = []
  for ex in examples:
    ids = ex['inputs'].tolist()
    row = {'input_ids': ids, 'attention_mask': [1] * len(ids)}
    if labels:
      row['labels'] = ex['targets'].tolist()
    out.append(row)
  return out


def hf_padder():
  """A tokenizer for `DataCollatorForSeq2Seq` to pad with (id 0, right side). Built from the shipped
  SentencePiece file; only its `pad` is used, the ids come from `bench/lengths.py`."""
  from transformers import T5Tokenizer  # pylint: disable=import-outside-toplevel
  return T5Tokenizer(vocab_file=lengths_lib.VOCAB_FILE)


def collate(collator, examples: list[dict[str, np.ndarray]], labels: bool = True) -> list[dict]:
  feats = peft_features(examples, labels)
  return [dict(collator(feats[i:i + BATCH])) for i in range(0, len(feats) - BATCH + 1, BATCH)]
