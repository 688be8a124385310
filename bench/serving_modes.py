"""The pieces of bench/serving.py: the request stream, the shared frozen model (jaxprompt and Hugging Face
twins), the prompts and PEFT adapters, and each serving mode as a plan of timed calls (mixed prompt bank,
split by task, PEFT grouped by adapter). bench/serving.py builds, times and reports them."""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `bench` as a package

import jax
import numpy as np

from bench import hf_twins
from bench import lengths as lengths_lib
from bench.length_batches import forward_parts
from jaxprompt.data.buckets import last_real_column
from jaxprompt.eval import banks
from jaxprompt.eval.evaluation import ModelFns
from jaxprompt.methods.base import Method
from jaxprompt.methods.prefix_tuning import PrefixTuning
from jaxprompt.methods.prompt_tuning import PromptTuning
from jaxprompt.models.config import T5Config
from jaxprompt.models.features import TASK_FEATURE
from jaxprompt.runtime import runtime as runtime_lib

REQUESTS, TASKS, BATCH = 512, 8, 32
PROMPT = 20
INPUTS, TARGETS = 512, 8  # bench/length_batches.py's feature lengths (the reference's SST-2 setup)
BUCKETS = 64  # ModelFns' default LENGTH_BUCKETS
INPUT_SHAPE = 'sst2_validation'  # bench/lengths.py: SST-2 sentences, mean ~30 tokens
LABEL_SETS = ('sst2_validation', 'boolq')  # task t: negative/positive (even t), False/True (odd t)
# The varied bank's input prompts (three lengths, so three one-prompt servers); its last task is a prefix.
VARIED_PROMPTS = (20, 100, 5, 20, 100, 5, 20)
VARIED_PREFIX = 10
# --quick: a tiny T5 1.1-shaped model (the real vocabulary, so the sampled ids and labels fit), 64 requests of
# 4 tasks in batches of 16, inputs cut to 64 tokens (one length bucket: few compiles).
QUICK_CONFIG = T5Config(vocab_size=32128, emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64, num_encoder_layers=2,
                        num_decoder_layers=2)
QUICK = {'requests': 64, 'tasks': 4, 'batch': 16, 'inputs': 64, 'reps': 1}
# The full run: t5_1_1_small's widths with LAYERS + LAYERS layers, so that every mode, PEFT's many small
# groups and the ~60 compiles fit in ~10 minutes on 2 shared cores (`--layers 8` is t5_1_1_small itself).
LAYERS = 4
LABELS = {
    'mixed': 'mixed: one PromptBank pass per batch', 'split32': 'split by task, groups padded to batch',
    'split_pow2': 'split by task, groups padded to 2^k', 'peft': 'PEFT, grouped by adapter',
    'peft_1t': 'PEFT, grouped by adapter, 1 torch thread'
}


# --------------------------------------------------------------------------------------------------------------
# The request stream.
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stream:
  """Requests in arrival order and every task's label candidates."""
  tokens: np.ndarray  # [n, inputs] ids, EOS-terminated, 0-padded
  tasks: np.ndarray  # [n] task id of each request
  candidates: np.ndarray  # [T, 2, TARGETS] each task's labels with EOS, 0-padded
  names: tuple[str, ...]  # task names by id
  batch: int

  @property
  def size(self) -> int:
    return len(self.tasks)

  def batches(self) -> list[np.ndarray]:
    """Request indices of each served batch, in arrival order."""
    return [np.arange(s, min(s + self.batch, self.size)) for s in range(0, self.size, self.batch)]

  def labels(self, task: int) -> list[np.ndarray]:
    """Task's label ids (with EOS), unpadded."""
    return [row[:last_real_column(row[None])] for row in self.candidates[task]]


def make_stream(cal: lengths_lib.Calibration, requests: int = REQUESTS, tasks: int = TASKS, batch: int = BATCH,
                inputs: int = INPUTS, seed: int = 0) -> Stream:
  """SST-2-sentence-shaped inputs (bench/lengths.py), each request's task drawn uniformly at random."""
  examples = lengths_lib.synthesize(lengths_lib.SHAPES[INPUT_SHAPE], requests, seed, cal, inputs)
  tokens = np.zeros((requests, inputs), np.int32)
  for i, ex in enumerate(examples):
    tokens[i, :len(ex['inputs'])] = ex['inputs']
  order = np.random.default_rng(seed + 1000).integers(0, tasks, requests).astype(np.int32)
  candidates = np.zeros((tasks, 2, TARGETS), np.int32)
  for t in range(tasks):
    for j, ids in enumerate(cal.label_ids[LABEL_SETS[t % len(LABEL_SETS)]]):
      candidates[t, j, :len(ids)] = ids
  return Stream(tokens, order, candidates, tuple(f'task{t}' for t in range(tasks)), batch)


# --------------------------------------------------------------------------------------------------------------
# One frozen model, the tasks' prompts, and the servers over them.
# --------------------------------------------------------------------------------------------------------------
def hf_t5(cfg: T5Config, folder: str, seed: int = 0):
  """A random transformers T5 of `cfg`'s shape (T5 1.1: gated GELU, untied head), saved to `folder` as
  safetensors; returns the torch model in eval mode."""
  model = hf_twins.random_hf_t5(cfg, seed)
  model.save_pretrained(folder, safe_serialization=True)
  return model.eval()


def make_prompts(cfg: T5Config, tasks: int, seed: int = 0, varied: bool = False) -> dict[str, tuple[Method, Any]]:
  """{task name: (method, params)}: PROMPT-row prompts, or (varied) VARIED_PROMPTS lengths with the last task a
  VARIED_PREFIX-row prefix on every attention kind. Prompts are U(-0.5, 0.5) (the paper's random init), prefix
  rows N(0, 1): the speed does not depend on the values, and random ones keep the two labels' scores apart."""
  rs = np.random.RandomState(seed + (1 if varied else 0))
  out: dict[str, tuple[Method, Any]] = {}
  for t in range(tasks):
    if varied and t == tasks - 1:
      prefix = PrefixTuning.for_config(cfg, length=VARIED_PREFIX, projection=False, initializer='normal')
      out[f'task{t}'] = (prefix, jax.tree.map(np.asarray, prefix.init(jax.random.PRNGKey(seed + t), None)))
      continue
    method = PromptTuning(length=VARIED_PROMPTS[t % len(VARIED_PROMPTS)] if varied else PROMPT, embed_dim=cfg.emb_dim)
    out[f'task{t}'] = (method, {'prompt': rs.uniform(-0.5, 0.5, method.shape).astype(np.float32)})
  return out


def prompt_width(method: Method) -> int:
  """Encoder positions a method adds to every row (a K/V prefix adds keys, not positions)."""
  return getattr(method, 'length', 0) if isinstance(method, PromptTuning) else getattr(method, 'input_length', 0)


def fns_for(rt: runtime_lib.Runtime, method: Method, inputs: int) -> ModelFns:
  """`ModelFns` of `method` over `rt`'s loaded network: a server of that method, without a second copy of the
  frozen weights."""
  served = runtime_lib.build_runtime(rt.config, method, None, {'inputs': inputs, 'targets': TARGETS},
                                     model_parallel=rt.mesh.shape['model'], eos_id=rt.model.eos_id, network=rt.network)
  return ModelFns(served, length_buckets=BUCKETS)


def write_adapter(folder: str, prompt: np.ndarray, cfg: T5Config) -> str:
  """A PEFT PROMPT_TUNING adapter folder (adapter_config.json + adapter_model.safetensors) for a [P, d] prompt."""
  from peft import PromptTuningConfig, TaskType  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  length = prompt.shape[0]
  config = PromptTuningConfig(task_type=TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=length, token_dim=cfg.emb_dim,
                              num_transformer_submodules=2, num_attention_heads=cfg.num_heads,
                              num_layers=cfg.num_encoder_layers, inference_mode=True)
  config.save_pretrained(folder)
  # [2P, d]: seq2seq prompt tuning reads rows :P; zeros in the rest make the parity check prove it.
  table = np.concatenate([prompt, np.zeros_like(prompt)]).astype(np.float32)
  save_file({'prompt_embeddings': table}, os.path.join(folder, 'adapter_model.safetensors'), metadata={'format': 'pt'})
  return folder


def peft_model(base, folders: Mapping[str, str]):
  """One PeftModel over `base` holding every adapter (`from_pretrained` for the first, `load_adapter` after)."""
  from peft import PeftModel  # pylint: disable=import-outside-toplevel
  names = list(folders)
  model = PeftModel.from_pretrained(base, folders[names[0]], adapter_name=names[0])
  for name in names[1:]:
    model.load_adapter(folders[name], adapter_name=name)
  return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Modes: a plan of calls over the stream, each answering some requests.
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Call:
  """One model call of a mode's plan."""
  key: tuple  # its compiled shape (JAX: one compile per distinct key) or adapter (PEFT)
  run: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (best label [k], its log-likelihood [k])
  requests: np.ndarray  # the k stream indices it answers
  rows: int  # rows computed (padding included)
  width: int  # input columns after the length buckets (PEFT: the group's longest row)
  positions: int  # encoder positions computed (rows x (width + prompt), every forward)
  gflop: float  # matmul GFLOP of the call (`rank_gflop`)


@dataclasses.dataclass
class Mode:
  """One way of serving the stream."""
  name: str
  label: str
  plan: Callable[[], list[Call]]  # builds the calls (grouping, padding): part of each timed pass


def rank_gflop(cfg: T5Config, rows: int, encoder: int, labels: int) -> float:
  """Matmul GFLOP of `rank_classify` scoring 2 labels of `labels` tokens for `rows` rows of `encoder` positions
  (prompt included): encoder and cross-attention K/V once per row, the decoder over both labels. K/V prefix rows
  are not counted (a few more attention keys)."""
  return sum(forward_parts(cfg, rows, encoder, 2 * rows, labels).values()) / 1e9


def forward_gflop(cfg: T5Config, rows: int, encoder: int, label: int) -> float:
  """Matmul GFLOP of one whole forward (encoder, K/V, decoder over one label): PEFT's cost per label."""
  return sum(forward_parts(cfg, rows, encoder, rows, label).values()) / 1e9


def next_pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def _best(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  best = scores.argmax(-1)
  return best, scores[np.arange(len(best)), best]


def mixed_plan(fns: ModelFns, params: Any, stream: Stream, width: int) -> list[Call]:
  """Each batch in one `banks.rank_rows` pass (the `infer --prompt` server's batch), whatever its tasks."""
  real = np.ones(stream.candidates.shape[:2], bool)
  inputs = stream.tokens.shape[1]
  calls = []
  for rows in stream.batches():
    batch = {'encoder_input_tokens': stream.tokens[rows], TASK_FEATURE: stream.tasks[rows]}
    length = fns.buckets.bucket('inputs', last_real_column(batch['encoder_input_tokens']), inputs)
    labels = last_real_column(stream.candidates[stream.tasks[rows]].reshape(-1, TARGETS))
    run = functools.partial(banks.rank_rows, fns, params, batch, stream.candidates, real, stream.batch)
    calls.append(
        Call(('mixed', id(fns), length, labels), run, rows, stream.batch, length, stream.batch * (length + width),
             rank_gflop(fns.rt.config, stream.batch, length + width, labels)))
  return calls


def _rank_group(fns: ModelFns, params: Any, tokens: np.ndarray, candidates: np.ndarray,
                real: int) -> tuple[np.ndarray, np.ndarray]:
  return _best(fns.rank(params, {'encoder_input_tokens': tokens}, candidates)[:real])


def split_plan(servers: Sequence[tuple[ModelFns, Any, int]], stream: Stream, pad: str) -> list[Call]:
  """Each batch split by task, each group through its task's one-prompt server ((fns, params, prompt width)
  per task id), padded to the batch ('batch') or to the next power of two ('pow2')."""
  inputs = stream.tokens.shape[1]
  calls = []
  for rows in stream.batches():
    tasks = stream.tasks[rows]
    for t in np.unique(tasks):
      fns, params, width = servers[t]
      requests = rows[tasks == t]
      size = stream.batch if pad == 'batch' else next_pow2(len(requests))
      tokens = np.zeros((size, inputs), np.int32)
      tokens[:len(requests)] = stream.tokens[requests]
      length = fns.buckets.bucket('inputs', last_real_column(tokens), inputs)
      labels = last_real_column(stream.candidates[t])
      run = functools.partial(_rank_group, fns, params, tokens, stream.candidates[t], len(requests))
      calls.append(
          Call(('split', id(fns), size, length, labels), run, requests, size, length, size * (length + width),
               rank_gflop(fns.rt.config, size, length + width, labels)))
  return calls


def _peft_group(model, name: str, input_ids, labels: Sequence[Any], threads: int) -> tuple[np.ndarray, np.ndarray]:
  """Summed log-likelihood of each label for each row: one forward with `labels` per label."""
  import torch  # pylint: disable=import-outside-toplevel
  if torch.get_num_threads() != threads:  # the two PEFT modes share one model and differ only in this
    torch.set_num_threads(threads)
  model.set_adapter(name, inference_mode=True)
  scores = []
  with torch.inference_mode():
    for ids in labels:
      target = ids.repeat(input_ids.shape[0], 1)
      logits = model(input_ids=input_ids, attention_mask=(input_ids > 0).long(), labels=target).logits
      logp = torch.log_softmax(logits.float(), -1).gather(-1, target[..., None])[..., 0]
      scores.append(logp.sum(-1))
  return _best(torch.stack(scores, -1).numpy())


def peft_plan(model, cfg: T5Config, stream: Stream, prompt_lengths: Sequence[int], threads: int) -> list[Call]:
  """Each batch grouped by adapter; a group padded to its longest row (as `DataCollatorWithPadding`)."""
  import torch  # pylint: disable=import-outside-toplevel
  labels = [[torch.from_numpy(ids.astype(np.int64))[None] for ids in stream.labels(t)] for t in range(len(stream.names))
           ]
  calls = []
  for rows in stream.batches():
    tasks = stream.tasks[rows]
    for t in np.unique(tasks):
      requests = rows[tasks == t]
      tokens = stream.tokens[requests]
      length = last_real_column(tokens)
      ids = torch.from_numpy(tokens[:, :length].astype(np.int64))
      run = functools.partial(_peft_group, model, stream.names[t], ids, labels[t], threads)
      encoder = length + prompt_lengths[t]
      flops = sum(forward_gflop(cfg, len(requests), encoder, label.shape[1]) for label in labels[t])
      calls.append(
          Call(('peft', stream.names[t]), run, requests, len(requests), length,
               len(labels[t]) * len(requests) * encoder, flops))  # the encoder runs once per label
  return calls


def serve(calls: Sequence[Call], n: int, log: list | None = None,
          out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Runs the calls in order; (predicted label [n], its log-likelihood [n]) per request, written into `out` if
  given. `log` gets (rows, width, wall s, CPU s) of every call."""
  best, score = out if out is not None else (np.full(n, -1), np.full(n, np.nan))
  for call in calls:
    wall, cpu = time.perf_counter(), time.process_time()
    b, s = call.run()
    if log is not None:
      log.append((call.rows, call.width, time.perf_counter() - wall, time.process_time() - cpu))
    best[call.requests], score[call.requests] = b, s
  return best, score


def warm_up(calls: Sequence[Call]) -> tuple[int, float]:
  """Runs the first call of every distinct key (compiling it); (keys, seconds)."""
  start, seen = time.perf_counter(), set()
  for call in calls:
    if call.key not in seen:
      seen.add(call.key)
      call.run()
  return len(seen), time.perf_counter() - start


class CompileCounter:
  """Counts XLA backend compiles (jax.monitoring), to show none happens while timing."""
  EVENT = '/jax/core/compile/backend_compile_duration'

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == self.EVENT:
      self.count += 1
