"""bench/encoding_throughput.py: every encoding's train step timed against
ALiBi's in the same run (tiny model, one step a repeat)."""

from bench import encoding_throughput as bench
from configs import base


def test_rows_are_medians_relative_to_alibi():
  rows = bench.measure(base.get_config('size=tiny'), ['txl', 'alibi'],
                       steps=1, repeats=3, warmup=1, log=lambda _: None)
  assert [r['position'] for r in rows] == ['alibi', 'txl']
  alibi, txl = rows
  assert alibi['vs_alibi'] == 1.0
  for r in rows:
    assert r['min'] <= r['tokens_per_s'] <= r['max'] and r['min'] > 0
  assert txl['vs_alibi'] == txl['tokens_per_s'] / alibi['tokens_per_s']
  # Transformer-XL's W_R, u and v are parameters ALiBi does not have.
  assert txl['params'] > alibi['params']
  assert '| `txl` |' in bench.table(rows)
