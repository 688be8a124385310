"""The README and docs/: the model example and the PEFT round trip run as written (on fixture models instead of
the real ones; a shorter training run), every relative link and #anchor resolves, the README stays short and keeps
CI's test command. The README's causal workflow runs in tests/test_doc_commands.py."""
import json
import pathlib
import re
import shlex
import subprocess

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKDOWN = [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]
FENCE = re.compile(r'^[ \t]*```.*?^[ \t]*```[ \t]*$', re.M | re.S)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def _prose(text):
  """The markdown outside fenced code blocks (a '# comment' in a shell block is not a heading)."""
  return FENCE.sub('', text)


def _anchors(path):
  """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats numbered."""
  anchors, seen = set(), {}
  for heading in re.findall(r'^#{1,6} +(.+?) *#*$', _prose(path.read_text()), re.M):
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
    anchors.add(f'{slug}-{seen[slug]}' if slug in seen else slug)
    seen[slug] = seen.get(slug, 0) + 1
  return anchors


@pytest.mark.slow
def test_readme_model_example_runs(fixtures_dir):
  page = (REPO / 'docs' / 'model.md').read_text()
  code = re.search(r'# The model\n\n```python\n(.*?)```', page, re.S).group(1)
  assert "get_config('t5_1_1_base')" in code and 'gs://t5-data/pretrained_models/t5x/' in code
  code = code.replace("get_config('t5_1_1_base')", "get_config('t5x_test_tiny')")
  code = re.sub(r"'gs://[^']+'", repr(str(fixtures_dir / 't5x_test_t5_tiny.checkpoint_0')), code)
  tokens = np.array([[37, 1782, 19, 1], [8, 1, 0, 0]], np.int32)
  targets = np.array([[1465, 1], [2841, 1]], np.int32)
  batch = {
      'encoder_input_tokens': tokens, 'decoder_target_tokens': targets,
      'decoder_input_tokens': np.pad(targets[:, :-1],
                                     ((0, 0), (1, 0))), 'decoder_loss_weights': (targets > 0).astype(np.float32)
  }
  namespace = {'rng': jax.random.PRNGKey(0), 'batch': batch, 'candidate_targets': targets}
  exec(compile(code, 'docs/model.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['prompt']['prompt'].shape == (100, namespace['config'].emb_dim)
  assert np.isfinite(float(namespace['loss'])) and namespace['decodes'].shape == targets.shape


def test_markdown_links_resolve():
  assert len(MARKDOWN) > 1, 'docs/*.md missing'
  broken = []
  for page in MARKDOWN:
    for target in LINK.findall(_prose(page.read_text())):
      if re.match(r'[a-z][a-z0-9+.-]*:', target):  # https:, mailto:
        continue
      file, _, anchor = target.partition('#')
      path = (page.parent / file).resolve() if file else page
      name = f'{page.relative_to(REPO)}: {target}'
      if not path.exists():
        broken.append(f'{name} (no such file)')
      elif anchor and path.suffix == '.md' and anchor not in _anchors(path):
        broken.append(f'{name} (no such heading)')
  assert not broken, '\n'.join(broken)


def test_readme_is_short_and_keeps_the_ci_command():
  readme = (REPO / 'README.md').read_text()
  assert len(readme.splitlines()) <= 300, 'README.md over 300 lines: move detail into docs/'
  ci_command = (REPO / '.ci' / 'run').read_text().strip().splitlines()[-1]
  assert ci_command.startswith('python3 -m venv') and ci_command in readme.splitlines()


@pytest.mark.slow
def test_peft_round_trip_runs_and_predicts_alike(tmp_path, clean_gin):
  """docs/peft.md's round trip on the demo model, command by command (2 training steps, paths under tmp_path):
  transformers + PEFT over the exported folder predict what `jaxprompt infer` predicts."""
  pytest.importorskip('peft')
  from jaxprompt.cli.main import main as cli_main  # pylint: disable=g-import-not-at-top
  section = (REPO / 'docs' / 'peft.md').read_text().split('## The round trip', 1)[1]
  shell = re.search(r'```bash\n(.*?)```', section, re.S).group(1).replace('/tmp/', f'{tmp_path}/')
  python = re.search(r'```python\n(.*?)```', section, re.S).group(1).replace('/tmp/', f'{tmp_path}/')
  commands = [line for line in shell.replace('\\\n', ' ').splitlines() if line.strip() and not line.startswith('#')]
  assert [shlex.split(c)[:2] for c in commands] == [['jaxprompt', 'train'], ['jaxprompt', 'export'],
                                                    ['jaxprompt', 'export'], ['printf',
                                                                              shlex.split(commands[3])[1]],
                                                    ['jaxprompt', 'infer']]
  for command in commands:
    argv = shlex.split(command)
    if argv[0] != 'jaxprompt':
      subprocess.run(['bash', '-c', command], check=True)
      continue
    if argv[1] == 'train':
      argv = [a for a in argv if not a.startswith('--gin.TRAIN_STEPS=')
             ] + ['--gin.TRAIN_STEPS=2', '--gin.EVAL_MAX_EXAMPLES=16']
    assert cli_main(argv[1:]) == 0, command
  namespace = {}
  exec(compile(python, 'docs/peft.md', 'exec'), namespace)  # pylint: disable=exec-used
  jsonl = (tmp_path / 'demo_predictions.jsonl').read_text().splitlines()
  assert namespace['predictions'] == [json.loads(line)['prediction'] for line in jsonl] and len(jsonl) == 3


def test_readme_names_the_label_sets_the_demo_model_can_learn():
  """The README's demo label sets are the pretraining skills' (`demo.data.SKILL_LABELS`), each label one piece of
  the shipped demo vocabulary (a word the model was pretrained to answer with)."""
  from jaxprompt.demo import data, model  # pylint: disable=g-import-not-at-top
  readme = ' '.join((REPO / 'README.md').read_text().split())
  named = dict((skill, labels) for labels, skill in re.findall(r'`([a-z|]+)` \((\w+)\)', readme))
  assert named == {skill: '|'.join(labels) for skill, labels in data.SKILL_LABELS.items()}
  vocabulary = model.vocabulary()
  for labels in data.SKILL_LABELS.values():
    for label in labels:
      assert len(vocabulary.encode(label)) == 1, label
