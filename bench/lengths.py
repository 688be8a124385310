"""Realistic input lengths for the speed benchmarks: SST-2- and BoolQ-shaped examples of random token ids.

No dataset text is available offline, so lengths come from published statistics, converted from words to T5
SentencePiece tokens with a factor measured on text written for this file (`CALIBRATION`), in the style of
each dataset, with the shipped vocabulary (`jaxprompt/assets/t5_cc_all_32000_sentencepiece.model`).

Sources (words are whitespace-separated; SST text is lower-cased and tokenized, "it 's a charming , often ..."):

  SST-2 (GLUE; Socher et al. 2013 sentences and their parse-tree phrases)
    train       67,349 phrases. Mean 9.6 words: the GLUE SST-2 `dataset_info` (Hugging Face
                `stanfordnlp/sst2` card) gives 4,690,022 bytes for 67,349 train examples, which is 53.6
                characters of text per example after the 16 bytes of idx/label/offset per row, and 53.6 / 5.58
                characters per word (the dev split's ratio, below) = 9.6 words.
    validation  872 full sentences. Mean 19 words (the figure usually quoted for SST-2 sentences, e.g. Kim
                2014, Table 1); the same card gives 106,361 bytes / 872 = 106.0 characters of text per
                example, i.e. 5.58 characters per word.
  BoolQ (Clark et al. 2019; SuperGLUE)
    question    mean 8.9 tokens; passage mean 108 tokens (Clark et al. 2019, dataset analysis, as given in the
                issue). Cross-check: the SuperGLUE BoolQ `dataset_info` gives 6,173,303 bytes for 9,427 train
                examples, 635 characters of question + passage each, 5.4 characters per token.

Measured factors (`MEASURED`): 1.23 T5 pieces per word for SST-style text (split punctuation costs two pieces,
"▁" and ","), 1.29 for encyclopedia prose, 1.08 for BoolQ-style questions. Cross-check from characters instead of
words (4.04 characters per piece on the review text, 4.50 on the prose): SST-2 train 53.6 / 4.04 = 13.3 pieces
per phrase against 9.6 x 1.23 = 11.8 from words; BoolQ 141 pieces of question + passage against 149. The two
routes agree within 12%, a few tokens per example next to the 100-token prompt.

Not published, so assumed and stated: the spreads and bounds (`std`, `min`, `max` below). Each length is a
lognormal with the stated mean and std (in words), clipped to [min, max], converted to tokens with the measured
factor and rounded. T5's format adds the task prefix ("sst2 sentence: ..." and "boolq passage: ... question:
...", as `jaxprompt/data/tasks.py` builds them) and EOS; inputs are truncated to the feature length as seqio
does (the last id is always EOS = 1). Targets are the real label pieces ("negative"/"positive",
"False"/"True") plus EOS, chosen uniformly. Everything is seeded.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import numpy as np

VOCAB_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'jaxprompt', 'assets',
                          't5_cc_all_32000_sentencepiece.model')
EOS = 1
FIRST_ID, LAST_ID = 2, 32000  # random ids in [2, 32000): no pad (0), no EOS (1), no sentinel

# Calibration text written for this file (not taken from any dataset), one style per kind of field.
CALIBRATION = {
    # Movie-review sentences in SST's form: lower case, PTB tokens split by spaces.
    'review': """
the film is a quiet , patient study of two brothers who never learned how to talk to each other .
it 's funny in places , but the jokes arrive so slowly that you can see every punch line coming .
a handsome production that ca n't decide whether it wants to be a thriller or a romance .
the lead actress gives a warm and surprisingly tough performance .
by the final act , the story has lost whatever momentum it had in the opening hour .
there 's nothing new here , yet the director handles the familiar material with real affection .
an overlong , muddled mess .
what begins as a clever satire of office life turns into a tired sitcom with nowhere to go .
the score is lovely , the photography is lovely , and the script is as thin as paper .
few movies this year have made me laugh this hard or think this much on the way home .
it never quite earns the tears it so obviously wants from its audience .
a small , honest movie about growing up in a town that does n't care whether you stay or leave .
the dialogue sounds like it was written by someone who has never heard people speak .
smart , sharp and often very moving .
i kept waiting for the characters to do something interesting , and they never did .
the animation is gorgeous , with every frame full of tiny jokes for the grown-ups in the audience .
despite a strong cast , the picture feels cold and mechanical from start to finish .
it 's the kind of sequel that reminds you why you loved the original in the first place .
too long by half an hour and far too pleased with its own cleverness .
a gentle , generous comedy that trusts its viewers to keep up .
""",
    # Encyclopedia-style passages, as BoolQ's Wikipedia paragraphs.
    'encyclopedia': """
The river rises in the western hills at an elevation of about 1,200 metres and flows east for 340 kilometres
before reaching the coast. Its basin covers roughly 14,000 square kilometres, most of it farmland, and supports
several towns that grew up around nineteenth-century mills. Seasonal floods were common until a series of dams
was completed in 1968; since then the lower valley has been drained and used for orchards and vegetables.
The first permanent bridge was built of timber in 1834 and replaced by a stone arch forty years later.
The cathedral was begun in the late twelfth century on the site of an earlier church that had burned. Work
stopped several times for lack of money, and the west front was not finished until 1410. The building is known
for its tall windows, which survived the wars of the seventeenth century largely intact, and for a clock that
has struck the hours since 1502. Restoration in the 1980s removed layers of soot and revealed painted ceilings
that had been hidden for centuries.
The species is a medium-sized songbird found in open woodland across much of the northern hemisphere. Adults
are about 15 centimetres long, with brown upper parts and a pale, streaked breast. It feeds mainly on insects
in summer and on seeds in winter, and it often joins mixed flocks outside the breeding season. Numbers fell
sharply during the twentieth century, probably because of changes in farming, but have been stable since 2000.
The company was founded in 1921 as a maker of sewing machines and moved into electrical appliances after the
Second World War. By 1960 it employed more than 9,000 people in three countries. A series of poor investments
in the 1990s led to heavy losses, and the firm was bought by a larger competitor in 2004. Its brand is still
used for a range of kitchen products sold in Europe and South America.
""",
    # Yes/no questions in BoolQ's form: lower case, no question mark.
    'question': """
is the river longer than the canal that runs beside it
does the cathedral still have its original windows
can you see the northern lights from the south of the country
is the songbird the same species as the one found in north america
did the company make cars before it made appliances
was the bridge built before the railway reached the town
is a tomato a fruit or a vegetable
do all of the islands belong to the same country
has the team ever won the championship two years in a row
is the film based on a true story
""",
}

# Measured with the shipped vocabulary on CALIBRATION (re-measured by `calibrate()`; tests check they agree).
MEASURED = {'review': 1.230, 'encyclopedia': 1.292, 'question': 1.079}


@dataclasses.dataclass(frozen=True)
class WordLengths:
  """A length distribution in words: lognormal with this mean and std, clipped to [min, max]."""
  mean: float
  std: float
  min: int
  max: int
  style: str  # which CALIBRATION factor turns words into tokens
  source: str


@dataclasses.dataclass(frozen=True)
class DatasetShape:
  """How one dataset's examples look in T5's text-to-text format."""
  name: str
  fields: tuple[tuple[str, WordLengths], ...]  # (field key, length) in input order, after the task prefix
  prefix: str  # the task name T5 puts first
  labels: tuple[str, ...]
  source: str


SHAPES = {
    'sst2_train': DatasetShape(
        'sst2_train', (('sentence',
                        WordLengths(
                            9.6, 7.5, 1, 52, 'review', 'GLUE SST-2 train: 53.6 characters per phrase (dataset_info) / '
                            '5.58 characters per word; std and bounds assumed')),), 'sst2', ('negative', 'positive'),
        'GLUE SST-2 train split (sentences and phrases)'),
    'sst2_validation':
        DatasetShape('sst2_validation',
                     (('sentence',
                       WordLengths(
                           19.0, 9.0, 2, 52, 'review', 'SST-2 sentences, mean 19 words (Kim 2014); 106.0 characters '
                           'per sentence (dataset_info); std and bounds assumed')),), 'sst2', ('negative', 'positive'),
                     'GLUE SST-2 validation split (full sentences)'),
    'boolq': DatasetShape(
        'boolq', (('passage',
                   WordLengths(108.0, 50.0, 15, 700, 'encyclopedia',
                               'BoolQ passages, mean 108 tokens (Clark et al. 2019); std and bounds '
                               'assumed')),
                  ('question',
                   WordLengths(8.9, 2.5, 3, 25, 'question',
                               'BoolQ questions, mean 8.9 tokens (Clark et al. 2019); std and bounds '
                               'assumed'))), 'boolq', ('False', 'True'),
        'SuperGLUE BoolQ (train and validation have the same shape)'),
}


# --------------------------------------------------------------------------------------------------------------
# Measuring the vocabulary.
# --------------------------------------------------------------------------------------------------------------
@functools.cache
def processor(path: str = VOCAB_FILE):
  """The shipped SentencePiece model (the one seqio.SentencePieceVocabulary wraps: same ids)."""
  import sentencepiece  # pylint: disable=import-outside-toplevel
  return sentencepiece.SentencePieceProcessor(model_file=path)


def encode(text: str, path: str = VOCAB_FILE) -> list[int]:
  return list(processor(path).encode(text))


def tokens_per_word(text: str, path: str = VOCAB_FILE) -> float:
  """T5 pieces per whitespace word over the non-empty lines of `text` (each line encoded on its own)."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return sum(len(encode(line, path)) for line in lines) / sum(len(line.split()) for line in lines)


@dataclasses.dataclass(frozen=True)
class Calibration:
  factors: dict[str, float]  # style -> tokens per word
  prefix_tokens: dict[str, int]  # dataset -> tokens of the format words around the fields
  label_ids: dict[str, tuple[tuple[int, ...], ...]]  # dataset -> per label, its ids with EOS


def format_words(shape: DatasetShape) -> str:
  """The words T5's format adds around the fields: 'sst2 sentence:' or 'boolq passage: ... question:'."""
  return ' '.join([shape.prefix] + [f'{key}:' for key, _ in shape.fields])


def calibrate(path: str = VOCAB_FILE) -> Calibration:
  factors = {style: round(tokens_per_word(text, path), 3) for style, text in CALIBRATION.items()}
  prefix = {name: len(encode(format_words(s), path)) for name, s in SHAPES.items()}
  labels = {name: tuple(tuple(encode(label, path)) + (EOS,) for label in s.labels) for name, s in SHAPES.items()}
  return Calibration(factors, prefix, labels)


# --------------------------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------------------------
def lognormal_params(mean: float, std: float) -> tuple[float, float]:
  """(mu, sigma) of the normal whose exp has this mean and std."""
  sigma2 = np.log1p((std / mean)**2)
  return float(np.log(mean) - sigma2 / 2), float(np.sqrt(sigma2))


def sample_words(spec: WordLengths, n: int, rng: np.random.Generator) -> np.ndarray:
  """n word counts: lognormal(mean, std), clipped to [min, max], as floats."""
  mu, sigma = lognormal_params(spec.mean, spec.std)
  return np.clip(rng.lognormal(mu, sigma, n), spec.min, spec.max)


def sample_lengths(shape: DatasetShape, n: int, seed: int, cal: Calibration,
                   max_inputs: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """(input lengths with prefix and EOS, truncated to max_inputs; label index per example)."""
  rng = np.random.default_rng(seed)
  total = np.full(n, cal.prefix_tokens[shape.name] + 1, np.int64)  # format words + EOS
  for _, spec in shape.fields:
    total += np.maximum(1, np.rint(sample_words(spec, n, rng) * cal.factors[spec.style])).astype(np.int64)
  labels = rng.integers(0, len(shape.labels), n)
  return np.minimum(total, max_inputs), labels


def synthesize(shape: DatasetShape, n: int, seed: int, cal: Calibration,
               max_inputs: int = 512) -> list[dict[str, np.ndarray]]:
  """n examples {'inputs', 'targets'}: random ids of the sampled lengths ending in EOS, real label ids."""
  lengths, labels = sample_lengths(shape, n, seed, cal, max_inputs)
  rng = np.random.default_rng(seed + 1)
  out = []
  for length, label in zip(lengths, labels):
    ids = rng.integers(FIRST_ID, LAST_ID, int(length), dtype=np.int32)
    ids[-1] = EOS
    out.append({'inputs': ids, 'targets': np.asarray(cal.label_ids[shape.name][label], np.int32)})
  return out


def describe(lengths: Sequence[int]) -> dict[str, float]:
  x = np.asarray(lengths, np.float64)
  return {
      'mean': float(x.mean()), 'std': float(x.std()), 'p50': float(np.median(x)), 'p90': float(np.percentile(x, 90)),
      'max': float(x.max()), 'min': float(x.min())
  }
