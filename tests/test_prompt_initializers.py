"""Soft-prompt initialisers: values, determinism, errors, real released prompts, gin selection."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from jaxprompt.errors import PromptError
from jaxprompt.methods import initializers as prompts
from jaxprompt.methods.prompt_tuning import PromptTuning

VOCAB_ROWS, EMBED = 64, 8
SPM = 't5_cc_all_32000_sentencepiece.model'


def id_table(rows: int = VOCAB_ROWS, embed: int = EMBED) -> np.ndarray:
  """[rows, embed] float32 whose row i is i*embed + (0..embed-1): a row tells its id exactly."""
  return np.arange(rows * embed, dtype=np.float32).reshape(rows, embed)


def row_ids(prompt) -> np.ndarray:
  prompt = np.asarray(prompt)
  ids = prompt[:, 0] / prompt.shape[1]
  np.testing.assert_array_equal(prompt, id_table(int(ids.max()) + 1, prompt.shape[1])[ids.astype(int)])
  return ids.astype(int)


class FakeVocab:
  """A vocabulary with known pieces: 'False' -> [5], 'True' -> [7, 9, 11], 'gap' -> []."""
  eos_id = 1
  pieces = {'False': [5], 'True': [7, 9, 11], 'gap': [], 'a b c': [20, 21, 22], 'huge': [VOCAB_ROWS + 3]}

  def encode(self, s):
    return list(self.pieces[s])


@pytest.fixture(scope='module')
def spm_vocab(fixtures_dir):
  return seqio.SentencePieceVocabulary(str(fixtures_dir / SPM), extra_ids=100)


KEY = jax.random.key(0)
OTHER_KEY = jax.random.key(1)

# ----- random -----


def test_random_uniform_range_and_determinism():
  init = prompts.random_uniform(scale=0.3)
  prompt = init(KEY, (50, 16), None)
  assert prompt.shape == (50, 16) and prompt.dtype == jnp.float32
  assert float(prompt.min()) >= -0.3 and float(prompt.max()) <= 0.3
  assert float(prompt.min()) < -0.25 and float(prompt.max()) > 0.25  # spans the range, not U(0, s)
  np.testing.assert_array_equal(prompt, init(KEY, (50, 16), None))
  assert not np.array_equal(prompt, init(OTHER_KEY, (50, 16), None))


@pytest.mark.parametrize('truncated', [False, True])
def test_normal(truncated):
  init = prompts.normal(stddev=0.2, truncated=truncated)
  prompt = np.asarray(init(KEY, (100, 64), None))
  assert prompt.shape == (100, 64) and prompt.dtype == np.float32
  assert abs(prompt.mean()) < 0.01
  if truncated:
    assert np.abs(prompt).max() <= 0.4 + 1e-6
    assert 0.15 < prompt.std() < 0.19  # truncation at 2 sigma shrinks the spread to ~0.88 sigma
  else:
    assert np.abs(prompt).max() > 0.4
    assert 0.19 < prompt.std() < 0.21
  np.testing.assert_array_equal(prompt, init(KEY, (100, 64), None))


@pytest.mark.parametrize('factory,arg', [(prompts.random_uniform, 0.0), (prompts.normal, -1.0)])
def test_random_bad_scale(factory, arg):
  with pytest.raises(PromptError, match=r'must be positive, got (0\.0|-1\.0)'):
    factory(arg)


@pytest.mark.parametrize('shape', [(3, 4, 5), (0, 4), (4,)])
def test_bad_shape_named(shape):
  with pytest.raises(PromptError, match=r'prompt shape must be \(length, embed\).*' + re_shape(shape)):
    prompts.random_uniform()(KEY, shape, None)


def re_shape(shape):
  return str(tuple(shape)).replace('(', r'\(').replace(')', r'\)')


# ----- sampled vocab -----


@pytest.mark.parametrize('start', [0, 10])
def test_sampled_vocab_distinct_rows_from_range(start):
  init = prompts.sampled_vocab(population_size=20, start=start)
  prompt = init(KEY, (20, EMBED), id_table())
  assert prompt.dtype == jnp.float32
  ids = row_ids(prompt)
  assert sorted(ids) == list(range(start, start + 20))  # without replacement: the whole population
  np.testing.assert_array_equal(prompt, init(KEY, (20, EMBED), id_table()))
  assert not np.array_equal(prompt, init(OTHER_KEY, (20, EMBED), id_table()))


def test_sampled_vocab_with_replacement_and_clipping():
  # population 5000 > 64 rows - 60 start: clipped to ids 60..63; 10 rows > 4 ids: with replacement.
  ids = row_ids(prompts.sampled_vocab(5000, start=60)(KEY, (10, EMBED), id_table()))
  assert set(ids) <= {60, 61, 62, 63} and len(ids) == 10 and len(set(ids)) > 1


def test_sampled_vocab_bfloat16_table_and_jit():
  table = jnp.asarray(id_table(), jnp.bfloat16)
  init = prompts.sampled_vocab(population_size=8)
  eager = init(KEY, (5, EMBED), table)
  assert eager.dtype == jnp.float32
  np.testing.assert_array_equal(eager, jax.jit(lambda k: init(k, (5, EMBED), table))(KEY))
  assert set(np.asarray(eager[:, 0] / EMBED).round().astype(int)) <= set(range(8))


def test_sampled_vocab_aliases_match():
  a = prompts.sampled_vocab(30)(KEY, (6, EMBED), id_table())
  np.testing.assert_array_equal(a, prompts.from_samples_of_embeddings(30)(KEY, (6, EMBED), id_table()))
  np.testing.assert_array_equal(a, prompts.from_sample_of_embeddings(30)(KEY, (6, EMBED), id_table()))


def test_sampled_vocab_errors():
  with pytest.raises(PromptError, match='sampled_vocab needs the model.s token embedding table.*None'):
    prompts.sampled_vocab()(KEY, (4, EMBED), None)
  with pytest.raises(PromptError, match='embed size 8 .*embed size 6'):
    prompts.sampled_vocab()(KEY, (4, 6), id_table())
  with pytest.raises(PromptError, match='population_size must be positive, got 0'):
    prompts.sampled_vocab(0)
  with pytest.raises(PromptError, match='start 64 is past the embedding table of 64 rows'):
    prompts.sampled_vocab(start=64)(KEY, (4, EMBED), id_table())
  with pytest.raises(PromptError, match=r'2-D float array.*\(64,\) dtype'):
    prompts.sampled_vocab()(KEY, (4, EMBED), np.zeros(64, np.float32))


# ----- class labels -----


def test_class_labels_mean_pooled_and_fallback_rows():
  table = np.random.default_rng(0).normal(size=(VOCAB_ROWS, EMBED)).astype(np.float32)
  fallback = prompts.normal(0.1)
  init = prompts.class_labels(['False', 'True'], vocabulary=FakeVocab(), fallback=fallback)
  prompt = np.asarray(init(KEY, (5, EMBED), table))
  assert prompt.shape == (5, EMBED) and prompt.dtype == np.float32
  np.testing.assert_allclose(prompt[0], table[5], rtol=1e-6)
  np.testing.assert_allclose(prompt[1], (table[7] + table[9] + table[11]) / 3, rtol=1e-6, atol=1e-7)
  # Documented: the fallback runs with the same rng on the whole shape; rows 0..1 are then overwritten.
  np.testing.assert_array_equal(prompt[2:], np.asarray(fallback(KEY, (5, EMBED), table))[2:])


def test_class_labels_default_fallback_is_sampled_vocab_5000():
  table = id_table(6000)
  prompt = prompts.class_labels(['True'], vocabulary=FakeVocab())(KEY, (30, EMBED), table)
  expected_rest = prompts.sampled_vocab(5000)(KEY, (30, EMBED), table)[1:]
  np.testing.assert_array_equal(prompt[1:], expected_rest)
  assert row_ids(prompt[1:]).max() < 5000


def test_class_labels_exact_fit_and_jit():
  init = prompts.class_labels(['True', 'False'], vocabulary=FakeVocab())
  prompt = init(KEY, (2, EMBED), id_table())
  np.testing.assert_array_equal(prompt[1], id_table()[5])
  np.testing.assert_array_equal(prompt, jax.jit(lambda k: init(k, (2, EMBED), id_table()))(KEY))


def test_class_labels_real_sentencepiece(spm_vocab):
  labels = ['False', 'True', 'entailment']
  pieces = [spm_vocab.encode(label) for label in labels]
  assert len(pieces[2]) > 1, pieces  # one label must exercise the mean pooling
  table = np.random.default_rng(1).normal(size=(32128, EMBED)).astype(np.float32)
  prompt = np.asarray(prompts.class_labels(labels, vocabulary=spm_vocab)(KEY, (4, EMBED), table))
  for row, ids in zip(prompt, pieces):
    np.testing.assert_allclose(row, table[ids].mean(axis=0), rtol=1e-5, atol=1e-6)
  # vocabulary=None is T5's packaged vocabulary, the same model file; a path string works too.
  np.testing.assert_array_equal(prompt, prompts.class_labels(labels)(KEY, (4, EMBED), table))
  by_path = prompts.class_labels(labels, vocabulary=str(spm_vocab.sentencepiece_model_file))
  np.testing.assert_array_equal(prompt, by_path(KEY, (4, EMBED), table))


def test_class_labels_in_the_prompt_tuning_method():
  table = id_table()
  init = prompts.bind_embedding(prompts.class_labels(['True'], vocabulary=FakeVocab()), table)
  method = PromptTuning(length=3, embed_dim=EMBED, prompt_init=init)
  value = np.asarray(method.init(KEY, {})['prompt'])
  assert value.shape == (3, EMBED)
  np.testing.assert_allclose(value[0], table[[7, 9, 11]].mean(0))
  assert row_ids(value[1:]).max() < VOCAB_ROWS


def test_class_labels_longer_than_the_prompt_keep_the_first(caplog):
  """As prompt-tuning's from_embedded_list: the labels that fit are used, the rest skipped with a warning."""
  vocab = FakeVocab()
  three = prompts.class_labels(['False', 'True', 'False'], vocabulary=vocab)(KEY, (2, EMBED), id_table())
  two = prompts.class_labels(['False', 'True'], vocabulary=vocab)(KEY, (2, EMBED), id_table())
  np.testing.assert_array_equal(three, two)
  assert 'skipping' in caplog.text and "['False']" in caplog.text


def test_class_labels_errors():
  with pytest.raises(PromptError, match="'gap' tokenizes to no pieces"):
    prompts.class_labels(['True', 'gap'], vocabulary=FakeVocab())(KEY, (4, EMBED), id_table())
  with pytest.raises(PromptError, match=r"'huge' tokenizes to ids \[67\] outside the embedding table of 64"):
    prompts.class_labels(['huge'], vocabulary=FakeVocab())(KEY, (4, EMBED), id_table())
  with pytest.raises(PromptError, match="non-empty list of strings, got 'True'"):
    prompts.class_labels('True')
  with pytest.raises(PromptError, match='label 3 is a int'):
    prompts.class_labels(['True', 3])
  with pytest.raises(PromptError, match='class_labels needs the model.s token embedding table'):
    prompts.class_labels(['True'], vocabulary=FakeVocab())(KEY, (4, EMBED), None)
  with pytest.raises(PromptError, match='object with .encode.*got int'):
    prompts.class_labels(['True'], vocabulary=3)(KEY, (4, EMBED), id_table())
  bad_fallback = lambda rng, shape, emb: jnp.zeros((1, EMBED))
  with pytest.raises(PromptError, match=r'fallback initialiser returned shape \(1, 8\), expected \(4, 8\)'):
    prompts.class_labels(['True'], vocabulary=FakeVocab(), fallback=bad_fallback)(KEY, (4, EMBED), id_table())


# ----- text -----


@pytest.mark.parametrize('length,expected', [(7, [20, 21, 22, 20, 21, 22, 20]), (2, [20, 21]), (3, [20, 21, 22])])
def test_from_text_repeats_or_truncates(length, expected):
  prompt = prompts.from_text('a b c', vocabulary=FakeVocab())(KEY, (length, EMBED), id_table())
  assert prompt.dtype == jnp.float32
  assert list(row_ids(prompt)) == expected


def test_from_text_add_eos_like_peft_on_t5(spm_vocab):
  text = 'Classify the sentiment'
  ids = spm_vocab.encode(text) + [1]
  table = id_table(32128)
  prompt = prompts.from_text(text, vocabulary=spm_vocab, add_eos=True)(KEY, (10, EMBED), table)
  assert list(row_ids(prompt)) == (ids * 10)[:10]


def test_from_text_errors():
  with pytest.raises(PromptError, match="'gap' tokenizes to no pieces"):
    prompts.from_text('gap', vocabulary=FakeVocab())(KEY, (4, EMBED), id_table())
  with pytest.raises(PromptError, match="text must be a non-empty string, got ' '"):
    prompts.from_text(' ')
  with pytest.raises(PromptError, match='from_text needs the model.s token embedding table'):
    prompts.from_text('a b c', vocabulary=FakeVocab())(KEY, (4, EMBED), None)


# ----- arrays and files -----


class _Bomb:
  """Unpickling this creates the file `path`: proof that a loader executed pickled code."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


@pytest.mark.parametrize('name', ['sst2', 'mrpc', 'rte'])
def test_released_prompts_load(fixtures_dir, name):
  path = fixtures_dir / 'pretrained_prompts_t5_1_1_lm100k_base' / f'{name}.npy'
  prompt = prompts.from_file(path)(KEY, (100, 768), None)
  assert prompt.shape == (100, 768) and prompt.dtype == jnp.float32
  np.testing.assert_array_equal(prompt, np.load(path))
  with pytest.raises(PromptError, match=rf'{name}\.npy has shape \(100, 768\) but the prompt shape is \(100, 512\)'):
    prompts.from_file(str(path))(KEY, (100, 512), None)


def test_small_fixture_prompt(fixtures_dir):
  path = fixtures_dir / 'prompt_5x256.npy'
  raw = np.load(path)  # float64 on disk: cast to float32 without complaint
  np.testing.assert_array_equal(prompts.from_file(str(path))(KEY, (5, 256), None), raw.astype(np.float32))
  with pytest.raises(PromptError, match=r'prompt_5x256\.npy has shape \(5, 256\) but the prompt shape is \(6, 256\)'):
    prompts.from_file(str(path))(KEY, (6, 256), None)


@pytest.mark.parametrize('dtype', [np.float16, np.float64, jnp.bfloat16])
def test_from_file_casts_floats(tmp_path, dtype):
  values = np.random.default_rng(2).normal(size=(3, 4)).astype(dtype)
  np.save(tmp_path / 'p.npy', values)
  prompt = prompts.from_file(str(tmp_path / 'p.npy'))(KEY, (3, 4), None)
  assert prompt.dtype == jnp.float32
  np.testing.assert_array_equal(prompt, values.astype(np.float32))


def test_from_file_gfile_path():
  tf = pytest.importorskip('tensorflow')
  values = np.arange(6, dtype=np.float32).reshape(2, 3)
  tf.io.gfile.makedirs('ram://prompts')
  with tf.io.gfile.GFile('ram://prompts/p.npy', 'wb') as f:
    np.save(f, values)
  np.testing.assert_array_equal(prompts.from_file('ram://prompts/p.npy')(KEY, (2, 3), None), values)


@pytest.mark.parametrize('dtype', [np.int32, np.complex64, np.bool_])
def test_from_file_rejects_non_float(tmp_path, dtype):
  np.save(tmp_path / 'p.npy', np.ones((2, 3), dtype))
  with pytest.raises(PromptError, match=rf'p\.npy has dtype {np.dtype(dtype)}; a prompt must be a float array'):
    prompts.from_file(str(tmp_path / 'p.npy'))(KEY, (2, 3), None)


def test_from_file_never_unpickles(tmp_path):
  import pickle  # pylint: disable=g-import-not-at-top
  marker = tmp_path / 'executed'
  np.save(tmp_path / 'obj.npy', np.array([_Bomb(str(marker))], dtype=object), allow_pickle=True)
  with pytest.raises(PromptError, match=r'obj\.npy without unpickling'):
    prompts.from_file(str(tmp_path / 'obj.npy'))(KEY, (1, 1), None)
  (tmp_path / 'raw.npy').write_bytes(pickle.dumps(_Bomb(str(marker))))
  with pytest.raises(PromptError, match=r'raw\.npy is not a \.npy file'):
    prompts.from_file(str(tmp_path / 'raw.npy'))(KEY, (1, 1), None)
  assert not marker.exists()


def test_from_file_errors(tmp_path):
  with pytest.raises(PromptError, match=r'prompt file .*nope\.npy does not exist'):
    prompts.from_file(str(tmp_path / 'nope.npy'))(KEY, (2, 3), None)
  np.savez(tmp_path / 'p.npz', a=np.ones((2, 3), np.float32))
  with pytest.raises(PromptError, match=r'p\.npz is an \.npz archive'):
    prompts.from_file(str(tmp_path / 'p.npz'))(KEY, (2, 3), None)
  bad = np.ones((2, 3), np.float32)
  bad[1, 2] = np.nan
  np.save(tmp_path / 'nan.npy', bad)
  with pytest.raises(PromptError, match=r'nan\.npy contains 1 non-finite values'):
    prompts.from_file(str(tmp_path / 'nan.npy'))(KEY, (2, 3), None)
  (tmp_path / 'cut.npy').write_bytes((tmp_path / 'nan.npy').read_bytes()[:140])
  with pytest.raises(PromptError, match=r'cut\.npy without unpickling or it is damaged'):
    prompts.from_file(str(tmp_path / 'cut.npy'))(KEY, (2, 3), None)


def test_from_array():
  values = jnp.arange(12, dtype=jnp.bfloat16).reshape(3, 4)
  prompt = prompts.from_array(values)(KEY, (3, 4), None)
  assert prompt.dtype == jnp.float32
  np.testing.assert_array_equal(prompt, np.arange(12).reshape(3, 4))
  with pytest.raises(PromptError, match=r'from_array: the array has shape \(3, 4\) but the prompt shape is '
                     r'\(4, 3\)'):
    prompts.from_array(values)(KEY, (4, 3), None)
  with pytest.raises(PromptError, match='the array has dtype object'):
    prompts.from_array(np.array([[None]]))(KEY, (1, 1), None)


# ----- gin -----


@gin.configurable('receive', module='test_prompt_initializers')
def _receive(prompt_init=gin.REQUIRED):
  return prompt_init


@gin.configurable('make_array', module='test_prompt_initializers')
def _make_array(rows=2, cols=EMBED):
  return np.full((rows, cols), 0.25, np.float32)


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


GIN_CASES = {
    'random_uniform': ('@jaxprompt.methods.random_uniform()\njaxprompt.methods.random_uniform.scale = 0.01',
                       prompts.random_uniform(0.01)),
    'normal': ('@methods.normal()\nmethods.normal.stddev = 0.5\nmethods.normal.truncated = True',
               prompts.normal(0.5, truncated=True)),
    'sampled_vocab': ('@prompt_init/jaxprompt.methods.sampled_vocab()\n'
                      'prompt_init/jaxprompt.methods.sampled_vocab.population_size = 10', prompts.sampled_vocab(10)),
    'from_samples_of_embeddings': ('@methods.from_samples_of_embeddings()\n'
                                   'methods.from_samples_of_embeddings.start = 5', prompts.sampled_vocab(start=5)),
    'class_labels': ("@class_labels()\nclass_labels.labels = ['False', 'True']\n"
                     'class_labels.fallback = @random_uniform()', None),
    'from_text': ("@jaxprompt.methods.from_text()\njaxprompt.methods.from_text.text = 'great movie'", None),
    'from_array': ('@from_array()\nfrom_array.array = @make_array()', prompts.from_array(_make_array())),
}


@pytest.mark.parametrize('name', sorted(GIN_CASES))
def test_gin_selects_each_factory(clean_gin, name):
  config, expected = GIN_CASES[name]
  gin.parse_config(f'receive.prompt_init = {config}')
  init = _receive()
  table = id_table(32128)
  if expected is None:  # text initialisers with gin default vocabulary (T5's packaged one)
    expected = {
        'class_labels': prompts.class_labels(['False', 'True'], fallback=prompts.random_uniform()),
        'from_text': prompts.from_text('great movie')
    }[name]
  got = init(KEY, (2, EMBED), table)
  assert got.shape == (2, EMBED) and got.dtype == jnp.float32
  np.testing.assert_array_equal(got, expected(KEY, (2, EMBED), table))


def test_gin_from_file(clean_gin, fixtures_dir):
  path = fixtures_dir / 'prompt_5x256.npy'
  gin.parse_config(f"receive.prompt_init = @from_file()\nfrom_file.path = '{path}'")
  np.testing.assert_array_equal(_receive()(KEY, (5, 256), None), np.load(path).astype(np.float32))
