"""bench/encoding_throughput.py: every encoding's train step timed against
ALiBi's in the same run (tiny model, one step a repeat)."""

import pytest

from bench import encoding_throughput as bench


def test_rows_are_medians_relative_to_alibi():
  configs = {name: bench.load(name, 'tiny') for name in ('txl', 'alibi')}
  rows = bench.measure(configs, steps=1, repeats=3, warmup=1,
                       log=lambda _: None)
  assert [r['config'] for r in rows] == ['alibi', 'txl']
  alibi, txl = rows
  assert alibi['vs_alibi'] == 1.0
  for r in rows:
    assert r['min'] <= r['tokens_per_s'] <= r['max'] and r['min'] > 0
  assert txl['vs_alibi'] == txl['tokens_per_s'] / alibi['tokens_per_s']
  # Transformer-XL's W_R, u and v are parameters ALiBi does not have.
  assert txl['params'] > alibi['params']
  assert '| `txl` |' in bench.table(rows)


def test_rows_are_the_config_files_and_alibi_is_required():
  # A row is what train.py trains from configs/<name>.py: CoPE's file sets
  # npos_max from the training length, HWFA's the per-layer tuples.
  cope = bench.load('cope', 'tiny')
  assert cope.model.cope.npos_max == cope.train.seq_len + 1
  assert bench.load('hwfa', 'tiny').model.layers.position[-1] == 'none'
  from configs.sweeps import encodings  # pylint: disable=g-import-not-at-top
  # The extra configs are those of the encodings sweep (files that exist).
  assert set(bench.EXTRA_CONFIGS) <= set(encodings.EXTRA)
  for name in bench.EXTRA_CONFIGS:
    bench.load(name, 'tiny')
  with pytest.raises(ValueError, match='reference'):
    bench.measure({'txl': bench.load('txl', 'tiny')}, steps=1, repeats=1,
                  warmup=1)
