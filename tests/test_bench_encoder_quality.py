"""bench/encoder_quality.py --quick: every method trains on the held-out tagging task through the train loop and the
table, the PNG and the JSON of every run are written with their structure (no accuracy is asserted: 6 steps).

One task only: each of the 8 quick runs compiles its own steps (~60-85 s for both tasks), and the classification
head's path is tests/test_encoder_model.py's; the suite's 12-minute budget pays for the tagging half."""
import json

import pytest

from bench import encoder_quality
from jaxprompt.demo import encoder_model


@pytest.mark.slow
def test_quick_bench_trains_every_method_and_writes_its_files(tmp_path, capsys):
  png, out = tmp_path / 'quality.png', tmp_path / 'quality.json'
  result = encoder_quality.main([
      '--quick', '--tasks', 'tagging', '--png',
      str(png), '--json',
      str(out), '--work',
      str(tmp_path / 'work')
  ])
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  setup, runs, summary = result['setup'], result['runs'], result['summary']
  assert setup['quick'] and setup['seeds'] == [0] and set(setup['learning_rates']) == set(encoder_quality.METHODS)
  tasks = ('tagging',)
  assert [(r['task'], r['method']) for r in runs] == [(t, m) for t in tasks for m in encoder_quality.METHODS]
  for run in runs:
    assert run['steps'] == setup['steps'] and run['metric'] == {'classification': 'accuracy'}.get(
        run['task'], 'span_f1')
    assert 0.0 <= run['value'] <= 100.0 and run['value'] == run['scores'][run['metric']]
    assert run['validation_loss_after'] != run['validation_loss_before']  # the trained state is the one scored
    if run['task'] == 'tagging':  # per-token labels learn fast: 6 steps lower the held-out loss of every method
      assert run['validation_loss_after'] < run['validation_loss_before'], run
    run_dir = tmp_path / 'work' / 'runs' / f"{run['task']}_{run['method']}_seed0"
    assert (run_dir / 'train_metrics.jsonl').is_file()  # the train loop's files, and its checkpoint of the last step
    assert (run_dir / 'checkpoints' / str(setup['steps']) / 'commit_success.txt').is_file()
  # trainable parameters: the head alone, plus the prompt rows, plus a K/V prefix per layer, plus the whole encoder
  config = encoder_model.ENCODER_CONFIG
  params = {(r['task'], r['method']): r['trainable_params'] for r in runs}
  for task in tasks:
    head = params[task, 'head_only']
    assert params[task, 'prompt_tuning'] - head == encoder_quality.ROWS * config.emb_dim
    assert params[task, 'p_tuning_v2'] - head == config.num_layers * 2 * encoder_quality.ROWS * config.emb_dim
    assert params[task, 'model_tuning'] - head > 800_000
  assert [(r['task'], r['method'], r['seeds'], r['std']) for r in summary
         ] == [(t, m, 1, 0.0) for t in tasks for m in encoder_quality.METHODS]
  assert result['frozen_first_row'] is None  # the probe reads the classification task's rows
  printed = capsys.readouterr().out
  assert all(spec.label in printed for spec in encoder_quality.METHODS.values())
