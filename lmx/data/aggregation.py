"""RULER's aggregation tasks: common-word and frequent-word extraction.

Hsieh et al. 2024 ("RULER: What's the Real Context Size of Your
Long-Context Language Models?", Sec. 3.3, aggregation) and their code,
NVIDIA/RULER ``scripts/data/synthetic/common_words_extraction.py`` (CWE)
and ``freq_words_extraction.py`` (FWE). The words are random lowercase
strings drawn here (RULER's CWE reads English word lists; its FWE draws
coded words the same way as here). The answer lists several words
separated by spaces, as variable_tracking's does, in an order the prompt
fixes (RULER scores the words in any order; lmx scores exact match).

Common words (``common_words``): RULER's ``get_example`` puts
``num_cw`` common words ``common_repeats`` times each and the other words
``uncommon_repeats`` times each in one shuffled list, numbered ``1. w1 2.
w2 ...``; below 4096 tokens its repeats are 6 and 1 (above, 30 and 3) with
10 common words. Here ``CWE_TOP`` = 4 common words 6 times each and n
uncommon words once each (RULER's short-context repeats; fewer common
words than its 10, for models trained from scratch on short lengths). The
list is shuffled uniformly and numbered with ``CWE_DIGITS`` = 4 digits
(``0001. abcde ``: a fixed width keeps the length linear in n, so a list
holds at most 9999 entries). Then ``what are the 4 most common words? ``;
the answer is the common words in the order of their first entry. They
appear 6 times and every other word once: no tie by construction.

Frequent words (``frequent_words``): RULER's ``gen_text`` gives the word of
rank k (k = 1, 2, ...) ``floor(N k^-alpha / zeta(alpha))`` copies
(``alpha`` = 2), makes rank 1 the noise ``...`` and answers ranks 2 to 4
(``vocab[1:4]``), in rank order. Here N = 16 (n + 4) words of
``FWE_LETTERS`` = 4 letters (RULER: 6), the noise is ``....`` (four dots,
as RULER's prompt names it, ``ignore the dots '....'``; its code writes
three) and it also takes the ``N - sum(floor(...))`` words the floors
leave, so that the text has exactly N words. The words are shuffled
uniformly (RULER shuffles with its fixed ``random_seed``, the same
permutation for every sample of a size). Then ``what are the 3 most
frequent words? ``; the answer is ranks 2, 3, 4. No tie by construction:
with N >= 80, ``N (1/16 - 1/25) / zeta(2) > 1``, so rank 4 has at least one
copy more than rank 5 (and ranks 2 > 3 > 4 likewise).
"""

from __future__ import annotations

import math

LETTERS = 'abcdefghijklmnopqrstuvwxyz'
CWE_TOP = 4
CWE_COMMON_REPEATS = 6
CWE_RARE_REPEATS = 1
CWE_LETTERS = 5
CWE_DIGITS = 4
CWE_ENTRY = '{:0' + str(CWE_DIGITS) + 'd}. {} '
CWE_QUESTION = f'what are the {CWE_TOP} most common words? '
CWE_MAX_ENTRIES = 10**CWE_DIGITS - 1
FWE_ALPHA = 2.0
FWE_ZETA = math.pi**2 / 6  # zeta(2), RULER's scipy.special.zeta(alpha)
FWE_LETTERS = 4
FWE_NOISE = '.' * FWE_LETTERS
FWE_BLOCK = 16     # words per unit of n
FWE_BASE = 4       # blocks besides n: N = FWE_BLOCK * (n + FWE_BASE)
FWE_TOP = 3
FWE_QUESTION = f'what are the {FWE_TOP} most frequent words? '


def distinct_words(rng, count: int, letters: int) -> list[str]:
  """``count`` distinct words of ``letters`` uniform lowercase letters."""
  words: list[str] = []
  seen: set[str] = set()
  while len(words) < count:
    draws = rng.integers(0, len(LETTERS), size=(count - len(words), letters))
    for row in draws:
      w = ''.join(LETTERS[i] for i in row)
      if w not in seen:
        seen.add(w)
        words.append(w)
  return words


def cwe_entries(n: int) -> int:
  """Entries of the common-words list at length n."""
  return CWE_TOP * CWE_COMMON_REPEATS + n * CWE_RARE_REPEATS


def cwe_limit(tc) -> int:
  """The largest n whose list numbers fit ``CWE_DIGITS`` digits."""
  del tc
  return (CWE_MAX_ENTRIES - CWE_TOP * CWE_COMMON_REPEATS) // CWE_RARE_REPEATS


def cwe_limit_message(tc, n: int, limit: int) -> str:
  del tc
  return (f'common_words length {n} needs a list of {cwe_entries(n)} '
          f'entries, but its {CWE_DIGITS}-digit numbers go to '
          f'{CWE_MAX_ENTRIES}: use lengths up to {limit}')


def common_words(rng, n, tc, depth=None):
  """(prompt, answer) of common-word extraction at length n (the module)."""
  del tc, depth
  words = distinct_words(rng, CWE_TOP + n, CWE_LETTERS)
  common, rare = words[:CWE_TOP], words[CWE_TOP:]
  items = common * CWE_COMMON_REPEATS + rare * CWE_RARE_REPEATS
  items = [items[i] for i in rng.permutation(len(items))]
  text = ''.join(CWE_ENTRY.format(i + 1, w) for i, w in enumerate(items))
  first = sorted(common, key=items.index)
  return text + CWE_QUESTION, ' '.join(first)


def fwe_counts(total: int) -> list[int]:
  """Copies of ranks 1, 2, ...: ``floor(total k^-alpha / zeta(alpha))``
  while at least 1, the noise (rank 1) taking what the floors leave."""
  counts = []
  k = 1
  while True:
    c = int(total * k**-FWE_ALPHA / FWE_ZETA)
    if c < 1:
      break
    counts.append(c)
    k += 1
  counts[0] += total - sum(counts)
  return counts


def frequent_words(rng, n, tc, depth=None):
  """(prompt, answer) of frequent-word extraction at length n (the module)."""
  del tc, depth
  counts = fwe_counts(FWE_BLOCK * (n + FWE_BASE))
  ranked = [FWE_NOISE] + distinct_words(rng, len(counts) - 1, FWE_LETTERS)
  items = [w for w, c in zip(ranked, counts) for _ in range(c)]
  items = [items[i] for i in rng.permutation(len(items))]
  return (''.join(w + ' ' for w in items) + FWE_QUESTION,
          ' '.join(ranked[1:1 + FWE_TOP]))


def cwe_extra() -> int:
  entry = len(CWE_ENTRY.format(1, 'a' * CWE_LETTERS))
  return (CWE_TOP * CWE_COMMON_REPEATS * entry + len(CWE_QUESTION)
          + CWE_TOP * (CWE_LETTERS + 1) - 1)


def cwe_per() -> int:
  return CWE_RARE_REPEATS * len(CWE_ENTRY.format(1, 'a' * CWE_LETTERS))


def fwe_per() -> int:
  return FWE_BLOCK * (FWE_LETTERS + 1)


def fwe_extra() -> int:
  return (FWE_BASE * FWE_BLOCK * (FWE_LETTERS + 1) + len(FWE_QUESTION)
          + FWE_TOP * (FWE_LETTERS + 1) - 1)
