"""SuperGLUE tasks that need more than `preprocessors.glue`: ReCoRD, WSC (two formats) and DPR.

The output strings equal T5's (`t5.data.preprocessors.record / wsc / wsc_simple /
definite_pronoun_resolution_simple`):

  ReCoRD: "record query: <query> entities: <e1>, <e2> passage: <passage>" -> one example per gold answer.
  WSC:    "wsc text: # He # told * Tom * ..." -> "True"/"False" (the spans marked in the text).
  WSC simple (train / eval, as T5 uses for its SuperGLUE scores): "wsc: Tom told Bob *he* ..." -> "Bob",
          the referent as free text; eval compares it with the candidate (`postprocessors.wsc_simple`).
  DPR simple: "wsc: Bob asked Tom if *he* can ..." -> "Tom".
"""
from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

from jaxprompt.data.preprocessors import UNKNOWN_LABEL, label_text

# ------------------------------------------------------------------------------------------------- ReCoRD


def _record_passage(passage: tf.Tensor) -> tf.Tensor:
  # Highlights are separated by "\n@highlight\n"; they become sentences ("A. B" or "A! B").
  passage = tf.strings.regex_replace(passage, r"(\.|\?|\!|\"|\')\n@highlight\n", r'\1 ')
  return tf.strings.regex_replace(passage, r'\n@highlight\n', '. ')


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD: one text-to-text example per gold answer (one with target "<unk>" when there is none).

  Every output keeps the full `answers` list (metrics take the max over it) and `idx/passage`,
  `idx/query` (metrics count each query once).
  """

  def expand(x: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
    inputs = tf.strings.join([
        'record query:', x['query'], 'entities:',
        tf.strings.reduce_join(x['entities'], separator=', '), 'passage:',
        _record_passage(x['passage'])
    ], separator=' ')
    answers = x['answers']
    targets = tf.cond(tf.size(answers) > 0, lambda: answers, lambda: tf.constant([UNKNOWN_LABEL]))
    constant = {
        'idx/passage': x['idx']['passage'],
        'idx/query': x['idx']['query'],
        'inputs': inputs,
        'answers': answers,
    }
    return tf.data.Dataset.from_tensor_slices(targets).map(lambda t: {**constant, 'targets': t})

  return dataset.flat_map(expand)


# ------------------------------------------------------------------------------------------------- WSC


def _escape_regex(text: tf.Tensor) -> tf.Tensor:
  """Backslash-escapes RE2 metacharacters so a span like "(he)" is matched literally."""
  return tf.strings.regex_replace(text, r'([\\.^$|?*+()\[\]{}])', r'\\\1')


def _mark_span(text: tf.Tensor, span_text: tf.Tensor, word_index: tf.Tensor, mark: str) -> tf.Tensor:
  """Surrounds `span_text` starting at space-separated word `word_index` with `mark` ("a * b * c")."""
  pattern = tf.strings.join([r'^((?:\S+\s){', tf.strings.as_string(word_index), '})(', _escape_regex(span_text), ')'])
  return tf.strings.regex_replace(text, pattern, r'\1' + mark + r' \2 ' + mark)


@seqio.map_over_dataset
def wsc(x: Mapping[str, tf.Tensor]):
  """WSC as classification: noun span in "* *", pronoun span in "# #", target "True"/"False"."""
  text = _mark_span(x['text'], x['span1_text'], x['span1_index'], '*')
  # Marking span 1 added two words ("*" twice) before span 2 when span 1 comes first.
  span2_index = x['span2_index'] + 2 * tf.cast(x['span1_index'] < x['span2_index'], x['span2_index'].dtype)
  text = _mark_span(text, x['span2_text'], span2_index, '#')
  return {
      'inputs': tf.strings.join(['wsc', 'text:', text], separator=' '),
      'targets': label_text(x['label'], ['False', 'True']),
      'idx': x['idx'],
  }


# Two WSC texts whose span2_index does not point at the pronoun; T5 hard-codes their blanked text.
_WSC_SPECIAL_CASES = (
    ('The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite '
     'loud. "Good for him," he said. ',
     'The boy continued to whip the pony , and eventually the pony threw him over. John laughed out quite '
     'loud. "Good for X ," he said.'),
    ('When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in '
     'an iron safe . Some day they might want to use it , but really for now, what more could they wish '
     'for?', 'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic pebble in '
     'an iron safe . Some day they might want to use X , but really for now, what more could they wish '
     'for?'),
)


def _wsc_blank_pronoun(x: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """The WSC text with the pronoun (word `span2_index`, split on single spaces) replaced by "X"."""
  words = tf.strings.split(x['text'], sep=' ')
  index = x['span2_index']
  # The pronoun is never the first word in WSC; a bad index would silently blank the wrong word.
  checks = [
      tf.debugging.assert_greater(index, 0, message='WSC span2_index must be > 0'),
      tf.debugging.assert_less(index, tf.size(words, out_type=index.dtype),
                               message='WSC span2_index is past the end of the text'),
  ]
  with tf.control_dependencies(checks):
    index = tf.identity(index)

  def blank() -> tf.Tensor:
    check = tf.debugging.assert_equal(words[index], x['span2_text'],
                                      message='WSC word at span2_index is not span2_text')
    with tf.control_dependencies([check]):
      return tf.strings.join([
          tf.strings.reduce_join(words[:index], separator=' '), 'X',
          tf.strings.reduce_join(words[index + 1:], separator=' ')
      ], separator=' ')

  cases = [(tf.equal(x['text'], text), lambda out=out: tf.constant(out)) for text, out in _WSC_SPECIAL_CASES]
  return tf.case(cases, default=blank, exclusive=True)


def wsc_simple(dataset: tf.data.Dataset, label: str = 'wsc:', correct_referent_only: bool = False) -> tf.data.Dataset:
  """WSC as referent generation: "wsc: ... *he* ..." -> span1_text (the candidate referent).

  Args:
    dataset: raw `super_glue/wsc.fixed` examples.
    label: first word of the inputs.
    correct_referent_only: keep only examples whose candidate is the right referent (label 1); T5 trains on
      these and evaluates on all, comparing the generated referent with the candidate.

  Returns:
    {'inputs', 'targets', 'label', 'idx'}.
  """

  def fn(x):
    pronoun = tf.strings.join([' *', x['span2_text'], '* '])
    text = tf.strings.regex_replace(_wsc_blank_pronoun(x), ' X ', pronoun)
    return {
        'inputs': tf.strings.join([label, text], separator=' '),
        'targets': tf.reshape(x['span1_text'], []),
        'label': x['label'],
        'idx': x['idx'],
    }

  if correct_referent_only:
    dataset = dataset.filter(lambda x: tf.cast(x['label'], tf.bool))
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset
def dpr_simple(x: Mapping[str, tf.Tensor], label: str = 'wsc:'):
  """Definite Pronoun Resolution in the WSC-simple format: first pronoun starred, target = right candidate."""
  starred = tf.strings.regex_replace(x['sentence'], tf.strings.join([r' (', x['pronoun'], r')( |\.|,)']), r' *\1*\2',
                                     replace_global=False)
  return {
      'inputs': tf.strings.join([label, starred], separator=' '),
      'targets': tf.gather(x['candidates'], x['label']),
  }
