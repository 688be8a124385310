"""The encoder demo: the shipped tiny BERT read by the package's Hugging Face reader and by transformers, its masked-LM
objective and head, pretraining's `--family encoder` path end to end (a few steps), and the downstream task files."""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jaxprompt.checkpoints import hf_encoder_names, readers
from jaxprompt.checkpoints.hf_encoder import hf_encoder_config, load_hf_encoder
from jaxprompt.data import conll, custom
from jaxprompt.data.hf_vocab import HfVocabulary
from jaxprompt.demo import data, encoder_model, encoder_tasks, families, vocabularies
from jaxprompt.errors import CheckpointError, ConfigError
from jaxprompt.models.masked_lm import mask_tokens, masked_lm_loss

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
ASSET = pathlib.Path(encoder_model.asset_dir())
FILES = {'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'pretraining.json', 'README.md'}

pytestmark = pytest.mark.usefixtures('clean_gin_and_demo_tasks')

# ------------------------------------------------------------------------------------------ shipped model


def test_shipped_folder_is_a_bert_the_hf_reader_loads():
  assert {p.name for p in ASSET.iterdir()} == FILES  # no dot-files: everything survives a wheel build
  hf = json.loads((ASSET / 'config.json').read_text())
  assert hf['architectures'] == ['BertForMaskedLM'] and hf['model_type'] == 'bert' and hf['tie_word_embeddings']
  config = hf_encoder_config(ASSET)
  assert config == encoder_model.ENCODER_CONFIG  # pretraining recorded the architecture it trained
  params, read = load_hf_encoder(ASSET)
  assert read == config and params['pooler']['kernel'].shape == (128, 128)
  same = readers.load(str(ASSET), config)  # the family-dispatching reader (what `jaxprompt train` reads)
  np.testing.assert_array_equal(same['token_embedder']['embedding'], params['token_embedder']['embedding'])
  tensors = safetensors.numpy.load_file(ASSET / 'model.safetensors')
  head = {k for k in tensors if k.startswith('cls.')}
  assert head == {e.key for e in hf_encoder_names.mlm_head_plan(config).values()}  # decoder tied: not stored
  assert all(t.dtype == np.float32 for t in tensors.values())
  assert 0.5e6 < sum(t.size for t in tensors.values()) < 2e6 and (ASSET / 'model.safetensors').stat().st_size < 8e6


def test_shipped_tokenizer_is_a_lowercase_wordpiece_with_bert_specials():
  vocab = encoder_model.vocabulary()
  assert isinstance(vocab, HfVocabulary) and vocab is encoder_model.vocabulary(str(ASSET))
  assert [vocab.decode([i]) for i in range(5)] == [''] * 5  # special tokens, skipped when decoding
  assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, None, None)
  assert vocab.specials_around == ((2,), (3,))  # [CLS] ... [SEP]
  assert vocab.vocab_size <= encoder_model.MAX_VOCAB
  text = data.heldout_examples('topic', 1, seed=1)[0][0]
  ids = vocab.encode(text)
  assert vocab.encode(text.upper()) == ids and vocab.unk_id not in ids and vocab.decode(ids) == text
  assert vocab.encode('the [MASK] was great')[1] == 4  # a special token in a text is that token


def test_shipped_model_beats_the_unigram_baseline_as_recorded():
  info = encoder_model.read_info()
  assert '--family encoder' in info['pretraining']['command']
  assert info['pretraining']['gin_files'] == ['runs/demo_encoder_pretrain.gin']
  assert info['pretraining']['seconds'] < 20 * 60  # the budget
  validation = info['validation']
  assert validation['masked_lm/accuracy'] > validation['unigram_baseline/accuracy'] + 20


def test_encoder_family_errors_and_no_demo_yet(tmp_path):
  with pytest.raises(CheckpointError, match='holds no encoder demo model'):
    encoder_model.encoder_model_dir(str(tmp_path))
  with pytest.raises(CheckpointError, match='tokenizer.json does not exist'):
    encoder_model.vocabulary(str(tmp_path))
  assert 'encoder' in families.FAMILIES and 'encoder' not in families.demo_families()  # the heads come first
  with pytest.raises(ConfigError, match='only BERT folders'):
    hf_encoder_names.bert_hf_config(encoder_model.ENCODER_CONFIG.replace(position_offset=2, max_positions=130))


@pytest.mark.slow
def test_shipped_model_matches_transformers():
  """transformers' tokenizer, BertModel (hidden states, pooler) and BertForMaskedLM (logits) read the folder as
  jaxprompt does."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from jaxprompt.demo import mlm_pretrain
  from jaxprompt.models.bert import BertEncoder
  texts = [t for t, _ in data.heldout_examples('sentiment', 2, seed=1)]
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(ASSET))
  batch = tokenizer(texts, padding=True, return_tensors='pt')
  vocab = encoder_model.vocabulary()
  assert batch.input_ids[0][batch.attention_mask[0] > 0].tolist() == vocab.encode_with_specials(texts[0])
  valid = batch.attention_mask.numpy() > 0
  with torch.no_grad():
    bare = transformers.BertModel.from_pretrained(str(ASSET)).eval()(**batch)
    logits = transformers.BertForMaskedLM.from_pretrained(str(ASSET)).eval()(**batch).logits.numpy()
  params, config = load_hf_encoder(ASSET)
  tokens = jnp.asarray(batch.input_ids.numpy())
  encode = jax.jit(lambda p, t, v: BertEncoder(config).apply({'params': p}, t, valid=v, enable_dropout=False))
  hidden, pooled = encode(params, tokens, jnp.asarray(valid))
  np.testing.assert_allclose(np.asarray(hidden)[valid], bare.last_hidden_state.numpy()[valid], atol=1e-4)
  np.testing.assert_allclose(np.asarray(pooled), bare.pooler_output.numpy(), atol=1e-4)
  pretrained, _ = encoder_model.read_pretrained()
  ours = jax.jit(lambda p, t, v: mlm_pretrain.mlm_logits(config, p, t, v))(pretrained, tokens, jnp.asarray(valid))
  np.testing.assert_allclose(np.asarray(ours)[valid], logits[valid], atol=1e-3)


@pytest.mark.slow
def test_shipped_model_predicts_masked_words_of_fresh_text():
  """On texts from a stream neither pretraining nor its validation read, masked-LM accuracy stays well above the
  unigram baseline (always the commonest token) on the same masked positions."""
  from jaxprompt.demo import mlm_pretrain
  params, config = encoder_model.read_pretrained()
  vocab = encoder_model.vocabulary()
  tokens, valid = mlm_pretrain.encode_texts(vocab, data.iter_review_texts(1000, seed=7, split='fresh'), 48)
  scores = mlm_pretrain.held_out_scores(config, params, tokens, valid, vocab.vocab_size, 0.15,
                                        mlm_pretrain.most_frequent_token(tokens, valid), seed=7)
  assert scores['masked_lm/tokens'] > 1500
  assert scores['masked_lm/accuracy'] > scores['unigram_baseline/accuracy'] + 20, scores


# ------------------------------------------------------------------------------------------ objective


def test_mask_tokens_follows_berts_recipe():
  """15% of the eligible tokens selected, never another; of those 80% [MASK], 10% random ordinary, 10% kept."""
  tokens = jax.random.randint(jax.random.PRNGKey(0), (200, 500), 5, 400)
  eligible = jnp.arange(500)[None] < 400
  inputs, selected = jax.jit(lambda r: mask_tokens(r, tokens, eligible, mask_id=4, first_ordinary=5, vocab_size=400))(
      jax.random.PRNGKey(1))
  inputs, selected, tokens = np.asarray(inputs), np.asarray(selected), np.asarray(tokens)
  assert not selected[:, 400:].any() and (inputs[:, 400:] == tokens[:, 400:]).all()
  assert (inputs[~selected] == tokens[~selected]).all()
  assert abs(selected.mean() / 0.8 - 0.15) < 0.005
  picked, original = inputs[selected], tokens[selected]
  masked, changed = picked == 4, (picked != 4) & (picked != original)
  assert abs(masked.mean() - 0.8) < 0.01 and abs(changed.mean() - 0.1 * 394 / 395) < 0.01
  assert picked[changed].min() >= 5 and picked[changed].max() < 400


def test_masked_lm_loss_counts_only_selected_tokens():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7))
  targets = jnp.array([[1, 2, 3], [4, 5, 6]])
  selected = jnp.array([[True, False, True], [False, False, True]])
  loss, counts = masked_lm_loss(logits, targets, selected)
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  nll = [-log_probs[b, i, targets[b, i]] for b, i in ((0, 0), (0, 2), (1, 2))]
  np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-6)
  hits = sum(int(np.argmax(logits[b, i]) == targets[b, i]) for b, i in ((0, 0), (0, 2), (1, 2)))
  assert counts['count'] == 3 and counts['correct'] == hits


# ------------------------------------------------------------------------------------------ pretraining


def test_wordpiece_vocabulary_is_reproducible(tmp_path):
  info = encoder_model.train_vocabulary(0, str(tmp_path / 'tokenizer.json'))
  assert (tmp_path / 'tokenizer.json').read_bytes() == (ASSET / 'tokenizer.json').read_bytes()  # same seed
  assert (tmp_path / 'tokenizer_config.json').read_bytes() == (ASSET / 'tokenizer_config.json').read_bytes()
  assert info['size'] == HfVocabulary(str(tmp_path)).vocab_size and info['mask_id'] == 4
  assert vocabularies.WORDPIECE_SPECIALS == ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')


@pytest.mark.slow
def test_pretrain_encoder_family_end_to_end(tmp_path):
  """`--family encoder`: the shared recipe into a BertForMaskedLM folder the reader loads, never overwritten."""
  from jaxprompt.demo import pretrain
  out = tmp_path / 'model'
  argv = [
      '--family', 'encoder', '--output',
      str(out), '--steps', '3', '--eval_examples', '20', '--log_dir',
      str(tmp_path / 'logs'), '--gin.BATCH_SIZE=4'
  ]
  assert pretrain.main(argv) == 0
  assert {p.name for p in out.iterdir()} == FILES - {'README.md'}
  assert (out / 'tokenizer.json').read_bytes() == (ASSET / 'tokenizer.json').read_bytes()
  info = json.loads((out / encoder_model.INFO_FILE).read_text())
  assert info['pretraining']['steps'] == 3 and info['pretraining']['batch_size'] == 4
  assert set(info['validation']) == {'masked_lm/accuracy', 'unigram_baseline/accuracy'}
  params, config = load_hf_encoder(out)
  assert config == encoder_model.ENCODER_CONFIG
  shipped, _ = load_hf_encoder(ASSET)
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, shipped)
  assert pretrain.main(['--family', 'encoder', '--output', str(out), '--steps', '1']) == 2  # never overwritten


# ------------------------------------------------------------------------------------------ downstream tasks


def test_task_files_parse_with_their_label_sets(tmp_path):
  written = encoder_tasks.write_tasks(str(tmp_path), sizes={'train': 40, 'validation': 10})
  assert set(written) == {
      f'{kind}_{split}' for kind in ('classification', 'tagging') for split in ('train', 'validation')
  }
  texts, labels = custom.read_examples([written['classification_train']], format=None, inputs_field='inputs',
                                       targets_field='targets', has_header=None,
                                       label_set=encoder_tasks.CLASSIFICATION_LABELS)
  assert len(texts) == 40 and set(labels) == set(encoder_tasks.CLASSIFICATION_LABELS)  # balanced: each label 4 times
  assert texts[0] in {text for text, _ in encoder_tasks.classification_examples(40)}
  sentences = conll.read_conll(written['tagging_train'], encoder_tasks.TAGS)
  assert len(sentences) == 40 and len(conll.read_conll(written['tagging_validation'])) == 10
  assert set(conll.tag_list(sentences)) == set(encoder_tasks.TAGS)
  nouns = {noun: f'B-{topic.upper()}' for topic, words in data.TOPICS.items() for noun in words}
  opinions = {adjective: encoder_tasks.OPINIONS[s] for s, words in data.SENTIMENTS.items() for adjective in words}
  for sentence in sentences:  # a topic's noun is its entity, an adjective (after its intensifier) an opinion
    for word, tag in zip(sentence.words, sentence.tags):
      if word in nouns:
        assert tag == nouns[word]
      elif word in opinions:
        assert tag in (f'B-{opinions[word]}', f'I-{opinions[word]}')
      else:
        assert tag == 'O' or (word in data.INTENSIFIERS and tag in ('B-POS', 'B-NEG'))
  words = 'the soup was really wonderful , and the band seemed dull .'.split()
  assert encoder_tasks.tag_words(words) == [
      'O', 'B-FOOD', 'O', 'B-POS', 'I-POS', 'O', 'O', 'O', 'B-MUSIC', 'O', 'B-NEG', 'O'
  ]


def test_task_examples_are_deterministic_per_split():
  first = encoder_tasks.classification_examples(20, split='validation')
  assert first == encoder_tasks.classification_examples(20, split='validation')
  assert first != encoder_tasks.classification_examples(20, split='train')
  assert encoder_tasks.tagging_sentences(5) == encoder_tasks.tagging_sentences(5)
