"""Training: state, the jitted step, the loop, metrics, checkpoints, resume.

The step is functional: the NNX model is split once into a graph definition
and a pure dict of parameters, and ``train_step`` is a jitted pure function
of (state, batch). Everything random is derived from (seed, step): the batch
(``lmx.data.windows``), the sampled positions and the dropout key. A resumed
run therefore repeats the run it continues.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from lmx import checkpoint
from lmx import config as config_lib
from lmx import metrics as metrics_lib
from lmx import model as model_lib
from lmx.data import corpus, windows

log = logging.getLogger('lmx')


def make_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup to ``learning_rate``, cosine decay to ``min_lr_ratio``x."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate,
      warmup_steps=t.warmup_steps, decay_steps=t.steps,
      end_value=t.learning_rate * t.min_lr_ratio)


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with global-norm clipping; no decay on vectors (norms, biases)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip),
      optax.adamw(make_schedule(t), b1=t.b1, b2=t.b2,
                  weight_decay=t.weight_decay, mask=decay_mask))


def init_model(config: ml_collections.ConfigDict):
  """(graphdef, params as a pure dict) of a freshly initialised model."""
  model = model_lib.build(config.model, config.seed)
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def abstract_model(config: ml_collections.ConfigDict):
  """(graphdef, abstract params): shapes only, nothing is initialised."""
  model = nnx.eval_shape(lambda: model_lib.build(config.model, config.seed))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def init_state(config, params, tx) -> dict:
  return {'step': jnp.zeros((), jnp.int32), 'params': params,
          'opt_state': tx.init(params)}


def apply_fn(graphdef) -> Callable:
  """``(params, tokens, positions, dropout_key) -> logits``."""
  def apply(params, tokens, positions, dropout_key=None):
    return nnx.merge(graphdef, params)(tokens, positions, dropout_key)
  return apply


def make_train_step(graphdef, tx, config) -> Callable:
  apply = apply_fn(graphdef)
  schedule = make_schedule(config.train)
  use_dropout = config.model.dropout > 0

  def loss_fn(params, batch, key):
    logits = apply(params, batch['inputs'], batch['positions'],
                   key if use_dropout else None)
    return model_lib.cross_entropy(logits, batch['targets']).mean()

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.key(config.seed), state['step'])
    loss, grads = jax.value_and_grad(loss_fn)(state['params'], batch, key)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    new_state = {'step': state['step'] + 1, 'params': params,
                 'opt_state': opt_state}
    return new_state, {'loss': loss, 'grad_norm': optax.global_norm(grads),
                       'learning_rate': schedule(state['step'])}

  return jax.jit(train_step, donate_argnums=0)


def _check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume a workdir whose saved model differs from config's."""
  path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  if not os.path.isfile(path) or checkpoint.latest_step(workdir) is None:
    return
  with open(path) as f:
    saved = json.load(f)
  now = json.loads(config.to_json())
  for section in ('model', 'seed'):
    if saved.get(section) != now.get(section):
      raise config_lib.ConfigError(
          f'{workdir} already holds checkpoints of a run whose config.'
          f'{section} differs from this one, so it cannot be resumed. Use a '
          'new --workdir (or delete the old one).')


def train(config: ml_collections.ConfigDict, workdir: str,
          progress: bool = True) -> dict:
  """Trains (or resumes) the run in ``workdir``; returns the final metrics."""
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  _check_same_run(workdir, config)

  t = config.train
  train_docs = corpus.load_documents(config.data, 'train')
  stream = corpus.token_stream(train_docs)
  # Fail on too little data before compiling anything.
  windows.train_batch(stream, seed=config.seed, step=0, batch=1,
                      seq_len=t.seq_len, sampling=config.positions.train,
                      max_position=config.positions.max_position)

  checkpoint.write_config(workdir, config)
  tx = make_optimizer(t)
  mngr = checkpoint.manager(workdir, keep=t.keep_checkpoints)
  start = mngr.latest_step()
  if start is not None:
    graphdef, abstract_params = abstract_model(config)
    abstract_state = checkpoint.abstract(
        jax.eval_shape(lambda p: init_state(config, p, tx), abstract_params))
    state = checkpoint.restore(mngr, abstract_state, start)
    log.info('Resuming %s from step %d.', workdir, start)
    print(f'Resuming from the checkpoint at step {start} in {workdir}.')
  else:
    graphdef, params = init_model(config)
    state = init_state(config, params, tx)
    start = 0
  if start >= t.steps:
    mngr.close()
    print(f'{workdir} is already trained to step {start} (config.train.steps='
          f'{t.steps}); nothing to do. Raise --config.train.steps to train '
          'further.')
    return {}
  n_params = sum(x.size for x in jax.tree.leaves(state['params']))
  print(f'lmx: {config.model.position} model, {n_params:,} parameters, '
        f'{t.steps} steps of {t.batch_size}x{t.seq_len} tokens -> {workdir}')

  step_fn = make_train_step(graphdef, tx, config)
  writer = metrics_lib.MetricWriter(workdir)
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=t.steps, initial=start, desc='train', unit='step',
               mininterval=1.0, dynamic_ncols=True)
  try:
    last = _loop(config, workdir, state, start, step_fn, stream, mngr, writer,
                 bar)
  finally:
    # However the loop ended, finish the saves in flight and close the files,
    # so that no checkpoint is left half written by an exiting interpreter.
    if bar is not None:
      bar.close()
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  if last:
    print(f'Done: step {t.steps}, loss {last["loss"]:.4f}, '
          f'{last["tokens_per_second"]:,.0f} tokens/s. Checkpoints in '
          f'{checkpoint.checkpoint_dir(workdir)}.')
  return last


def _loop(config, workdir, state, start, step_fn, stream, mngr, writer,
          bar) -> dict:
  """Steps ``start .. train.steps``: log, check, checkpoint; last metrics."""
  t = config.train
  tokens_per_step = t.batch_size * t.seq_len
  last, previous = {}, None
  window_start, window_steps = time.perf_counter(), 0
  for step in range(start, t.steps):
    batch = windows.train_batch(
        stream, seed=config.seed, step=step, batch=t.batch_size,
        seq_len=t.seq_len, sampling=config.positions.train,
        max_position=config.positions.max_position)
    state, m = step_fn(state, dict(batch))
    # Stay at most one step ahead of the device: the progress bar then
    # counts finished steps, and queued batches do not pile up in memory.
    if previous is not None:
      previous.block_until_ready()
    previous = m['loss']
    window_steps += 1
    done = step + 1
    if done % t.log_every == 0 or done == t.steps:
      m = jax.device_get(m)
      elapsed = time.perf_counter() - window_start
      tok_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
      last = {'loss': float(m['loss']), 'grad_norm': float(m['grad_norm']),
              'learning_rate': float(m['learning_rate']),
              'tokens_per_second': tok_s}
      if not np.isfinite(last['loss']):
        raise FloatingPointError(
            f'Non-finite loss {last["loss"]} at step {done}; the checkpoints '
            f'already in {checkpoint.checkpoint_dir(workdir)} are kept. Lower '
            'config.train.learning_rate or check the data.')
      writer.write(done, last)
      if bar is not None:
        bar.set_postfix(loss=f'{last["loss"]:.3f}', tok_s=f'{tok_s:,.0f}')
      window_start, window_steps = time.perf_counter(), 0
    if bar is not None:
      bar.update(1)
    if done % t.checkpoint_every == 0 or done == t.steps:
      checkpoint.save(mngr, done, state, force=True)
  return last
