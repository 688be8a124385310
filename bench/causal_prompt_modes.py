"""The modes `bench/causal_prompt_step.py` times: prompt tuning and rank classification on one small Llama-shaped
model (random weights, float32, built by transformers and read by jaxprompt), as jaxprompt with the prompt once per
batch, jaxprompt with the prompt in every row, and Hugging Face PEFT (torch, CPU).

Every mode sees the same examples: SST-2 validation-like inputs (`bench/lengths.py`, ~30 tokens, random ids) and
one of two labels of one token + EOS, as one causal stream per example (loss on the label tokens only). jaxprompt
pads each batch to a multiple of `Spec.bucket` tokens (its `LENGTH_BUCKETS=16`); PEFT to the batch's longest row.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import numpy as np

from bench import lengths as lengths_lib
from jaxprompt.checkpoints.hf_causal import load_hf_causal
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.base import LossConfig
from jaxprompt.models.decoder_only import DecoderOnlyModel
from jaxprompt.runtime import optim
from jaxprompt.runtime import step as step_lib
from jaxprompt.runtime.state import init_train_state

EOS = 2
LEARNING_RATE = 1e-3
Example = tuple[np.ndarray, int]  # (input ids, label index)


@dataclasses.dataclass(frozen=True)
class Spec:
  """The model (Llama layout: RMSNorm, rotary, SwiGLU, grouped-query attention, untied head) and the workload."""
  hidden: int = 512
  heads: int = 8
  kv_heads: int = 4
  mlp: int = 1408
  layers: int = 4
  vocab: int = 32000
  prompt: int = 100
  batch: int = 32
  train_batches: int = 6
  rank_batches: int = 6
  bucket: int = 16

  @property
  def label_ids(self) -> tuple[tuple[int, int], ...]:
    """Two labels of one token each, EOS-terminated."""
    return ((self.vocab // 3, EOS), (self.vocab // 2, EOS))


QUICK = Spec(hidden=64, heads=4, kv_heads=2, mlp=128, layers=2, vocab=1000, prompt=20, batch=4, train_batches=2,
             rank_batches=2)


def examples(spec: Spec, n: int, seed: int) -> list[Example]:
  """n SST-2 validation-like inputs (lengths from `bench/lengths.py`, random ids in [3, vocab)) with labels."""
  shape = lengths_lib.SHAPES['sst2_validation']
  sizes, labels = lengths_lib.sample_lengths(shape, n, seed, lengths_lib.calibrate())
  rng = np.random.default_rng(seed + 1)
  return [(rng.integers(3, spec.vocab, int(size)).astype(np.int32), int(label)) for size, label in zip(sizes, labels)]


def batches(spec: Spec, count: int, seed: int) -> list[list[Example]]:
  rows = examples(spec, count * spec.batch, seed)
  return [rows[i * spec.batch:(i + 1) * spec.batch] for i in range(count)]


def bucketed(width: int, bucket: int) -> int:
  return -(-width // bucket) * bucket


def stream(spec: Spec, example: Example) -> tuple[np.ndarray, int]:
  """(inputs + label ids, the label's token count)."""
  label = np.asarray(spec.label_ids[example[1]], np.int32)
  return np.concatenate([example[0], label]), len(label)


def real_tokens(spec: Spec, rows: Sequence[Example]) -> int:
  """The tokens of a training batch that every mode computes: each stream's inputs and label (prompt excluded)."""
  return sum(len(stream(spec, r)[0]) for r in rows)


# -- jaxprompt ------------------------------------------------------------------------------------------------------
def train_features(spec: Spec, rows: Sequence[Example]) -> dict[str, np.ndarray]:
  """The causal-LM features of a training batch, right-padded to its bucket; loss on the label tokens."""
  streams = [stream(spec, r) for r in rows]
  width = bucketed(max(len(s) - 1 for s, _ in streams), spec.bucket)
  out = {k: np.zeros((len(rows), width), np.int32) for k in ('decoder_input_tokens', 'decoder_target_tokens')}
  out['decoder_input_mask'] = np.zeros((len(rows), width), np.int32)
  out['decoder_loss_weights'] = np.zeros((len(rows), width), np.float32)
  for i, (ids, label) in enumerate(streams):
    n = len(ids) - 1
    out['decoder_input_tokens'][i, :n], out['decoder_target_tokens'][i, :n] = ids[:-1], ids[1:]
    out['decoder_input_mask'][i, :n] = 1
    out['decoder_loss_weights'][i, n - label:n] = 1.0
  return out


def rank_features(spec: Spec, rows: Sequence[Example]) -> dict[str, np.ndarray]:
  """The inputs alone, right-padded to their bucket (what `rank_classify` reads)."""
  width = bucketed(max(len(x) for x, _ in rows), spec.bucket)
  tokens, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.int32)
  for i, (x, _) in enumerate(rows):
    tokens[i, :len(x)], mask[i, :len(x)] = x, 1
  return {'decoder_input_tokens': tokens, 'decoder_input_mask': mask}


@dataclasses.dataclass
class Ours:
  """One jaxprompt model (prompt once, or in every row) with its compiled steps, one per batch shape."""
  model: DecoderOnlyModel
  frozen: dict
  prompt: dict
  optimizer: optim.Optimizer = dataclasses.field(
      default_factory=lambda: optim.make_optimizer(optim.adam, learning_rate=LEARNING_RATE))
  compiled: dict = dataclasses.field(default_factory=dict)
  flops: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.state = init_train_state(self.prompt, self.optimizer.tx, jax.random.PRNGKey(1))

  def _call(self, kind: str, *args):
    """Runs step `kind` on `args`, compiling it once per shape of its batch arguments (those after two)."""
    key = (kind,) + tuple(np.shape(a) for a in jax.tree.leaves(args[2:]))
    if key not in self.compiled:
      fn = {
          'train': functools.partial(step_lib.train_step, self.model, self.optimizer),
          'loss': lambda f, p, b: self.model.loss_fn(f, p, b)[0], 'rank': self.model.rank_classify
      }[kind]
      self.compiled[key] = jax.jit(fn).lower(*args).compile()
      analysis = self.compiled[key].cost_analysis()
      self.flops[key] = float((analysis[0] if isinstance(analysis, (list, tuple)) else analysis).get('flops', np.nan))
    return self.compiled[key](*args)

  def train(self, batch: dict) -> float:
    self.state, metrics = self._call('train', self.state, self.frozen, batch)
    return float(metrics['loss'])

  def loss(self, batch: dict) -> float:
    return float(self._call('loss', self.frozen, self.prompt, batch))

  def rank(self, inputs: dict, candidates: np.ndarray) -> np.ndarray:
    return np.asarray(self._call('rank', self.frozen, self.prompt, inputs, candidates))


def ours(spec: Spec, folder: str, prompt: np.ndarray) -> dict[str, Ours]:
  """{'once', 'naive'}: jaxprompt over the saved model, PEFT's loss (mean over label tokens, no z-loss)."""
  frozen, config = load_hf_causal(folder)
  method = PromptTuning(length=spec.prompt, embed_dim=config.emb_dim, eos_id=EOS)
  loss = LossConfig(z_loss=0.0, reduction='mean')
  return {
      name: Ours(DecoderOnlyModel(config, method, loss=loss, eos_id=EOS, prompt_once=once), frozen,
                 {'prompt': jax.numpy.asarray(prompt)}) for name, once in (('once', True), ('naive', False))
  }


# -- Hugging Face PEFT ----------------------------------------------------------------------------------------------
def hf_llama(spec: Spec, folder: str):
  """A random LlamaForCausalLM of `spec` (torch seed 0), saved to `folder` as safetensors."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  config = transformers.LlamaConfig(vocab_size=spec.vocab, hidden_size=spec.hidden, intermediate_size=spec.mlp,
                                    num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                                    num_key_value_heads=spec.kv_heads, max_position_embeddings=2048, rms_norm_eps=1e-5,
                                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOS, pad_token_id=0)
  model = transformers.LlamaForCausalLM(config)
  model.save_pretrained(folder, safe_serialization=True)
  return model


class Peft:
  """PEFT CAUSAL_LM prompt tuning over the torch model, run with `threads` torch threads per call."""

  def __init__(self, spec: Spec, base, prompt: np.ndarray):
    import torch  # pylint: disable=import-outside-toplevel
    from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model  # pylint: disable=import-outside-toplevel
    self.spec, self.torch = spec, torch
    self.model = get_peft_model(
        base,
        PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=spec.prompt,
                           prompt_tuning_init=PromptTuningInit.RANDOM))
    self.prompt = prompt
    self.reset()
    self.model.train()  # Llama has no dropout: train mode changes no result
    self.opt = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=LEARNING_RATE)

  def reset(self) -> None:
    """Puts the initial prompt back (rank classification scores with the prompt jaxprompt's modes score with)."""
    with self.torch.no_grad():
      self.model.prompt_encoder['default'].embedding.weight.copy_(self.torch.from_numpy(self.prompt))

  def _padded(self, rows: Sequence[Example], label: int | None = None) -> dict:
    """input_ids / attention_mask padded to the batch's longest stream, labels -100 but on the label tokens;
    each row's own label, or `label` for every row."""
    streams = [stream(self.spec, (x, y if label is None else label)) for x, y in rows]
    width = max(len(s) for s, _ in streams)
    ids, mask = np.zeros((len(rows), width), np.int64), np.zeros((len(rows), width), np.int64)
    labels = np.full((len(rows), width), -100, np.int64)
    for i, (s, n) in enumerate(streams):
      ids[i, :len(s)], mask[i, :len(s)] = s, 1
      labels[i, len(s) - n:len(s)] = s[len(s) - n:]
    t = self.torch.from_numpy
    return {'input_ids': t(ids), 'attention_mask': t(mask), 'labels': t(labels)}

  def train(self, rows: Sequence[Example], threads: int) -> float:
    self.torch.set_num_threads(threads)
    loss = self.model(**self._padded(rows)).loss
    loss.backward()
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return float(loss.detach())

  def loss(self, rows: Sequence[Example]) -> float:
    with self.torch.no_grad():
      return float(self.model(**self._padded(rows)).loss)

  def rank(self, rows: Sequence[Example], threads: int) -> np.ndarray:
    """[b, labels]: each label scored by one forward of inputs + label (its tokens' summed log-likelihood)."""
    self.torch.set_num_threads(threads)
    scores = []
    with self.torch.no_grad():
      for label in range(len(self.spec.label_ids)):
        batch = self._padded(rows, label)
        targets = batch.pop('labels')[:, 1:]
        logits = self.model(**batch).logits[:, self.spec.prompt:-1]  # PEFT returns the virtual tokens' logits too
        logp = self.torch.log_softmax(logits.float(), -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        scores.append((logp * (targets >= 0)).sum(-1).numpy())
    return np.stack(scores, axis=1)


def build(spec: Spec, folder: str, peft: bool = True) -> tuple[dict[str, Ours], Peft | None]:
  """(jaxprompt's modes {'once', 'naive'}, PEFT or None) over one saved model and one U(-0.5, 0.5) prompt."""
  base = hf_llama(spec, os.path.join(folder, 'model'))
  prompt = np.random.default_rng(0).uniform(-0.5, 0.5, (spec.prompt, spec.hidden)).astype(np.float32)
  return ours(spec, os.path.join(folder, 'model'), prompt), Peft(spec, base, prompt) if peft else None
