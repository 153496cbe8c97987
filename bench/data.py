r"""The data path at research scale: preparation, memory, resume, batches.

    python bench/data.py --dir=/tmp/lmx_data_bench --what=all
    python bench/data.py --dir=/tmp/lmx_data_bench --what=prepare,batch \
        --sizes_mb=400,4096

Corpora are made here, from this interpreter's standard library: a folder of
text files (documents) of about 1 MB each, each the library's ``.py`` files
one after another, every one with a line naming the copy prepended (so no
two documents are equal), until the folder holds ``--sizes_mb``. A tenth of
the files validate (``validation_fraction=0.1``). Nothing is downloaded. What is
measured (medians of ``--repeats`` where a figure is timed more than once):

* ``prepare``: preparation throughput, MB of text per second, through
  ``lmx.data.store.open_split`` into an empty cache: bytes with 1 and 2
  workers (on the largest corpus no larger than ``--prepare_mb``), and
  SentencePiece (the default 1,024-id BPE, trained first and not timed) on
  ``--sp_mb`` MB.
* ``memory``: the peak anonymous resident memory (``RssAnon``, sampled every
  20 ms, summed over train.py and its worker processes) of
  ``train.py --config=configs/alibi.py`` for ``--memory_steps`` steps on each
  corpus, preparation included. File-backed pages of the memory-mapped store
  are the kernel's page cache and are not counted.
* ``resume``: seconds from starting ``train.py`` to its first step of a
  resumed run on the largest corpus (the store prepared, one checkpoint
  saved), compilation included.
* ``batch``: host milliseconds to build one 64 x 2,048 training batch from
  the largest corpus's store (``lmx.data.windows.train_batch``).
* ``step``: the default model's train step (``configs/alibi.py``), seconds
  per step with the real batch source (the store, prefetched as the trainer
  does; and built in the loop, ``prefetch=0``) against one precomputed
  batch already on the device; ``--steps`` steps after a warmup,
  ``--repeats`` times, the three alternating.

Results print as a table and go to ``--out`` (JSON) if given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

FILE_MB = 1


def make_corpus(folder: str, mb: int) -> str:
  """A folder of text files holding about ``mb`` MB (made once)."""
  from lmx.data import sources  # pylint: disable=import-outside-toplevel
  done = os.path.join(folder, '.complete')
  if os.path.isfile(done):
    return folder
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  root, files = sources.list_files('stdlib')
  texts = []
  for rel in files:
    with open(os.path.join(root, rel), 'rb') as f:
      texts.append(f.read())
  target, written, copy, part = mb << 20, 0, 0, 0
  out = open(os.path.join(folder, f'part{part:04d}.txt'), 'wb')  # pylint: disable=consider-using-with
  size = 0
  while written < target:
    for text in texts:
      # One file per document would be millions of files: documents are
      # joined in a part file; the line makes every copy different.
      piece = f'# copy {copy}\n'.encode() + text
      out.write(piece)
      written += len(piece)
      size += len(piece)
      if size >= FILE_MB << 20:
        out.close()
        part += 1
        size = 0
        out = open(os.path.join(folder, f'part{part:04d}.txt'), 'wb')  # pylint: disable=consider-using-with
      if written >= target:
        break
    copy += 1
  out.close()
  open(done, 'w').close()
  return folder


def data_cfg(source: str, cache: str, workers: int, tokenizer='bytes'):
  from lmx.config import defaults  # pylint: disable=import-outside-toplevel
  c = defaults.get_config().data
  c.update(source=source, cache_dir=cache, prepare_workers=workers,
           tokenizer=tokenizer, validation_fraction=0.1)
  return c


def bench_prepare(corpus: str, sp_corpus: str, work: str) -> list[dict]:
  from lmx.data import store, subword  # pylint: disable=import-outside-toplevel
  rows = []
  mb = sum(os.path.getsize(os.path.join(corpus, f))
           for f in os.listdir(corpus) if f.endswith('.txt')) / 1e6
  for workers in (1, 2):
    cache = os.path.join(work, f'prep_bytes_{workers}')
    shutil.rmtree(cache, ignore_errors=True)
    cfg = data_cfg(corpus, cache, workers)
    start = time.perf_counter()
    for split in store.SPLITS:
      store.open_split(cfg, split)
    took = time.perf_counter() - start
    rows.append({'tokenizer': 'bytes', 'workers': workers, 'mb': mb,
                 'seconds': took, 'mb_per_s': mb / took})
    shutil.rmtree(cache, ignore_errors=True)
  sp_mb = sum(os.path.getsize(os.path.join(sp_corpus, f))
              for f in os.listdir(sp_corpus) if f.endswith('.txt')) / 1e6
  cache = os.path.join(work, 'prep_sp_model')
  cfg = data_cfg(sp_corpus, cache, 1, 'sentencepiece')
  tok = subword.trained(cfg)  # not timed
  for workers in (1, 2):
    # Only the store is timed: the model is cached.
    shutil.rmtree(store.Plan(cfg, sp_corpus, cfg.validation_fraction
                             ).base(tok), ignore_errors=True)
    cfg.prepare_workers = workers
    start = time.perf_counter()
    for split in store.SPLITS:
      store.open_split(cfg, split, tok)
    took = time.perf_counter() - start
    rows.append({'tokenizer': 'sentencepiece', 'workers': workers,
                 'mb': sp_mb, 'seconds': took, 'mb_per_s': sp_mb / took})
  return rows


def _anon_kb(pid: int) -> int:
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('RssAnon:'):
          return int(line.split()[1])
  except OSError:
    pass
  return 0


def _tree(pid: int) -> list[int]:
  out = [pid]
  try:
    with open(f'/proc/{pid}/task/{pid}/children') as f:
      for child in f.read().split():
        out += _tree(int(child))
  except OSError:
    pass
  return out


def run_measured(cmd: list[str], first_step: int | None = None) -> dict:
  """Runs ``cmd``; its peak anonymous RSS (process tree) and, if
  ``first_step``, the seconds until it prints ``step <first_step>/``."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  peak, seen = [0], {}

  def sample():
    while proc.poll() is None:
      peak[0] = max(peak[0], sum(_anon_kb(p) for p in _tree(proc.pid)))
      time.sleep(0.02)

  t = threading.Thread(target=sample, daemon=True)
  t.start()
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if first_step and 'first' not in seen and line.startswith(
        f'step {first_step}/'):
      seen['first'] = time.perf_counter() - start
  proc.wait()
  t.join()
  if proc.returncode:
    raise RuntimeError(f'{cmd} failed:\n{"".join(lines[-20:])}')
  return {'peak_anon_gb': peak[0] / 2**20, 'seconds': time.perf_counter()
          - start, 'first_step_s': seen.get('first')}


def train_cmd(corpus: str, cache: str, workdir: str, steps: int) -> list[str]:
  return [sys.executable, 'train.py', '--config=configs/alibi.py',
          f'--workdir={workdir}', f'--config.data.source={corpus}',
          f'--config.data.cache_dir={cache}', f'--config.train.steps={steps}',
          '--config.train.log_every=1', f'--config.train.checkpoint_every={steps}',
          '--config.data.validation_fraction=0.1',
          '--config.train.warmup_steps=1',
          '--progress=false']


def bench_memory(corpora: dict, work: str, steps: int) -> list[dict]:
  rows = []
  for mb, corpus in corpora.items():
    cache = os.path.join(work, f'mem_cache_{mb}')
    shutil.rmtree(cache, ignore_errors=True)
    run = os.path.join(work, f'mem_run_{mb}')
    shutil.rmtree(run, ignore_errors=True)
    r = run_measured(train_cmd(corpus, cache, run, steps))
    rows.append({'corpus_mb': mb, **r})
  return rows


def bench_resume(corpus: str, work: str) -> dict:
  cache = os.path.join(work, 'resume_cache')
  run = os.path.join(work, 'resume_run')
  shutil.rmtree(run, ignore_errors=True)
  run_measured(train_cmd(corpus, cache, run, 2))  # prepares, saves step 2
  r = run_measured(train_cmd(corpus, cache, run, 3), first_step=3)
  return {'first_step_s': r['first_step_s'], 'total_s': r['seconds']}


def bench_batch(corpus: str, work: str, repeats: int = 50) -> dict:
  import numpy as np  # pylint: disable=import-outside-toplevel
  from lmx.data import store, windows  # pylint: disable=import-outside-toplevel
  cache = os.path.join(work, 'resume_cache')
  stream = store.open_split(data_cfg(corpus, cache, 0), 'train')
  times = []
  for step in range(repeats):
    t0 = time.perf_counter()
    b = windows.train_batch(stream, seed=0, step=step, batch=64,
                            seq_len=2048, sampling='contiguous',
                            max_position=2048)
    times.append(time.perf_counter() - t0)
    assert b['inputs'].shape == (64, 2048)
  del np
  return {'ms_median': 1e3 * statistics.median(times),
          'ms_max': 1e3 * max(times), 'stream_tokens': stream.size}


def bench_step(corpus: str, work: str, steps: int, repeats: int) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from configs import alibi  # pylint: disable=import-outside-toplevel
  from lmx import sharding  # pylint: disable=import-outside-toplevel
  from lmx.training import trainer
  from lmx.data import prefetch  # pylint: disable=import-outside-toplevel
  from lmx.training.run_state import (init_model, init_state,  # pylint: disable=import-outside-toplevel
                             make_optimizer)
  config = alibi.get_config()
  config.data.source = corpus
  config.data.cache_dir = os.path.join(work, 'resume_cache')
  config.data.prepare_workers = 0
  config.data.validation_fraction = 0.1
  mesh = sharding.make_mesh(config)
  bsh = sharding.batch_sharding(mesh)
  local = trainer.make_batch_fn(config)
  batch_fn = lambda s: sharding.global_batch(local(s), bsh,
                                             config.train.batch_size)
  tx = make_optimizer(config.train)
  graphdef, params = init_model(config)
  state = jax.jit(lambda p: init_state(config, p, tx))(params)
  step_fn = trainer.make_train_step(graphdef, tx, config)
  fixed = batch_fn(0)
  state, m = step_fn(state, dict(fixed))  # compile
  jax.block_until_ready(m)
  times = {'prefetch': [], 'inline': [], 'precomputed': []}
  start = 1
  for _ in range(repeats):
    # The three sources alternate within a repeat, so load from other
    # processes hits all of them.
    for kind in times:
      depth = config.data.prefetch if kind == 'prefetch' else 0
      with prefetch.Prefetch(batch_fn, start, start + steps, depth) as p:
        t0 = time.perf_counter()
        for s in range(start, start + steps):
          batch = fixed if kind == 'precomputed' else p.get(s)
          state, m = step_fn(state, dict(batch))
        jax.block_until_ready(m)
        times[kind].append((time.perf_counter() - t0) / steps)
      start += steps
  med = {k: statistics.median(v) for k, v in times.items()}
  return {'real_s': med['prefetch'], 'inline_s': med['inline'],
          'precomputed_s': med['precomputed'],
          'ratio': med['prefetch'] / med['precomputed'],
          'inline_ratio': med['inline'] / med['precomputed'],
          'batch': f'{config.train.batch_size}x{config.train.seq_len}',
          'prefetch': config.data.prefetch}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--dir', required=True, help='corpora, caches and runs')
  ap.add_argument('--what', default='all',
                  help='prepare,memory,resume,batch,step or all')
  ap.add_argument('--sizes_mb', default='400,4096')
  ap.add_argument('--prepare_mb', type=int, default=400)
  ap.add_argument('--sp_mb', type=int, default=32)
  ap.add_argument('--memory_steps', type=int, default=5)
  ap.add_argument('--steps', type=int, default=50)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--out', default=None)
  args = ap.parse_args(argv)
  what = (['prepare', 'memory', 'resume', 'batch', 'step']
          if args.what == 'all' else args.what.split(','))
  os.makedirs(args.dir, exist_ok=True)
  sizes = sorted(int(s) for s in args.sizes_mb.split(','))
  corpora = {mb: make_corpus(os.path.join(args.dir, f'corpus_{mb}mb'), mb)
             for mb in sizes}
  largest = corpora[sizes[-1]]
  out = {'machine': f'{platform.machine()}, {os.cpu_count()} cores, '
                    f'{platform.processor() or "cpu"}',
         'date': time.strftime('%Y-%m-%d'), 'sizes_mb': sizes}
  if 'prepare' in what:
    mb = max(s for s in sizes if s <= args.prepare_mb) if any(
        s <= args.prepare_mb for s in sizes) else sizes[0]
    sp = make_corpus(os.path.join(args.dir, f'corpus_{args.sp_mb}mb'),
                     args.sp_mb)
    out['prepare'] = bench_prepare(corpora[mb], sp, args.dir)
    for r in out['prepare']:
      print(f'prepare {r["tokenizer"]:>13} workers {r["workers"]}: '
            f'{r["mb"]:,.0f} MB in {r["seconds"]:.1f} s = '
            f'{r["mb_per_s"]:,.1f} MB/s', flush=True)
  if 'memory' in what:
    out['memory'] = bench_memory(corpora, args.dir, args.memory_steps)
    for r in out['memory']:
      print(f'train.py on {r["corpus_mb"]:,} MB: peak anonymous RSS '
            f'{r["peak_anon_gb"]:.2f} GB ({r["seconds"]:.0f} s)', flush=True)
  if 'resume' in what:
    out['resume'] = bench_resume(largest, args.dir)
    print(f'resume on {sizes[-1]:,} MB: first step after '
          f'{out["resume"]["first_step_s"]:.1f} s', flush=True)
  if 'batch' in what:
    if not os.path.isdir(os.path.join(args.dir, 'resume_cache')):
      bench_resume(largest, args.dir)
    out['batch'] = bench_batch(largest, args.dir)
    print(f'64 x 2,048 batch from {out["batch"]["stream_tokens"]:,} tokens: '
          f'{out["batch"]["ms_median"]:.2f} ms median, '
          f'{out["batch"]["ms_max"]:.2f} ms max', flush=True)
  if 'step' in what:
    out['step'] = bench_step(largest, args.dir, args.steps, args.repeats)
    s = out['step']
    print(f'step ({s["batch"]}): real batches prefetched '
          f'({s["prefetch"]} ahead) {1e3 * s["real_s"]:.2f} ms, built in the '
          f'loop {1e3 * s["inline_s"]:.2f} ms, precomputed '
          f'{1e3 * s["precomputed_s"]:.2f} ms; ratios to precomputed '
          f'{s["ratio"]:.3f} and {s["inline_ratio"]:.3f}', flush=True)
  print(f'machine: {out["machine"]}; {out["date"]}')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
