"""Algorithmic tasks for length generalization, generated on the fly.

The tasks of Deletang et al. 2023 ("Neural Networks and the Chomsky
Hierarchy"), Ruoss et al. 2023 ("Randomized Positional Encodings Boost Length
Generalization of Transformers") and Kazemnejad et al. 2023 ("The Impact of
Positional Encoding on Length Generalization in Transformers"), plus passkey
retrieval (the format of Mohtashami & Jaggi 2023, "Landmark Attention",
shrunk to bytes and short training lengths), and recall and state-tracking
tasks (induction heads, MQAR, flip-flop, RULER's multi-key needle and
variable tracking; see below). A model is trained from scratch
on lengths ``1..L`` and tested on every length up to ``5L`` (the default
grid; configs/tasks/induction_heads.py tests up to ``64L``, every 64th).

Every example is readable ASCII in byte tokens (``lmx.data.tokenizer``:
ids 0..255 are bytes, 256 = EOD). One example is the token sequence

    s = prompt + answer [+ EOD]

(EOD ends the answer when ``task.eos`` is True, the default, so the model
must also say where a variable-length answer stops). The model reads
``inputs = s[:-1]`` and predicts ``targets = s[1:]``; the loss weight is 1
exactly on the targets that are answer tokens (the answer bytes and the
final EOD) and 0 on the prompt and on padding. Padding (to the right) uses
EOD tokens.

The length ``n`` of an example is the size of the task's input, and every
format is linear in it: ``len(prompt + answer) = per * n + extra``.

==================  =====================================  ===============
task                example (n = 3; EOD not shown)         n counts
==================  =====================================  ===============
copy                ``cab=cab``                            symbols
reverse             ``cab=bac``                            symbols
duplicate_string    ``cab=cabcab``                         symbols
sort                ``cab=abc`` (byte order)               symbols
binary_addition     ``110+011=1001`` (LSB first, fixed     bits of each
                    width: n bits each, sum n+1 bits)      operand
parity              ``101=0`` (``1`` iff an odd number     bits
                    of ones)
modular_arithmetic  ``3+4*2=`` then ``1`` (mod 5; ``*``    operands
                    before ``+ -``; one digit, m <= 10)
associative_recall  ``a1b7c3|b=7`` (distinct keys)         key/value pairs
passkey             3 filler sentences of 16 bytes with    filler
                    ``the pass key is 12345. `` inserted   sentences
                    after ``round(depth * n)`` of them,
                    then ``what is the pass key? 12345``
==================  =====================================  ===============

Binary addition is written least significant bit first (operands and sum),
so each answer bit depends only on bits already seen; the sum always has
``n + 1`` bits (its top bit is the final carry, possibly 0), so every
example of a length has the same number of tokens.

Symbols (copy, reverse, duplicate_string, sort, keys of associative_recall)
are the first ``task.alphabet_size`` of ``SYMBOLS`` (a-z then A-Z).

More tasks of Deletang et al. 2023, each as their released code
(github.com/google-deepmind/neural_networks_chomsky_hierarchy, ``tasks/``)
defines its input, its output and what n counts; only the characters, the
separators and, where the answer's length varies, a fixed width are lmx's:

===========================  ==============================  ===============
task                         example (n = 3; EOD not shown)  n counts
===========================  ==============================  ===============
even_pairs                   ``011=1`` (``1`` iff an odd     bits
                             number of ``01``/``10`` pairs)
cycle_navigation             ``-0-=3`` (moves ``-`` ``0``    moves
                             ``+`` on a cycle of 5 from 0)
odds_first                   ``011=101`` (the bits at odd    bits
                             0-based indices, then even)
missing_duplicate_string     ``0?_=0`` (ww, one bit hidden   input symbols
                             as ``?``; ``_`` pads odd n)
solve_equation               ``x=3|x=3`` (mod 5, ``+ -``     equation chars
                             and brackets; n = 7:            (with ``=`` and
                             ``(x-1)=3|x=4``)                the value)
binary_multiplication        ``1*1=1#0`` (LSB first; the     input chars
                             product, ``#``, ``0`` padding   (both numbers
                             to n)                           and ``*``)
compute_sqrt                 ``111=010`` (floor square       bits
                             root, MSB first, n bits)
bucket_sort                  ``402=024`` (digits 0-4)        digits
stack_manipulation           ``01b=110#`` (a stack, bottom   input symbols
                             first, then ``-`` pop, ``a``
                             ``b`` push 0 1; the final
                             stack top first, ``#``, ``0``
                             padding to n + 1)
modular_arithmetic_brackets  ``(3)=3`` (mod 5, ``+ -`` and   expression
                             brackets; n = 5: ``(1-3)=3``)   chars
===========================  ==============================  ===============

Where the original output has variable length (binary_multiplication,
stack_manipulation) it is, as in that code, the value, a termination token
(``#``) and ``0`` padding to a fixed width; lmx scores the padding too,
which the original masks out. compute_sqrt writes the root in n bits (its
leading ``n // 2`` are always 0) where the original writes ``ceil(n / 2)``,
since every format here is linear in n.

Recall and state tracking, each as its paper and, where released, its
generator define it (the makers' docstrings cite both); only the
characters, the separators and the place of the answer are lmx's:

=================  ===================================  =================
task               example (n = 3; EOD not shown)       n counts
=================  ===================================  =================
induction_heads    ``g=hk=`` then ``h`` (the symbol      symbols (not the
                   after the trigger ``=``; the          trigger)
                   sequence ends with the trigger)
mqar               ``pZnBuA|pnu=ZBA`` (distinct keys     key/value pairs
                   a-z, values A-Z; every key queried
                   once, in random order)
flip_flop          ``w0w1i0r=1`` (write/ignore/read a    instructions
                   bit; the final read's bit)            before the final
                                                         read
multi_key_niah     3 filler sentences with 4 lines       filler
                   ``the pass key of hib is 55928. ``    sentences
                   at RULER's depths, then ``what is
                   the pass key of hib? 55928``
variable_tracking  3 filler sentences with ``VAR WQNHI   filler
                   = 87165. `` ``VAR BBAEV = VAR         sentences
                   WQNHI. `` ... (4 hops), then ``which
                   variables are assigned the value
                   87165? `` and the 5 variables in
                   chain order, ``WQNHI BBAEV QXNPZ
                   SQOOY HVRAK``
=================  ===================================  =================

The papers score a model where their generators ask: H3 and Zoology right
after each query inside the sequence, flip-flop at every read. Here the
answer is one suffix: mqar lists its queries, then all the values;
flip_flop answers its final read, the earlier reads showing their correct
bit in the prompt. mqar splits the first ``task.alphabet_size`` symbols in
halves, keys and values, as Zoology splits its vocabulary, so n is at most
``alphabet_size // 2``. ``task.flip_flop_p_ignore`` is the p of FFL(p).

Reasoning and aggregation in a haystack, each in a module of its own:
BABILong-style bAbI stories among the passkey filler (``babilong_qa1``,
``babilong_qa2``, ``babilong_count``; ``lmx.data.babilong``: facts of 26
bytes, n counts filler sentences) and RULER's common- and frequent-word
extraction (``common_words``, ``frequent_words``; ``lmx.data.aggregation``:
n counts words seen once, and blocks of 16 words). Their prompts end with a
question (``? ``); a several-word answer is written as variable_tracking's.

Randomness: a training batch is a pure function of ``(config.seed, step)``
(``lmx.data.windows.step_rng``) and each example draws its own length
uniformly from ``[train_min_length, train_max_length]``. An evaluation batch
is a pure function of ``(seed, length, depth)``.
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np

from lmx.data import aggregation, babilong, tokenizer
from lmx.data.windows import step_rng
from lmx.positions import sample_positions
from lmx.positions import sampling as sampling_lib

SYMBOLS = string.ascii_lowercase + string.ascii_uppercase
PAD = tokenizer.EOD
# Passkey filler: five sentences of exactly 16 bytes, used in turn.
FILLER = ('grass is green. ', 'sky is so blue. ', 'the sun shines. ',
          'here we go now. ', 'back and forth. ')
SENTENCE = 16
KEY_LINE = 'the pass key is {}. '
QUESTION = 'what is the pass key? '
KEY_DIGITS = 5
OPERATORS = '+-*'
CYCLE = 5          # cycle_navigation: states on the cycle (fixed in the paper)
MOVES = '-0+'      # cycle_navigation: a step of -1, 0, +1
BUCKETS = 5        # bucket_sort: digits 0..BUCKETS-1 (5 in the paper)
MISSING = '?'      # missing_duplicate_string: the hidden symbol
EMPTY = '_'        # missing_duplicate_string: pads an odd length
END = '#'          # binary_multiplication, stack_manipulation: value ends
POP, PUSH0, PUSH1 = '-', 'a', 'b'  # stack_manipulation actions
TRIGGER = '='      # induction_heads: the special token (H3's copy prefix)
WRITE, IGNORE, READ = 'w', 'i', 'r'  # flip_flop instructions
NIAH_KEYS = 4      # multi_key_niah: key lines (RULER niah_multikey_1)
NAME_LETTERS = 3   # multi_key_niah: letters of a key's name
NIAH_LINE = 'the pass key of {} is {}. '
NIAH_QUESTION = 'what is the pass key of {}? '
# RULER's needle depths: 40 percentages, 0 to 100.
RULER_DEPTHS = tuple(int(d) for d in np.round(np.linspace(0, 100, 40)))
VT_HOPS = 4        # variable_tracking: hops of the chain (RULER vt)
VT_LETTERS = 5     # variable_tracking: letters of a variable's name
VT_VALUE = 'VAR {} = {}. '
VT_HOP = 'VAR {} = VAR {}. '
VT_QUESTION = 'which variables are assigned the value {}? '
# Tasks whose prompt ends with a question (``? ``) instead of ``=``.
QUESTION_TASKS = ('passkey', 'multi_key_niah', 'variable_tracking',
                  'babilong_qa1', 'babilong_qa2', 'babilong_count',
                  'common_words', 'frequent_words')
# Tasks whose operands and answer are digits mod task.modulus.
MODULAR = ('modular_arithmetic', 'solve_equation',
           'modular_arithmetic_brackets')


@dataclasses.dataclass(frozen=True)
class Task:
  """One task: how to draw an example and how long its tokens are.

  ``make(rng, n, task_cfg, depth) -> (prompt, answer)`` strings;
  ``len(prompt + answer) == per * n + extra`` for every example;
  ``limit(task_cfg)``: the largest n the format can express (None: no limit);
  ``limit_message(task_cfg, n, limit)``: why n is too long, where the reason
  is not the number of distinct keys (None: it is).
  """
  name: str
  make: Callable
  per: int
  extra: int
  limit: Callable = lambda tc: None
  doc: str = ''
  limit_message: Callable | None = None


def _symbols(rng, n, tc) -> str:
  return ''.join(rng.choice(list(SYMBOLS[:tc.alphabet_size]), size=n))


def _bits(rng, n) -> str:
  return ''.join(rng.choice(['0', '1'], size=n))


def _copy(rng, n, tc, depth=None):
  x = _symbols(rng, n, tc)
  return x + '=', x


def _reverse(rng, n, tc, depth=None):
  x = _symbols(rng, n, tc)
  return x + '=', x[::-1]


def _duplicate(rng, n, tc, depth=None):
  x = _symbols(rng, n, tc)
  return x + '=', x + x


def _sort(rng, n, tc, depth=None):
  x = _symbols(rng, n, tc)
  return x + '=', ''.join(sorted(x))


def _lsb_bits(value: int, width: int) -> str:
  return ''.join(str((value >> i) & 1) for i in range(width))


def _binary_addition(rng, n, tc, depth=None):
  a, b = _bits(rng, n), _bits(rng, n)
  total = sum(int(c) << i for i, c in enumerate(a))
  total += sum(int(c) << i for i, c in enumerate(b))
  return f'{a}+{b}=', _lsb_bits(total, n + 1)


def _parity(rng, n, tc, depth=None):
  x = _bits(rng, n)
  return x + '=', str(x.count('1') % 2)


def modular_value(operands: Sequence[int], operators: str, m: int) -> int:
  """Value mod m of ``o0 op0 o1 op1 ...`` with ``*`` before ``+`` and ``-``."""
  total, sign, term = 0, 1, operands[0]
  for op, x in zip(operators, operands[1:]):
    if op == '*':
      term = term * x % m
    else:
      total = (total + sign * term) % m
      sign, term = (1 if op == '+' else -1), x
  return (total + sign * term) % m


def _modular(rng, n, tc, depth=None):
  xs = [int(v) for v in rng.integers(0, tc.modulus, size=n)]
  ops = ''.join(rng.choice(list(OPERATORS), size=n - 1))
  expr = str(xs[0]) + ''.join(o + str(x) for o, x in zip(ops, xs[1:]))
  return expr + '=', str(modular_value(xs, ops, tc.modulus))


def _associative_recall(rng, n, tc, depth=None):
  keys = rng.choice(list(SYMBOLS[:tc.alphabet_size]), size=n, replace=False)
  values = rng.integers(0, 10, size=n)
  q = int(rng.integers(0, n))
  pairs = ''.join(f'{k}{v}' for k, v in zip(keys, values))
  return f'{pairs}|{keys[q]}=', str(values[q])


def passkey_index(n: int, depth: float) -> int:
  """Filler sentences before the key line: ``round(depth * n)``, half up."""
  return int(np.floor(depth * n + 0.5))


def _passkey(rng, n, tc, depth=None):
  key = _digits(rng, KEY_DIGITS)
  at = (int(rng.integers(0, n + 1)) if depth is None
        else passkey_index(n, depth))
  return _haystack(n, [at], [KEY_LINE.format(key)]) + QUESTION, key


# Tasks of Deletang et al. 2023, "Neural Networks and the Chomsky Hierarchy"
# (ICLR 2023), as google-deepmind/neural_networks_chomsky_hierarchy defines
# them under tasks/regular, tasks/dcf and tasks/cs. That code draws from
# np.random and random; here every draw comes from ``rng``.


def _positive_bits(rng, width: int) -> int:
  """Uniform in ``[1, 2**width - 1]`` (any width: drawn bit by bit)."""
  while True:
    value = int(_bits(rng, width), 2)
    if value:
      return value


def _even_pairs(rng, n, tc, depth=None):
  """Even pairs (regular; tasks/regular/even_pairs.py).

  n uniform bits; the answer is ``1`` iff the number of unequal neighbours
  (``01`` or ``10``) is odd, the original's class, written as a digit.
  """
  x = _bits(rng, n)
  odd = sum(a != b for a, b in zip(x, x[1:])) % 2
  return x + '=', str(odd)


def _cycle_navigation(rng, n, tc, depth=None):
  """Cycle navigation (regular; tasks/regular/cycle_navigation.py).

  n moves drawn uniformly from left, stay, right (the original's tokens
  0, 1, 2, a step of token - 1), written ``-`` ``0`` ``+``; the answer is
  the final state on a cycle of ``CYCLE`` = 5 starting at 0, one digit.
  """
  steps = rng.integers(0, 3, size=n)
  moves = ''.join(MOVES[s] for s in steps)
  return moves + '=', str(int(np.sum(steps - 1)) % CYCLE)


def _odds_first(rng, n, tc, depth=None):
  """Odds first (context-sensitive; tasks/cs/odds_first.py).

  n uniform bits (the paper's binary alphabet); the answer is the bits at
  odd 0-based indices followed by those at even ones: the original's
  ``concatenate([x[:, 1::2], x[:, ::2]])``. (That file's docstring example,
  ``00110101 -> 0100 0111``, puts the even indices first; the code, which
  produced the paper's data, is followed here.)
  """
  x = _bits(rng, n)
  return x + '=', x[1::2] + x[::2]


def _missing_duplicate(rng, n, tc, depth=None):
  """Missing duplicate string (context-sensitive;
  tasks/cs/missing_duplicate_string.py).

  n counts every input symbol: a uniform bit string w of ``n // 2`` bits is
  written twice, one position of ``ww`` drawn uniformly is hidden (the
  original's token 2, here ``?``) and an odd n ends with the empty token
  (3, here ``_``); the answer is the hidden bit. At n = 1 the original has
  input ``1`` and answer ``1``, and so does this.
  """
  if n == 1:
    return '1=', '1'
  w = _bits(rng, n // 2)
  ww = w + w
  at = int(rng.integers(0, len(ww)))
  shown = ww[:at] + MISSING + ww[at + 1:] + EMPTY * (n % 2)
  return shown + '=', ww[at]


def bracket_expression(rng, length: int, m: int) -> tuple[str, int]:
  """An expression of exactly ``length`` characters over digits ``0..m-1``,
  ``+ -`` and brackets, and its value mod m, drawn as
  tasks/dcf/modular_arithmetic_brackets.py's
  ``generate_one_expression_and_result(m, length, mult=False)`` draws it:
  ``d``, ``-d``, ``(d)``, ``(-d)`` for lengths 1 to 4, else
  ``(left op right)`` with ``len(left)`` uniform in ``[1, length - 4]``."""
  if length < 1:
    raise ValueError(f'An expression has length >= 1, got {length}.')
  if length <= 4:
    d = int(rng.integers(0, m))
    text = ('{}', '-{}', '({})', '(-{})')[length - 1].format(d)
    return text, (-d if length % 2 == 0 else d) % m
  left = int(rng.integers(1, length - 3))
  a, va = bracket_expression(rng, left, m)
  b, vb = bracket_expression(rng, length - 3 - left, m)
  if int(rng.integers(0, 2)) == 0:
    return f'({a}+{b})', (va + vb) % m
  return f'({a}-{b})', (va - vb) % m


def _modular_brackets(rng, n, tc, depth=None):
  """Modular arithmetic with brackets (deterministic context-free;
  tasks/dcf/modular_arithmetic_brackets.py, ``mult=False`` as in the paper).

  n counts the characters of the expression (``bracket_expression``);
  the answer is its value mod ``task.modulus`` (5 in the paper), one digit.
  """
  expr, value = bracket_expression(rng, n, tc.modulus)
  return expr + '=', str(value)


def _solve_equation(rng, n, tc, depth=None):
  """Solve equation (deterministic context-free; tasks/dcf/solve_equation.py).

  n counts the characters of the equation ``expr=v``: a bracket expression
  of ``n - 2`` characters (``bracket_expression``, no ``*``, so the
  solution is unique) whose value mod ``task.modulus`` is v, with one digit
  replaced by ``x``, chosen as the original does: a uniform position, then
  the first digit from there on, cyclically. The answer is that digit.
  The prompt ends ``|x=`` (lmx's separator; the original's input is the
  equation alone). For n < 3 the original's input is n zeros and its
  answer 0, and so is this one's.
  """
  if n < 3:
    return '0' * n + '|x=', '0'
  expr, value = bracket_expression(rng, n - 2, tc.modulus)
  at = int(rng.integers(0, len(expr)))
  while not expr[at].isdigit():
    at = (at + 1) % len(expr)
  equation = f'{expr[:at]}x{expr[at + 1:]}={value}'
  return equation + '|x=', expr[at]


def _binary_multiplication(rng, n, tc, depth=None):
  """Binary multiplication (context-sensitive;
  tasks/cs/binary_multiplication.py).

  n counts the input: two numbers and ``*``. Their widths are
  ``k`` uniform in ``[1, n - 2]`` and ``n - 1 - k``, each number uniform in
  ``[1, 2**width - 1]`` written in exactly its width, least significant bit
  first. The answer is the original's output of n tokens: the product, LSB
  first without trailing zeros, the termination token (2, here ``#``) and
  ``0`` padding. For n <= 2 the original's input is a number in
  ``[0, 2**n - 2]`` in n bits (no ``*``) and its output n - 1 zeros then
  the termination token; so is this.
  """
  if n <= 2:
    x = int(rng.integers(0, 2**n - 1))
    return _lsb_bits(x, n) + '=', '0' * (n - 1) + END
  k = int(rng.integers(1, n - 1))
  a, b = _positive_bits(rng, k), _positive_bits(rng, n - 1 - k)
  prod = format(a * b, 'b')[::-1]
  answer = prod + END + '0' * (n - 1 - len(prod))
  return f'{_lsb_bits(a, k)}*{_lsb_bits(b, n - 1 - k)}=', answer


def _compute_sqrt(rng, n, tc, depth=None):
  """Compute sqrt (context-sensitive; tasks/cs/compute_sqrt.py).

  A number uniform in ``[1, 2**n - 1]`` in n bits, most significant first;
  the answer is its floor square root, most significant first, in n bits:
  the original's ``ceil(n / 2)`` bits after ``n // 2`` zeros (its leading
  bits, always 0), so that the length stays linear in n.
  """
  x = _positive_bits(rng, n)
  return format(x, f'0{n}b') + '=', format(math.isqrt(x), f'0{n}b')


def _bucket_sort(rng, n, tc, depth=None):
  """Bucket sort (context-sensitive; tasks/cs/bucket_sort.py).

  n digits uniform in ``0..BUCKETS-1`` (the paper's vocabulary of 5); the
  answer is them sorted.
  """
  x = ''.join(str(d) for d in rng.integers(0, BUCKETS, size=n))
  return x + '=', ''.join(sorted(x))


def _stack_manipulation(rng, n, tc, depth=None):
  """Stack manipulation (deterministic context-free;
  tasks/dcf/stack_manipulation.py).

  n counts the input: a stack of ``s`` uniform bits, s uniform in
  ``[1, n - 1]``, given bottom to top, then ``n - s`` actions drawn
  uniformly from pop (``-``), push 0 (``a``) and push 1 (``b``) (the
  original's 2, 3, 4); a pop on an empty stack does nothing. The answer is
  the original's output of n + 1 tokens: the final stack top to bottom,
  the termination token (2, here ``#``) and ``0`` padding. At n = 1 the
  original's input is one bit and its output that bit then the
  termination token; so is this.
  """
  if n == 1:
    x = _bits(rng, 1)
    return x + '=', x + END
  s = int(rng.integers(1, n))
  stack = list(_bits(rng, s))
  actions = ''.join(rng.choice([POP, PUSH0, PUSH1], size=n - s))
  final = list(stack)
  for act in actions:
    if act == POP:
      if final:
        final.pop()
    else:
      final.append('0' if act == PUSH0 else '1')
  top_first = ''.join(final[::-1])
  answer = top_first + END + '0' * (n - len(top_first))
  return ''.join(stack) + actions + '=', answer


# Recall and state tracking: induction heads (Olsson et al. 2022; the
# synthetic of Fu et al. 2023, "Hungry Hungry Hippos", that Gu & Dao 2023,
# "Mamba", Sec. 4.1.2, extrapolates), multi-query associative recall
# (Arora et al. 2023, "Zoology"), flip-flop language modeling (Liu et al.
# 2023) and two tasks of RULER (Hsieh et al. 2024): multi-key needle in a
# haystack and variable tracking. Each follows its released generator
# (HazyResearch/safari src/dataloaders/synthetics.py,
# HazyResearch/zoology zoology/data/multiquery_ar.py, NVIDIA/RULER
# scripts/data/synthetic/) or, for flip-flop, the paper's definition.


def _induction_heads(rng, n, tc, depth=None):
  """Induction heads (Mamba Sec. 4.1.2; H3's ``generate_induction_head``
  with one trigger and ``induction_len=1``).

  n uniform symbols (``task.alphabet_size`` of them; H3's ``vocab_size``
  counts its two special tokens, so Mamba's 16 is 14 symbols). The
  trigger (``=``, H3's copy prefix ``=>``) is put before one of the first
  n - 1 of them, drawn uniformly, so that, as in H3, at least one symbol
  follows the target; the sequence ends with the trigger and the answer
  is the target, the symbol after the first trigger. H3's
  ``input_seq_len`` is n + 1 (the trigger takes one of its places). At
  n = 1, where H3 has no example, the trigger precedes the only symbol:
  ``=a=`` answer ``a``.
  """
  x = _symbols(rng, n, tc)
  at = int(rng.integers(0, n - 1)) if n > 1 else 0
  return x[:at] + TRIGGER + x[at:] + TRIGGER, x[at]


def mqar_vocabulary(tc) -> tuple[str, str]:
  """(keys, values) of mqar: the first ``task.alphabet_size`` symbols split
  in halves, as Zoology splits its vocabulary (keys below
  ``vocab_size // 2``, values above)."""
  half = int(tc.alphabet_size) // 2
  return SYMBOLS[:half], SYMBOLS[half:2 * half]


def _mqar(rng, n, tc, depth=None):
  """Multi-query associative recall (Arora et al. 2023, "Zoology";
  zoology/data/multiquery_ar.py).

  n pairs of a key and a value, keys and values each drawn without
  replacement from their half of the symbols (``mqar_vocabulary``); then
  every key once, as Zoology queries every key (one query per pair, which
  also keeps the width fixed), in a uniformly random order. The answer is
  the values of the queried keys, in query order. Zoology puts each query
  at a power-law gap among random tokens and asks for its value right
  after it; here the queries follow ``|`` together and the values come
  after ``=``.
  """
  keys_from, values_from = mqar_vocabulary(tc)
  keys = rng.choice(list(keys_from), size=n, replace=False)
  values = rng.choice(list(values_from), size=n, replace=False)
  order = rng.permutation(n)
  pairs = ''.join(k + v for k, v in zip(keys, values))
  return (pairs + '|' + ''.join(keys[order]) + '=',
          ''.join(values[order]))


def _flip_flop(rng, n, tc, depth=None):
  """Flip-flop language (Liu et al. 2023, "Exposing Attention Glitches
  with Flip-Flop Language Modeling", FFL(p)).

  n instructions, each followed by a bit, then a final read ``r``: the
  first is a write ``w``; the others are ignore ``i`` with probability
  ``p = task.flip_flop_p_ignore`` and write or read with ``(1 - p) / 2``
  each (the paper's FFL(p): 0.8 for training, 0.98 sparse, 0.1 dense).
  Write and ignore bits are uniform; a read's bit is the last written bit.
  The answer is the bit of the final read (the paper scores every read;
  here the earlier reads show their correct bit in the prompt). The
  paper's length T counts tokens: T = 2 (n + 1).
  """
  p = float(tc.flip_flop_p_ignore)
  ops = [WRITE] + list(rng.choice([WRITE, IGNORE, READ], size=n - 1,
                                  p=[(1 - p) / 2, p, (1 - p) / 2]))
  bits = rng.integers(0, 2, size=n)
  state, text = '', []
  for op, bit in zip(ops, bits):
    if op == WRITE:
      state = str(bit)
    text.append(op + (state if op == READ else str(bit)))
  return ''.join(text) + READ + '=', state


def _names(rng, count: int, letters: int, alphabet: str) -> list[str]:
  """``count`` distinct names of ``letters`` uniform letters each."""
  names: list[str] = []
  while len(names) < count:
    name = ''.join(rng.choice(list(alphabet), size=letters))
    if name not in names:
      names.append(name)
  return names


def _digits(rng, count: int) -> str:
  return ''.join(str(d) for d in rng.integers(0, 10, size=count))


def _haystack(n: int, slots: Sequence[int], lines: Sequence[str]) -> str:
  """n filler sentences with ``lines[j]`` before filler sentence
  ``slots[j]`` (``slots`` sorted; n: after the last one)."""
  out, j = [], 0
  for i in range(n + 1):
    while j < len(lines) and slots[j] == i:
      out.append(lines[j])
      j += 1
    if i < n:
      out.append(FILLER[i % len(FILLER)])
  return ''.join(out)


def _multi_key_niah(rng, n, tc, depth=None):
  """Multi-key needle in a haystack (RULER, Hsieh et al. 2024,
  ``niah_multikey_1``; scripts/data/synthetic/niah.py).

  ``NIAH_KEYS`` = 4 key lines ``the pass key of <name> is <digits>. ``
  (distinct names of 3 lowercase letters, ``KEY_DIGITS`` uniform digits)
  among n filler sentences (``FILLER``, the passkey haystack): as RULER
  places its needles, 4 distinct depths are drawn from its 40 depths
  (``RULER_DEPTHS``, 0 to 100%) and the lines go before filler sentence
  ``n * depth // 100``, in order of depth. Then ``what is the pass key of
  <name>? `` for one of the 4 keys, drawn uniformly; the answer is its
  digits. ``depth`` is ignored.
  """
  names = _names(rng, NIAH_KEYS, NAME_LETTERS, string.ascii_lowercase)
  lines = [NIAH_LINE.format(name, _digits(rng, KEY_DIGITS))
           for name in names]
  depths = rng.choice(len(RULER_DEPTHS), size=NIAH_KEYS, replace=False)
  slots = sorted(n * RULER_DEPTHS[d] // 100 for d in depths)
  q = int(rng.integers(0, NIAH_KEYS))
  key = lines[q][-2 - KEY_DIGITS:-2]
  return _haystack(n, slots, lines) + NIAH_QUESTION.format(names[q]), key


def _variable_tracking(rng, n, tc, depth=None):
  """Variable tracking (RULER, Hsieh et al. 2024, ``vt``: one chain of 4
  hops in a noise haystack; scripts/data/synthetic/variable_tracking.py).

  Five distinct variables of 5 uppercase letters; the statements
  ``VAR X1 = v. ``, ``VAR X2 = VAR X1. `` ... ``VAR X5 = VAR X4. `` with v
  uniform in ``[10000, 99998]`` (RULER's ``randint(10000, 99999)``) are put,
  in chain order, before 5 distinct filler sentences drawn uniformly among
  the n (RULER's ``random.sample``; for n < 5, where that fails, drawn
  with replacement). Then ``which variables are assigned the value v? ``;
  the answer is the 5 variables in chain order, separated by spaces.
  ``depth`` is ignored.
  """
  names = _names(rng, VT_HOPS + 1, VT_LETTERS, string.ascii_uppercase)
  value = int(rng.integers(10000, 99999))
  lines = [VT_VALUE.format(names[0], value)] + [
      VT_HOP.format(names[j + 1], names[j]) for j in range(VT_HOPS)]
  if n >= len(lines):
    slots = sorted(rng.choice(n, size=len(lines), replace=False))
  else:
    slots = sorted(rng.integers(0, n, size=len(lines)))
  return (_haystack(n, [int(s) for s in slots], lines)
          + VT_QUESTION.format(value), ' '.join(names))


TASKS: dict[str, Task] = {t.name: t for t in (
    Task('copy', _copy, 2, 1, doc='x=x'),
    Task('reverse', _reverse, 2, 1, doc='x=reversed x'),
    Task('duplicate_string', _duplicate, 3, 1, doc='x=xx'),
    Task('sort', _sort, 2, 1, doc='x=sorted x'),
    Task('binary_addition', _binary_addition, 3, 3,
         doc='a+b=a+b, little-endian bits'),
    Task('parity', _parity, 1, 2, doc='bits=parity'),
    Task('modular_arithmetic', _modular, 2, 1, doc='expression=value mod m'),
    Task('associative_recall', _associative_recall, 2, 4,
         limit=lambda tc: tc.alphabet_size, doc='pairs|key=value'),
    Task('passkey', _passkey, SENTENCE,
         len(KEY_LINE.format('0' * KEY_DIGITS)) + len(QUESTION) + KEY_DIGITS,
         doc='filler with the key line, question=key'),
    Task('even_pairs', _even_pairs, 1, 2, doc='bits=odd number of 01/10'),
    Task('cycle_navigation', _cycle_navigation, 1, 2,
         doc='moves=final state on a cycle of 5'),
    Task('odds_first', _odds_first, 2, 1,
         doc='bits=odd-index bits then even-index bits'),
    Task('missing_duplicate_string', _missing_duplicate, 1, 2,
         doc='ww with one bit hidden=that bit'),
    Task('solve_equation', _solve_equation, 1, 4,
         doc='equation in x mod m|x=x'),
    Task('binary_multiplication', _binary_multiplication, 2, 1,
         doc='a*b=a*b#0.., little-endian bits'),
    Task('compute_sqrt', _compute_sqrt, 2, 1,
         doc='x=floor(sqrt(x)), big-endian, n bits'),
    Task('bucket_sort', _bucket_sort, 2, 1, doc='digits 0-4=sorted'),
    Task('stack_manipulation', _stack_manipulation, 2, 2,
         doc='stack then actions=final stack, top first#0..'),
    Task('modular_arithmetic_brackets', _modular_brackets, 1, 2,
         doc='bracketed expression=value mod m'),
    Task('induction_heads', _induction_heads, 1, 3,
         doc='symbols with a trigger, trigger=symbol after the trigger'),
    Task('mqar', _mqar, 4, 2, limit=lambda tc: int(tc.alphabet_size) // 2,
         doc='pairs|every key=their values'),
    Task('flip_flop', _flip_flop, 2, 3,
         doc='w/i/r instructions with bits, r=last written bit'),
    Task('multi_key_niah', _multi_key_niah, SENTENCE,
         NIAH_KEYS * len(NIAH_LINE.format('a' * NAME_LETTERS,
                                          '0' * KEY_DIGITS))
         + len(NIAH_QUESTION.format('a' * NAME_LETTERS)) + KEY_DIGITS,
         doc='filler with 4 key lines, question for one=its key'),
    Task('variable_tracking', _variable_tracking, SENTENCE,
         len(VT_VALUE.format('A' * VT_LETTERS, '0' * 5))
         + VT_HOPS * len(VT_HOP.format('A' * VT_LETTERS, 'A' * VT_LETTERS))
         + len(VT_QUESTION.format('0' * 5))
         + (VT_HOPS + 1) * (VT_LETTERS + 1) - 1,
         doc='filler with a chain of assignments, value?=the variables'),
    # BABILong (Kuratov et al. 2024): lmx.data.babilong.
    Task('babilong_qa1', babilong.make('babilong_qa1', _haystack), SENTENCE,
         babilong.extra('babilong_qa1'),
         doc='filler with moves, where is a person?=their last place'),
    Task('babilong_qa2', babilong.make('babilong_qa2', _haystack), SENTENCE,
         babilong.extra('babilong_qa2'),
         doc='filler with moves, pick-ups, drops, where is an object?=place'),
    Task('babilong_count', babilong.make('babilong_count', _haystack),
         SENTENCE, babilong.extra('babilong_count'),
         doc='filler with pick-ups and drops, how many held?=digit'),
    # RULER's aggregation (Hsieh et al. 2024): lmx.data.aggregation.
    Task('common_words', aggregation.common_words, aggregation.cwe_per(),
         aggregation.cwe_extra(), limit=aggregation.cwe_limit,
         limit_message=aggregation.cwe_limit_message,
         doc='numbered list of words, 4 most common?=them, first seen first'),
    Task('frequent_words', aggregation.frequent_words, aggregation.fwe_per(),
         aggregation.fwe_extra(),
         doc='Zipf-distributed words, 3 most frequent?=them, by frequency'),
)}


def get_task(name: str) -> Task:
  if name not in TASKS:
    raise ValueError(f'Unknown task {name!r} (config.task.name). Valid: '
                     f'{", ".join(TASKS)}.')
  return TASKS[name]


def default_config() -> ml_collections.ConfigDict:
  """``config.task``. An empty ``name`` means language modelling."""
  return ml_collections.ConfigDict({
      'name': '',                 # one of TASKS; '' = not a task run
      'train_min_length': 1,      # n of training examples is drawn per
      'train_max_length': 16,     # example, uniformly in [min, max] (= L)
      'eval_lengths': (),         # () = 1..eval_multiple*L every eval_stride
      'eval_multiple': 5,         # longest default eval length, times L
      'eval_stride': 1,           # step of the default eval grid
      'eval_examples': 64,        # per length (per length and depth: passkey)
      'alphabet_size': 8,         # symbols a-z A-Z used (and recall keys)
      'modulus': 5,               # MODULAR tasks; <= 10 (one digit)
      'depths': (0.0, 0.25, 0.5, 0.75, 1.0),  # passkey key depths evaluated
      'flip_flop_p_ignore': 0.8,  # FFL(p): 0.8 train, 0.98 sparse, 0.1 dense
      'eos': True,                # end each answer with EOD, scored too
  })


def sequence_length(tc, n: int) -> int:
  """T: tokens the model reads (``inputs``/``targets`` width) at length n.

  The example itself has ``T + 1`` tokens (prompt, answer, EOD); compare T
  with ``config.train.seq_len`` and ``config.positions.max_position``.
  """
  t = get_task(tc.name)
  return t.per * int(n) + t.extra + int(bool(tc.eos)) - 1


def max_length(tc, seq_len: int) -> int:
  """The largest n whose sequence fits in ``seq_len`` (0 if none does)."""
  t = get_task(tc.name)
  n = (int(seq_len) - t.extra - int(bool(tc.eos)) + 1) // t.per
  return max(n, 0)


def eval_lengths(tc) -> list[int]:
  """``task.eval_lengths``, or the default grid: every ``eval_stride``-th
  length of ``1..eval_multiple * L``, always with 1, L and the last."""
  if tc.eval_lengths:
    return sorted({int(n) for n in tc.eval_lengths})
  top = int(tc.eval_multiple) * int(tc.train_max_length)
  stride = max(1, int(tc.eval_stride))
  grid = set(range(stride, top + 1, stride)) | {1, int(tc.train_max_length),
                                                top}
  return sorted(grid)


def check(config) -> str | None:
  """Why ``config.task`` cannot run, or None (also for ``name=''``: LM)."""
  tc = config.task
  if tc.name == '':
    return None
  if tc.name not in TASKS:
    return (f'Unknown task {tc.name!r} in config.task.name. Valid: '
            f'{", ".join(TASKS)} (or \'\' for language modelling).')
  for field in ('train_min_length', 'train_max_length', 'eval_examples',
                'eval_multiple', 'eval_stride', 'alphabet_size'):
    v = tc[field]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      return f'config.task.{field} must be an integer >= 1, got {v!r}.'
  if tc.train_min_length > tc.train_max_length:
    return (f'config.task.train_min_length={tc.train_min_length} is larger '
            f'than config.task.train_max_length={tc.train_max_length}.')
  if tc.alphabet_size > len(SYMBOLS):
    return (f'config.task.alphabet_size={tc.alphabet_size} is more than the '
            f'{len(SYMBOLS)} printable symbols a task can use (a-z, A-Z): use '
            f'at most {len(SYMBOLS)}.')
  if tc.name == 'sort' and tc.alphabet_size < 2:
    return 'sort needs config.task.alphabet_size >= 2.'
  if tc.name in MODULAR and not (
      isinstance(tc.modulus, int) and 2 <= tc.modulus <= 10):
    return (f'config.task.modulus={tc.modulus!r}: {tc.name} writes '
            'operands and the answer as one digit, so the modulus must be in '
            '[2, 10].')
  if tc.name == 'passkey':
    bad = [d for d in tc.depths
           if not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0]
    if not tc.depths or bad:
      return ('config.task.depths must be a non-empty list of fractions in '
              f'[0, 1], got {tuple(tc.depths)!r}.')
  if tc.name == 'flip_flop':
    p = tc.flip_flop_p_ignore
    if (isinstance(p, bool) or not isinstance(p, (int, float))
        or not 0.0 <= p <= 1.0):
      return ('config.task.flip_flop_p_ignore must be a probability in '
              f'[0, 1] (FFL(p): 0.8 trains, 0.98 is sparse, 0.1 dense), got '
              f'{p!r}.')
  if not isinstance(tc.eos, bool):
    return f'config.task.eos must be True or False, got {tc.eos!r}.'
  for n in tc.eval_lengths:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
      return ('config.task.eval_lengths must be positive integers, got '
              f'{n!r}.')
  limit = get_task(tc.name).limit(tc)
  longest = max([tc.train_max_length] + eval_lengths(tc))
  if limit is not None and longest > limit:  # see also alphabet_problem
    if tc.train_max_length > limit:
      bad, what = tc.train_max_length, 'train_max_length'
    else:
      bad, what = longest, 'longest evaluation length'
    why = get_task(tc.name).limit_message
    if why is not None:
      return (f'{why(tc, bad, limit)} (config.task {what}: lower it, or '
              'task.eval_lengths / eval_multiple).')
    half = ' (mqar: half are keys, half values)' if tc.name == 'mqar' else ''
    return (f'{tc.name} length {bad} (config.task {what}) needs {bad} '
            f'distinct keys, but config.task.alphabet_size={tc.alphabet_size} '
            f'gives only {limit}{half}. Raise alphabet_size (max '
            f'{len(SYMBOLS)}) or use shorter lengths (task.eval_lengths / '
            'eval_multiple).')
  need = sequence_length(tc, tc.train_max_length)
  if need > config.train.seq_len:
    return (f'{tc.name} at config.task.train_max_length='
            f'{tc.train_max_length} needs config.train.seq_len >= {need}, but '
            f'it is {config.train.seq_len}: raise seq_len to {need} or lower '
            f'train_max_length to {max_length(tc, config.train.seq_len)}.')
  return None


def alphabet_problem(tc, n: int) -> str | None:
  """Why length ``n`` cannot be written with the task's alphabet (a task
  whose examples need ``n`` distinct keys: ``Task.limit``), or None."""
  limit = get_task(tc.name).limit(tc)
  if limit is None or n <= limit:
    return None
  why = get_task(tc.name).limit_message
  if why is not None:
    return f'{why(tc, n, limit)}.'
  half = ' (mqar: half are keys, half values)' if tc.name == 'mqar' else ''
  return (f'{tc.name} length {n} needs {n} distinct keys, but '
          f'config.task.alphabet_size={tc.alphabet_size} gives only '
          f'{limit}{half}: evaluate lengths up to {limit}, or train a run '
          f'with a larger alphabet_size (max {len(SYMBOLS)}).')


def example(tc, n: int, rng: np.random.Generator,
            depth: float | None = None) -> tuple[str, str]:
  """One (prompt, answer) of length n (answer without the EOD)."""
  if n < 1:
    raise ValueError(f'Task lengths start at 1, got {n}.')
  return get_task(tc.name).make(rng, int(n), tc, depth)


def _tokens(tc, prompt: str, answer: str):
  """(tokens of the whole example, index of the first answer token)."""
  ids = tokenizer.encode(prompt + answer)
  if tc.eos:
    ids = np.append(ids, tokenizer.EOD).astype(np.int32)
  return ids, len(prompt)


def _layout(tc, rows, width: int) -> dict:
  """Left-aligned ``[B, width]`` inputs/targets/weights, EOD padding."""
  b = len(rows)
  inputs = np.full((b, width), PAD, np.int32)
  targets = np.full((b, width), PAD, np.int32)
  weights = np.zeros((b, width), np.float32)
  for i, (prompt, answer) in enumerate(rows):
    ids, start = _tokens(tc, prompt, answer)
    t = ids.size - 1
    if t > width:
      raise ValueError(f'A {tc.name} example needs {t} tokens, more than the '
                       f'{width} available.')
    inputs[i, :t], targets[i, :t] = ids[:-1], ids[1:]
    weights[i, start - 1:t] = 1.0  # targets s[start:] are the answer
  return {'inputs': inputs, 'targets': targets, 'weights': weights}


def _positions(kind: str, lengths: Sequence[int], width: int,
               max_position: int, rng: np.random.Generator,
               positions_cfg=None) -> np.ndarray:
  """Positions drawn for each example's own length, padding repeats the last.

  Drawing for the padded width instead would give a short example only the
  first few of ``width`` sorted random positions: a narrower spread than
  the same example gets at evaluation, where it is not padded. int32, or
  float32 for a sampling of real positions (CAPE's, which reads its
  settings in ``positions_cfg``, ``config.positions``).
  """
  real = sampling_lib.get(kind).real
  out = np.zeros((len(lengths), width), np.float32 if real else np.int32)
  for i, t in enumerate(lengths):
    p = sample_positions(kind, 1, int(t), max_position, rng,
                         positions_cfg)[0]
    out[i, :t], out[i, t:] = p, p[-1]
  return out


def train_batch(config, *, step: int, batch: int) -> dict:
  """The training batch of ``step``: a pure function of its arguments.

  ``inputs``, ``targets``, ``positions`` ``[B, T]`` int32 and ``weights``
  ``[B, T]`` float32 with ``T = config.train.seq_len``; each example draws
  its length uniformly in ``[train_min_length, train_max_length]``.
  """
  tc = config.task
  rng = step_rng(config.seed, step)
  lengths = rng.integers(tc.train_min_length, tc.train_max_length + 1,
                         size=batch)
  rows = [example(tc, int(n), rng) for n in lengths]
  out = _layout(tc, rows, int(config.train.seq_len))
  out['positions'] = _positions(
      config.positions.train, [sequence_length(tc, n) for n in lengths],
      int(config.train.seq_len), int(config.positions.max_position), rng,
      positions_cfg=config.positions)
  return out


def eval_rng(seed: int, length: int,
             depth: float | None = None) -> np.random.Generator:
  code = 0 if depth is None else 1 + round(float(depth) * 1_000_000)
  return np.random.default_rng([int(seed), int(length), code, 7])


def eval_batch(config, *, length: int, count: int, seed: int,
               depth: float | None = None, sampling: str | None = None
               ) -> dict:
  """``count`` examples of ``length``, ``[count, T]``, T = sequence_length.

  A pure function of ``(seed, length, depth)`` (and the config). ``depth``
  places the passkey (None: uniform); other tasks ignore it. Positions use
  ``sampling`` (default ``config.positions.eval`` resolved against train).
  """
  tc = config.task
  if sampling is None:
    sampling = config.positions.eval
    if sampling == 'train':
      sampling = sampling_lib.eval_kind(config.positions.train)
  rng = eval_rng(seed, length, depth)
  rows = [example(tc, length, rng, depth) for _ in range(count)]
  width = sequence_length(tc, length)
  out = _layout(tc, rows, width)
  out['positions'] = sample_positions(sampling, count, width,
                                      int(config.positions.max_position), rng)
  return out


def split_answer(tc, tokens) -> tuple[str, str]:
  """(prompt, answer) text of one example's tokens (EOD and padding cut)."""
  text = tokenizer.decode([t for t in np.asarray(tokens) if t != PAD])
  cut = (text.rindex('? ') + 2 if tc.name in QUESTION_TASKS
         else text.rindex('=') + 1)
  return text[:cut], text[cut:]
