"""Serving many prompts on a causal LM: a mixed request stream of 8 tasks from one prompt bank vs Hugging Face PEFT.

REQUESTS requests (512) of TASKS tasks (8) arrive in random task order and are served in arrival order in batches
of BATCH (32). Every task is a 2-label classification with its own prompt, answered by rank classification (both
of the task's labels scored, the best taken): the same answers in every mode.

  once    one `PromptBank` over all tasks, `DecoderOnlyModel.rank_classify` (what `ModelFns.rank` jits for
          `jaxprompt infer --prompt NAME=FILE`): every task's prompt runs once per batch (batch = tasks, each at
          its own positions), each row takes its task's keys / values as a K/V prefix, then its inputs once
          into a KV cache and each label's tokens as steps from it
  naive   the same bank with `prompt_once=False`: each row's prompt inserted in front of it
  peft_Nt Hugging Face PEFT: one `PeftModel` holding every task's PROMPT_TUNING CAUSAL_LM adapter
          (`add_adapter`), each batch grouped by adapter (`set_adapter`), each group padded to its longest row and
          each label scored by one forward of inputs + label (its tokens' summed log-likelihood); N torch threads

One frozen model for all: `bench/causal_prompt_modes.py`'s Llama-shaped `LlamaForCausalLM` (random weights,
float32), saved as safetensors and read back by `load_hf_causal`; PEFT runs on the same torch object. Inputs are
`bench/lengths.py`'s SST-2 validation lengths (random ids), padded by jaxprompt to multiples of 16. The run
checks that every mode gives the same predictions and scores.

Every jaxprompt shape is compiled and run once and PEFT runs each adapter once before timing (warm-up, not
timed). Then the modes are interleaved batch by batch (`causal_prompt_step.interleaved`: every batch served by
each mode in turn, the order rotating), --rounds times; a mode's time is the sum over batches of its best round,
on the wall and process-CPU clocks. The 1-minute load average is read before every round and at the end.
Run from the repository root (needs torch, transformers, peft):

  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/causal_serving.py            # the README figures
  TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python bench/causal_serving.py --quick    # a tiny model, seconds

It prints the table, the agreement check and one line starting with `JSON `.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `bench` as a package

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import causal_prompt_modes as modes_lib  # noqa: E402
from bench.causal_prompt_step import agreement, interleaved, rank_gflop, shapes, totals  # noqa: E402
from jaxprompt.checkpoints.hf_causal import load_hf_causal  # noqa: E402
from jaxprompt.methods import prompt_bank  # noqa: E402
from jaxprompt.methods.prompt_tuning import PromptTuning  # noqa: E402
from jaxprompt.models.decoder_only import DecoderOnlyModel  # noqa: E402
from jaxprompt.models.features import TASK_FEATURE  # noqa: E402

EOS = modes_lib.EOS
TARGET = 1.5  # once over the faster PEFT setting
QUICK_PROMPTS = '4,2,5,3,4,2,5,3'
LABELS = {'once': 'ours, bank, prompt once per task', 'naive': 'ours, bank, prompt in every row'}


@dataclasses.dataclass(frozen=True)
class Stream:
  """The requests: inputs (random ids of SST-2 lengths), each one's task, each task's two labels and prompt."""
  inputs: list[np.ndarray]
  tasks: np.ndarray  # [n] int32
  labels: np.ndarray  # [tasks, 2, 2] label token ids (one token + EOS)
  prompts: list[np.ndarray]  # per task [p_t, hidden]
  batch: int

  def batches(self) -> list[np.ndarray]:
    return [np.arange(i, min(i + self.batch, len(self.inputs))) for i in range(0, len(self.inputs), self.batch)]


def make_stream(spec: modes_lib.Spec, requests: int, lengths: Sequence[int], seed: int = 0) -> Stream:
  """`requests` inputs with uniform i.i.d. tasks; task t's labels are two tokens of its own (+ EOS); task t's
  prompt `lengths[t]` rows of U(-0.5, 0.5)."""
  rng = np.random.default_rng(seed)
  tasks = rng.integers(0, len(lengths), requests).astype(np.int32)
  labels = np.asarray([[(spec.vocab // 3 + t, EOS), (spec.vocab // 2 + t, EOS)] for t in range(len(lengths))], np.int32)
  prompts = [rng.uniform(-0.5, 0.5, (p, spec.hidden)).astype(np.float32) for p in lengths]
  inputs = [x for x, _ in modes_lib.examples(spec, requests, seed + 1)]
  return Stream(inputs, tasks, labels, prompts, spec.batch)


# -- jaxprompt ------------------------------------------------------------------------------------------------------
def ours(stream: Stream, folder: str) -> dict[str, modes_lib.Ours]:
  """{'once', 'naive'}: one `PromptBank` of the stream's prompts over the saved model, prompt once or per row."""
  frozen, config = load_hf_causal(folder)
  methods = {
      f'task{t}': (PromptTuning(length=len(p), embed_dim=config.emb_dim, eos_id=EOS), {'prompt': p})
      for t, p in enumerate(stream.prompts)
  }
  bank, tree = prompt_bank.build_bank(methods, config, EOS)
  tree = jax.tree.map(jax.numpy.asarray, tree)
  return {
      name: modes_lib.Ours(DecoderOnlyModel(config, bank, eos_id=EOS, prompt_once=once), frozen, tree)
      for name, once in (('once', True), ('naive', False))
  }


def bank_features(spec: modes_lib.Spec, stream: Stream, rows: np.ndarray) -> tuple[dict, np.ndarray]:
  """(the rows' inputs, right-padded to their bucket, with their task ids; each row's candidates [b, 2, 2])."""
  feats = modes_lib.rank_features(spec, [(stream.inputs[i], 0) for i in rows])
  feats[TASK_FEATURE] = stream.tasks[rows]
  return feats, stream.labels[stream.tasks[rows]]


# -- Hugging Face PEFT ----------------------------------------------------------------------------------------------
class PeftServer:
  """One PeftModel with a PROMPT_TUNING CAUSAL_LM adapter per task, serving a batch grouped by adapter."""

  def __init__(self, base, stream: Stream):
    import torch  # pylint: disable=import-outside-toplevel
    from peft import PromptTuningConfig, TaskType, get_peft_model  # pylint: disable=import-outside-toplevel
    self.torch, self.stream = torch, stream
    self.model = None
    for t, prompt in enumerate(stream.prompts):
      config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=len(prompt))
      if self.model is None:
        self.model = get_peft_model(base, config, adapter_name=f'task{t}')
      else:
        self.model.add_adapter(f'task{t}', config)
      with torch.no_grad():
        self.model.prompt_encoder[f'task{t}'].embedding.weight.copy_(torch.from_numpy(prompt))
    self.model.eval()

  def _label_scores(self, inputs: Sequence[np.ndarray], label: np.ndarray, prompt: int) -> np.ndarray:
    """[n]: each input + `label` in one forward (padded to the longest), the label tokens' log-likelihood."""
    streams = [np.concatenate([x, label]) for x in inputs]
    width = max(len(s) for s in streams)
    ids, mask = np.zeros((len(streams), width), np.int64), np.zeros((len(streams), width), np.int64)
    for i, s in enumerate(streams):
      ids[i, :len(s)], mask[i, :len(s)] = s, 1
    logits = self.model(input_ids=self.torch.from_numpy(ids), attention_mask=self.torch.from_numpy(mask)).logits
    logp = self.torch.log_softmax(logits[:, prompt:-1].float(), -1).numpy()  # PEFT returns the prompt's logits too
    return np.asarray([
        sum(logp[i, len(s) - len(label) - 1 + j, label[j]] for j in range(len(label))) for i, s in enumerate(streams)
    ])

  def rank(self, rows: np.ndarray, threads: int) -> np.ndarray:
    """[b, 2]: the rows' label scores, one adapter group at a time."""
    self.torch.set_num_threads(threads)
    out = np.zeros((len(rows), 2), np.float32)
    tasks = self.stream.tasks[rows]
    with self.torch.no_grad():
      for t in np.unique(tasks):
        group = np.flatnonzero(tasks == t)
        self.model.set_adapter(f'task{t}')
        inputs = [self.stream.inputs[rows[i]] for i in group]
        for k, label in enumerate(self.stream.labels[t]):
          out[group, k] = self._label_scores(inputs, label, len(self.stream.prompts[t]))
    return out


# -- the run --------------------------------------------------------------------------------------------------------
def positions(spec: modes_lib.Spec, stream: Stream, feats: Sequence[dict]) -> dict[str, float]:
  """Positions through the layers per request: the prompts (once: every task's a batch, padded to the widest;
  naive: the widest on every row), the padded inputs, the label steps; PEFT: per label, the task's prompt +
  inputs + label, padded to the adapter group's longest."""
  widest, labels, label_len = max(len(p) for p in stream.prompts), *stream.labels.shape[1:]
  width = float(np.mean([f['decoder_input_tokens'].shape[1] for f in feats]))
  peft = 0
  for rows in stream.batches():
    for t in np.unique(stream.tasks[rows]):
      group = rows[stream.tasks[rows] == t]
      peft += len(group) * labels * (len(stream.prompts[t]) + max(len(stream.inputs[i]) for i in group) + label_len)
  return {
      'once': len(stream.prompts) * widest / spec.batch + width + labels * label_len,
      'naive': widest + width + labels * label_len, 'peft': peft / len(stream.inputs)
  }


def run(spec: modes_lib.Spec, requests: int, lengths: Sequence[int], threads: Sequence[int], rounds: int,
        peft: bool = True) -> dict[str, Any]:
  stream = make_stream(spec, requests, lengths)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as folder:
    base = modes_lib.hf_llama(spec, os.path.join(folder, 'model'))
    jax_modes = ours(stream, os.path.join(folder, 'model'))
  server = PeftServer(base, stream) if peft else None
  built = time.perf_counter() - start
  batches = stream.batches()
  feats = [bank_features(spec, stream, rows) for rows in batches]
  results: dict[str, list] = {}

  def keep(name: str, i: int, scores: np.ndarray) -> None:
    results.setdefault(name, [None] * len(batches))[i] = scores

  start = time.perf_counter()
  for mode in jax_modes.values():  # compile and run every distinct shape once
    for i in sorted({shapes(f): i for i, f in reversed(list(enumerate(feats)))}.values()):
      mode.rank(*feats[i])
  modes: dict[str, Callable[[int], Any]] = {
      name: (lambda i, n=name, m=mode: keep(n, i, m.rank(*feats[i]))) for name, mode in jax_modes.items()
  }
  if server is not None:
    for t in range(len(lengths)):  # each adapter once
      server.rank(np.flatnonzero(stream.tasks == t)[:1], threads[0])
    modes.update({f'peft_{t}t': (lambda i, t=t: keep(f'peft_{t}t', i, server.rank(batches[i], t))) for t in threads})
  warm = time.perf_counter() - start
  times, load = interleaved(modes, len(batches), rounds)
  work = positions(spec, stream, [f for f, _ in feats])
  return dict(total=totals(times), load=load, built_s=built, warm_s=warm, agreement=agreement(results),
              gflop=rank_gflop(jax_modes), positions=work, requests=len(stream.inputs), prompt_lengths=list(lengths),
              samples={n: {c: t[c].tolist() for c in t} for n, t in times.items()})


def report(result: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
  """Prints the table and the agreement; returns per mode and clock its requests/s and ratios."""
  total, n = result['total'], result['requests']
  bases = ['naive'] + [m for m in total if m.startswith('peft_')]
  print(f"   load average (1 min) before each round and at the end: {', '.join(f'{x:.1f}' for x in result['load'])}; "
        f"build {result['built_s']:.0f} s, warm-up {result['warm_s']:.0f} s")
  print(f"{'':36s} {'pos/req':>7s} {'GFLOP/batch':>11s} {'wall s':>7s} {'CPU s':>7s} {'req/s':>7s}" +
        ''.join(f' {"x " + b:>10s}' for b in bases) + f" {'CPU:':>5s}" + ''.join(f' {"x " + b:>10s}' for b in bases))
  out = {}
  for name, t in total.items():
    ratio = {c: {b: total[b][c] / t[c] for b in bases} for c in ('wall', 'cpu')}
    out[name] = dict(rate={c: n / t[c] for c in ('wall', 'cpu')}, ratio=ratio)
    label = LABELS.get(name, f'PEFT, {name[5:-1]} torch thread(s), by adapter')
    gflop, pos = result['gflop'].get(name), result['positions'].get(name.split('_')[0])
    print(f"{label:36s} {pos:7.1f} {'' if gflop is None else f'{gflop:11.1f}':>11s} {t['wall']:7.2f} {t['cpu']:7.2f} "
          f"{n / t['wall']:7.1f}" + ''.join(f' {ratio["wall"][b]:10.2f}' for b in bases) + '      ' +
          ''.join(f' {ratio["cpu"][b]:10.2f}' for b in bases))
  for name, a in result['agreement'].items():
    print(f"   {name} vs once: predictions {a['same_predictions']}/{a['of']} equal, scores max |diff| "
          f"{a['max_abs_diff']:.2e}")
  return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help=f'a tiny model, 2 batches of 8, prompts {QUICK_PROMPTS} (a smoke run)')
  parser.add_argument('--requests', type=int, default=512)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--prompts', default='20', help='prompt rows per task: one length, or one per task')
  parser.add_argument('--tasks', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=2, help='timed passes over the stream (best per batch)')
  parser.add_argument('--peft-threads', default='2,1', help='torch thread counts to time PEFT with')
  parser.add_argument('--no-peft', action='store_true', help='jaxprompt only')
  args = parser.parse_args(argv)
  spec = modes_lib.Spec(batch=args.batch)
  requests, prompts = args.requests, args.prompts
  if args.quick:  # one 64-token bucket: one compile per mode; mixed prompt lengths
    spec, requests, prompts = dataclasses.replace(modes_lib.QUICK, batch=8, bucket=64), 16, QUICK_PROMPTS
  lengths = [int(p) for p in prompts.split(',')]
  lengths = (lengths * args.tasks)[:args.tasks] if len(lengths) == 1 else lengths
  threads = [int(t) for t in args.peft_threads.split(',') if t]
  result = run(spec, requests, lengths, threads, args.rounds, peft=not args.no_peft)
  print(f'\n== {requests} requests of {len(lengths)} tasks (prompts {lengths} rows), batches of {spec.batch}, 2 labels '
        f'each; best of {args.rounds} interleaved round(s) ({os.cpu_count()} CPUs)')
  result['ratios'] = report(result)
  peft = [m for m in result['total'] if m.startswith('peft_')]
  if peft:
    best = min(peft, key=lambda m: result['total'][m]['wall'])
    print(f"target: once >= {TARGET}x the faster PEFT ({best}): {result['ratios']['once']['ratio']['wall'][best]:.2f}x")
  result['spec'] = dataclasses.asdict(spec)
  print('JSON ' + json.dumps(result, sort_keys=True, default=float))
  return result


if __name__ == '__main__':
  main()
