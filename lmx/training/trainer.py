"""Training: state, the jitted step, the loop, metrics, checkpoints, resume.

The step is functional: the NNX model is split once into a graph definition
and a pure dict of parameters, and ``train_step`` is a jitted pure function
of (state, batch). Everything random is derived from (seed, step): the batch
(``lmx.data.windows``), the sampled positions and the dropout key. A resumed
run therefore repeats the run it continues.

Sharding (``lmx.sharding``): the state lives on the mesh of ``config.mesh``
with shardings from the logical-axis rules, the step is jitted with those
as ``in_shardings``/``out_shardings`` (and donates the state), and each
batch is split by rows over the data axes. With several processes each one
builds only its rows of the batch; all of them save and restore, and stop at
the same step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from lmx.training import checkpoint
from lmx.config import validate as config_lib
from lmx.config import defaults
from lmx.evaluation import evaluators, sources
from lmx.evaluation import runner as evaluation
from lmx.model import layer_plan
from lmx.model import xla_cpu
from lmx import flops
from lmx import memory
from lmx.training import metrics as metrics_lib
from lmx.training import run_state
from lmx.model import transformer as model_lib
from lmx import sharding
from lmx import trees
from lmx.training.run_state import (abstract_state, init_model, init_state,
                           make_optimizer, make_schedule, project)
from lmx.data import prefetch, subword, windows

log = logging.getLogger('lmx')


def make_train_step(graphdef, tx, config, mesh=None,
                    state_shardings=None) -> Callable:
  """The jitted ``(state, batch) -> (state, metrics)``; donates the state.

  With a ``mesh`` and the state's shardings on it, the step takes and gives
  the state with those shardings and the batch split over the data axes;
  the metrics come back replicated.

  ``metrics['finite']`` says whether the loss and the gradient norm were
  finite. With ``config.train.max_nonfinite_skips > 0`` a non-finite step
  leaves the parameters and optimizer state as they were (the step counter
  still advances, so the next step sees the next batch); otherwise the
  trainer stops on the flag before anything is saved.
  """
  schedule = make_schedule(config.train)
  use_dropout = config.model.dropout > 0
  guard = config.train.max_nonfinite_skips > 0
  constrain = project(config)

  chunk = int(config.train.loss_chunk)

  micro = int(config.train.microbatches)

  def loss_parts(params, batch, key):
    """(sum of the weighted token losses, sum of the weights)."""
    losses = model_lib.token_losses(
        nnx.merge(graphdef, params), batch['inputs'], batch['positions'],
        batch['targets'], key if use_dropout else None, chunk)
    if 'weights' in batch:  # per-token loss weights, e.g. answer-only masks
      w = batch['weights'].astype(losses.dtype)
      return (losses * w).sum(), w.sum()
    return losses.sum(), jnp.asarray(losses.size, losses.dtype)

  def loss_fn(params, batch, key):
    """The weighted mean token loss (the plain mean without weights)."""
    num, den = loss_parts(params, batch, key)
    return num / jnp.maximum(den, 1.0)

  def accumulated(params, batch, key):
    """The loss and gradient of the whole batch from ``micro`` slices of
    its rows, one after another (only one slice's activations live at a
    time): the gradients of the slices' loss sums, added, over the total
    weight. Slice i takes rows i, i + micro, ..., so each slice is spread
    over the data axes as the whole batch is."""
    sliced = jax.tree.map(
        lambda x: x.reshape(x.shape[0] // micro, micro, *x.shape[1:])
        .swapaxes(0, 1), batch)
    grad_parts = jax.value_and_grad(loss_parts, has_aux=True)

    def body(acc, xs):
      i, part = xs
      part = jax.tree.map(sharding.constrain_rows, part)
      (num, den), g = grad_parts(params, part, jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, acc, (num, den, g)), None

    zero = jax.tree.map(jnp.zeros_like, params)
    (num, den, grads), _ = jax.lax.scan(
        body, (jnp.zeros(()), jnp.zeros(()), zero),
        (jnp.arange(micro), sliced))
    den = jnp.maximum(den, 1.0)
    return num / den, jax.tree.map(lambda g: g / den, grads)

  def train_step(state, batch):
    key = jax.random.fold_in(jax.random.key(config.seed), state['step'])
    if micro > 1:
      loss, grads = accumulated(state['params'], batch, key)
    else:
      loss, grads = jax.value_and_grad(loss_fn)(state['params'], batch, key)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = constrain(optax.apply_updates(state['params'], updates))
    if guard:
      keep_old = lambda new, old: jax.tree.map(
          lambda n, o: jnp.where(finite, n, o), new, old)
      params = keep_old(params, state['params'])
      opt_state = keep_old(opt_state, state['opt_state'])
    new_state = {'step': state['step'] + 1, 'params': params,
                 'opt_state': opt_state}
    return new_state, {'loss': loss, 'grad_norm': grad_norm,
                       'learning_rate': schedule(state['step']),
                       'finite': finite}

  if mesh is None:
    return jax.jit(train_step, donate_argnums=0)
  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)))


def init_state_on_mesh(config, params, tx, state_shardings) -> dict:
  """``init_state`` with host ``params`` placed on the mesh and the optimizer
  state created there, each leaf with its sharding."""
  placed = sharding.place(params, state_shardings['params'])
  return jax.jit(lambda p: init_state(config, p, tx),
                 out_shardings=state_shardings)(placed)


def params_from_run(config: ml_collections.ConfigDict, target_params,
                    mesh=None) -> dict:
  """Parameters for a fine-tuning run, from ``config.init_from``'s checkpoint.

  Only the parameters are taken: the optimizer starts afresh and the step
  at 0. Every parameter must have the same shape in both models, except
  position tables of another length, which ``config.init_interpolate``
  resizes through the encoding's ``resize``. Anything else is a ConfigError
  that names the parameter, before anything is loaded or compiled.

  With a ``mesh`` the parameters are restored straight onto it, with the
  shardings of the rules (resized tables are replicated, as every position
  parameter), and come back as global arrays.
  """
  source = config.init_from
  try:
    src_config = checkpoint.read_config(source)
    step = checkpoint.require_checkpoint(source, config.init_from_step or None)
  except checkpoint.CheckpointError as e:
    raise checkpoint.CheckpointError(
        f'config.init_from={source!r} must name the --workdir of a trained '
        f'run: {e}') from None
  _, src_target = abstract_state(src_config)
  have = trees.leaves_by_path(src_target['params'])
  want = trees.leaves_by_path(target_params)
  # Each position parameter's own encoding (the module graph, not leaf
  # names): in a per-layer model, each table resizes as its encoding says.
  owners = run_state.encodings(config)
  fix = ('Only lengths, position sampling, RoPE scaling and training '
         'settings may differ from the run in config.init_from; start from '
         'scratch (config.init_from=\'\') to change the model.')
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  if missing or extra:
    name = lambda p: '/'.join(map(str, p))
    parts = ([f'missing there: {", ".join(map(name, missing[:4]))}']
             if missing else []) + (
                 [f'not used here: {", ".join(map(name, extra[:4]))}']
                 if extra else [])
    raise config_lib.ConfigError(
        f'config.init_from={source!r} holds a {src_config.model.position!r} '
        f'model whose parameters differ from this '
        f'{config.model.position!r} model ({"; ".join(parts)}). {fix}')
  resize = {}
  for path, leaf in want.items():
    old = have[path]
    if old.shape == leaf.shape:
      continue
    where = '/'.join(map(str, path))
    owner = run_state.owner_of(owners, path)
    can = owner is not None and owner.resize(
        path[-1], np.zeros(old.shape, np.float32), leaf.shape) is not None
    if can and config.init_interpolate:
      resize[path] = leaf.shape
      continue
    hint = (f'Set --config.init_interpolate=True to stretch it to '
            f'{leaf.shape} by interpolation, or match '
            f'{owner.bound_setting() or "the model config"} to the source '
            'run.' if can else fix)
    raise config_lib.ConfigError(
        f'Parameter {where} has shape {old.shape} in config.init_from='
        f'{source!r} (step {step}) but {leaf.shape} here. {hint}')
  if mesh is not None:
    src_target = sharding.with_shardings(
        src_target, sharding.tree_shardings(src_target, mesh))
  params = checkpoint.load(source, step, src_target)['params']
  if resize:
    def adapt(path, leaf):
      key = trees.path_keys(path)
      if key not in resize:
        return leaf
      table = run_state.owner_of(owners, key).resize(
          key[-1], np.asarray(leaf), resize[key])
      if mesh is None:
        return jnp.asarray(table)
      return sharding.place(table, sharding.replicated(mesh))
    params = jax.tree_util.tree_map_with_path(adapt, params)
  print(f'Initialised from the parameters of {source} at step {step}'
        + (f' ({len(resize)} position table(s) resized)' if resize else '')
        + '; the optimizer starts afresh.')
  return params


class TrainingInterrupted(Exception):
  """SIGTERM or SIGINT stopped the run after saving a checkpoint."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step = signum, step
    super().__init__(
        f'Stopped by {signal.Signals(signum).name} at step {step}; the '
        f'checkpoint of step {step} is saved in '
        f'{checkpoint.checkpoint_dir(workdir)}. Run the same command to '
        'resume.')


class _StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step.

  A second signal while stopping does not interrupt the save in flight: it
  is acknowledged and the run still exits with 128 + the first signal once
  the checkpoint is written. (SIGKILL stops at once; the next run resumes
  from the newest checkpoint.)
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      print(f'\n{signal.Signals(signum).name}: already stopping; the '
            'checkpoint is being saved and lmx exits when it is written '
            '(SIGKILL stops at once, losing the steps since the last '
            'checkpoint).', file=sys.stderr, flush=True)
      return
    self.signum = signum
    print(f'\n{signal.Signals(signum).name}: saving a checkpoint after this '
          'step, then stopping.', file=sys.stderr, flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}


# Fields a resumed run may change: they do not alter what the steps already
# taken computed, so the run stays the run it continues. A change to one is
# used from the resumed step on and recorded in <workdir>/resume_log.jsonl;
# config.json keeps the values of the first checkpoint. Extending
# train.steps stretches the cosine schedule from the resumed step on.
SAFE_ON_RESUME = (
    'train.steps', 'train.log_every', 'train.checkpoint_every',
    'train.keep_checkpoints', 'train.on_corrupt_checkpoint',
    'train.max_nonfinite_skips', 'data.cache_dir',
    # How the data is prepared and fed, not what it is.
    'data.prepare_workers', 'data.prefetch',
    # The depth a config file wrote its layer tuples for: a record, checked
    # against model.num_layers (which may not change); 0 in runs saved
    # before it existed.
    'model.layers.num_layers',
    # The evaluation during training reads the parameters, never changes them.
    'train.eval_every', 'train.eval_multipliers', 'train.eval_tokens',
    # Compute choices that leave the values as they are (to rounding).
    'train.loss_chunk', 'train.microbatches', 'model.scan_layers',
    'model.remat',
    # The device mesh: a checkpoint restores under any mesh (resharded), and
    # the model is the same on every mesh.
    'mesh.data', 'mesh.fsdp', 'mesh.tensor', 'cpu_devices',
    # Only read by a run's first start (a resumed run never re-initialises).
    'init_from', 'init_from_step', 'init_interpolate',
)
RESUME_LOG = 'resume_log.jsonl'


def _differences(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """``{field: (saved, now)}`` for every field that differs from the
  config saved in ``workdir`` (JSON values: tuples read as lists)."""
  saved = defaults.flatten(json.loads(
      checkpoint.read_config(workdir).to_json()))
  now = defaults.flatten(json.loads(config.to_json()))
  return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now))
          if saved.get(k) != now.get(k)}


def _check_same_run(workdir: str, config: ml_collections.ConfigDict) -> dict:
  """The safe changes (``SAFE_ON_RESUME``) of a resumed run, as
  ``{field: (saved, now)}``; refuses any other change to the saved config.

  A run's config.json never changes after its first checkpoint: an
  evaluation reads the settings the model was trained with.
  """
  path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  if not os.path.isfile(path) or checkpoint.latest_step(workdir) is None:
    return {}
  changed = _differences(workdir, config)
  refused = {k: v for k, v in changed.items() if k not in SAFE_ON_RESUME}
  if refused:
    shown = '; '.join(f'config.{k}: saved {a!r}, now {b!r}'
                      for k, (a, b) in list(refused.items())[:6])
    more = f' (and {len(refused) - 6} more)' if len(refused) > 6 else ''
    raise config_lib.ConfigError(
        f'{workdir} already holds checkpoints of a run with another config, '
        f'so it cannot be resumed with this one: {shown}{more}. Its '
        f'{checkpoint.CONFIG_FILE} stays as it is. Drop these overrides to '
        f'resume the run (only {", ".join(SAFE_ON_RESUME)} may change on '
        'resume), or use a new --workdir.')
  return changed


def _record_resume(workdir: str, step: int, changed: dict) -> None:
  """Appends the safe changes of this resume to resume_log.jsonl."""
  row = {'time': time.strftime('%Y-%m-%dT%H:%M:%S'), 'step': step,
         'changed': {k: {'saved': a, 'now': b} for k, (a, b) in
                     changed.items()}}
  with open(os.path.join(workdir, RESUME_LOG), 'a') as f:
    f.write(json.dumps(row) + '\n')
  print(f'Resuming with changed settings (recorded in '
        f'{os.path.join(workdir, RESUME_LOG)}; config.json keeps the saved '
        'ones): ' + ', '.join(f'config.{k}={b!r} (saved {a!r})'
                              for k, (a, b) in changed.items()))


def make_batch_fn(config: ml_collections.ConfigDict,
                  rows: np.ndarray | None = None, tok=None) -> Callable:
  """``step -> batch``, a pure function of (config, step): windows of the
  text corpus, or generated examples of ``config.task`` (with loss weights
  on the answer tokens). ``rows`` (global row indices, e.g.
  ``sharding.local_rows``) gives only those rows of each batch: what one
  process of a multi-host run feeds its devices."""
  # The run's data (text or a task) builds them: lmx.evaluation.sources.
  return sources.data_source(config).train_batches(config, rows, tok)


def train(config: ml_collections.ConfigDict, workdir: str,
          progress: bool = True) -> dict:
  """Trains (or resumes) the run in ``workdir``; returns the final metrics.

  Raises ConfigError/DataError/CheckpointError before anything is compiled
  or written, FloatingPointError on a non-finite step, and
  TrainingInterrupted after saving on SIGTERM/SIGINT.

  The state lives on the mesh of ``config.mesh`` (``lmx.sharding``); with
  several processes (``sharding.initialize``) every one of them calls this
  with the same config and workdir.
  """
  xla_cpu.prepare_host_for(config)   # before anything starts JAX's backend
  config_lib.validate(config)
  # An unknown name in config.eval.evaluators is refused now, not at the
  # evaluation of the finished run.
  evaluators.names(config)
  # The tokenizer (trained once, or the run's own copy) sets
  # config.model.vocab_size, which the memory estimate needs.
  ckpt_dir = checkpoint.checkpoint_dir(workdir)
  tok = subword.resolve(config, workdir, resuming=os.path.isdir(ckpt_dir)
                        and checkpoint.latest_step(workdir) is not None)
  memory.check_training(config)  # refuse what cannot fit, before compiling
  mesh = sharding.make_mesh(config)  # ConfigError if the devices do not fit
  checkpoint.make_writable_dir(workdir, '--workdir')
  if os.path.exists(ckpt_dir) and not os.path.isdir(ckpt_dir):
    raise checkpoint.CheckpointError(
        f'The checkpoint folder {ckpt_dir} is a file, not a folder: move it '
        'away (nothing in it can be a checkpoint of this run).')
  # One process holds the workdir lock for the whole multi-process run.
  lock = (checkpoint.WorkdirLock(workdir) if sharding.is_primary()
          else contextlib.nullcontext())
  with lock:
    return _train(config, workdir, progress, mesh, tok)


def _train(config, workdir, progress, mesh, tok) -> dict:
  changed = _check_same_run(workdir, config)
  t = config.train
  primary = sharding.is_primary()
  batch_sharding = sharding.batch_sharding(mesh)
  rows = (sharding.local_rows(batch_sharding, t.batch_size)
          if jax.process_count() > 1 else None)
  local_batch_fn = make_batch_fn(config, rows, tok)
  local_batch_fn(0)  # fails on too little data before anything is compiled
  # An evaluation needs validation text (the store refuses an empty split);
  # opened once, for the evaluation during training too.
  # (None for a task run, which has no validation text).
  source = sources.data_source(config)
  validation = source.validation(config, tok)
  batch_fn = lambda step: sharding.global_batch(
      local_batch_fn(step), batch_sharding, t.batch_size)

  tx = make_optimizer(t)
  evaluating = _training_eval_plan(config, validation, primary)  # before compiling
  graphdef, target = abstract_state(config, tx)
  state_shardings = sharding.tree_shardings(target, mesh)
  target = sharding.with_shardings(target, state_shardings)
  found = checkpoint.restore_latest_good(workdir, target,
                                         t.on_corrupt_checkpoint)
  if found is not None:
    start, state, meta = found
    log.info('Resuming %s from step %d.', workdir, start)
    print(f'Resuming from the checkpoint at step {start} in {workdir}.')
  elif config.init_from:
    params = params_from_run(config, target['params'], mesh)
    state = jax.jit(lambda p: init_state(config, p, tx),
                    out_shardings=state_shardings)(params)
    start, meta = 0, {}
  else:
    # Eagerly, outside the mesh context, as on one device: the same values
    # on every mesh, and the eager kernels are compiled once per process.
    graphdef, params = init_model(config)
    with jax.set_mesh(mesh):
      state = init_state_on_mesh(config, params, tx, state_shardings)
    start, meta = 0, {}
  if primary:
    if found is None:  # the config is saved once, before the first save
      subword.install(tok, workdir)  # the run's own tokenizer, beside it
      checkpoint.write_config(workdir, config)
    elif changed:
      _record_resume(workdir, start, changed)
    elif not os.path.isfile(os.path.join(workdir, checkpoint.CONFIG_FILE)):
      subword.install(tok, workdir)
      checkpoint.write_config(workdir, config)
  if start >= t.steps:
    print(f'{workdir} is already trained to step {start} (config.train.steps='
          f'{t.steps}); nothing to do. Raise --config.train.steps to train '
          'further.')
    return {}
  n_params = sum(x.size for x in jax.tree.leaves(state['params']))
  task = source.describe(config)
  devices = ''
  if mesh.size > 1:
    devices = (f' on {mesh.size} devices (' + ', '.join(
        f'{a}={n}' for a, n in mesh.shape.items()) + ')' + (
            f' in {jax.process_count()} processes'
            if jax.process_count() > 1 else ''))
  print(f'lmx: {layer_plan.describe(config.model)} model{task}, {n_params:,} parameters, '
        f'{t.steps} steps of {t.batch_size}x{t.seq_len} tokens{devices} -> '
        f'{workdir}')

  step_fn = make_train_step(graphdef, tx, config, mesh, state_shardings)
  evaluate = (_Evaluator(config, graphdef, mesh, *evaluating)
              if evaluating else None)
  writer = metrics_lib.MetricWriter(workdir, enabled=primary,
                                    resume_step=start)
  saver = checkpoint.Saver(workdir, keep=t.keep_checkpoints)
  bar = None
  if progress and primary:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=t.steps, initial=start, desc='train', unit='step',
               mininterval=1.0, dynamic_ncols=True)
  with _StopRequest() as stop, jax.set_mesh(mesh):
    try:
      last = _Loop(config, workdir, batch_fn, saver, writer, bar, stop,
                   int(meta.get('nonfinite_skips', 0)),
                   log_lines=primary and bar is None,
                   evaluate=evaluate).run(step_fn, state, start)
    finally:
      # However the loop ended, finish (and seal) the saves in flight and
      # close the files, so no checkpoint is left half written. The signal
      # handlers stay until then: a second signal cannot cut a save short.
      if bar is not None:
        bar.close()
      saver.close()
      writer.close()
      if primary:
        _write_training_curve(workdir, config.name, t.seq_len)
  if last:
    print(f'Done: step {t.steps}, loss {last["loss"]:.4f}, '
          f'{last["tokens_per_second"]:,.0f} tokens/s. Checkpoints in '
          f'{checkpoint.checkpoint_dir(workdir)}.')
  return last


CURVE_FILE = 'training_curve.png'


def _write_training_curve(workdir: str, title: str,
                          train_length: int | None = None) -> None:
  """``training_curve.png`` from the whole metrics.jsonl (a resumed run's
  file holds the steps before the resume too). A plot that fails is a
  warning: it must not hide how the run ended."""
  path = os.path.join(workdir, metrics_lib.METRICS_FILE)
  try:
    rows = metrics_lib.read_jsonl(path) if os.path.isfile(path) else []
    if rows:
      metrics_lib.plot_training_curve(rows, os.path.join(workdir, CURVE_FILE),
                                      title, train_length)
  except Exception as e:  # pylint: disable=broad-except
    print(f'warning: {CURVE_FILE} not written ({type(e).__name__}: {e}).',
          file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
  """``h:mm:ss`` of a duration."""
  s = int(round(max(seconds, 0.0)))
  return f'{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}'


def log_line(done: int, total: int, m: dict, elapsed: float,
             eta: float) -> str:
  """The line a headless run (``--progress=false``) prints each
  ``train.log_every`` steps: with the model's TFLOP/s over all devices
  (``lmx.flops``) and, where the devices' peak is known, the MFU, as
  MaxText prints them; a row without them prints neither."""
  width = len(str(total))
  speed = f'{m["tokens_per_second"]:,.0f} tok/s '
  if 'tflops_per_second' in m:
    speed += f'{m["tflops_per_second"]:.3g} TFLOP/s '
  if 'mfu' in m:
    speed += f'MFU {100 * m["mfu"]:.1f}% '
  return (f'step {done:>{width}}/{total} loss {m["loss"]:.4f} '
          f'lr {m["learning_rate"]:.3g} '
          f'{speed}elapsed {_clock(elapsed)} ETA {_clock(eta)}')


def _training_eval_plan(config, validation, primary: bool):
  """``(lengths, validation stream)`` of the evaluation during training
  (``config.train.eval_every``), checked before anything compiles (each
  length must have a window of validation text; the memory estimate,
  ``memory.check_training``, already counts the longest); None when it is
  off. Lengths the model cannot run are left out with a note; a task run
  has no validation text, so it is not evaluated during training (a note
  says so; eval.py evaluates its checkpoints). ``validation``: the text
  run's validation stream from the token store (what eval.py scores), None
  for a task run."""
  t = config.train
  if not t.eval_every:
    return None
  note = sources.data_source(config).training_eval_note(config)
  if note:
    if primary:
      print(f'note: {note}')
    return None
  lengths, skipped = config_lib.training_eval_lengths(config)
  if not lengths:
    raise config_lib.ConfigError(
        'config.train.eval_every='
        f'{t.eval_every} evaluates during training, but no length of '
        f'config.train.eval_multipliers={tuple(t.eval_multipliers)!r} x '
        f'config.train.seq_len={t.seq_len} can be run: '
        + ' '.join(skipped.values()) + ' Choose smaller multipliers, or set '
        'config.train.eval_every=0.')
  if skipped and primary:
    print(f'note: the evaluation during training skips length(s) '
          f'{", ".join(map(str, skipped))}: {next(iter(skipped.values()))}')
  for length in lengths:  # DataError if the validation text is too short
    windows.eval_windows(validation, length, t.eval_tokens)
  return lengths, validation


class _Evaluator:
  """``params -> {'eval_loss_len<L>': loss, ..., 'eval_seconds': s}``: the
  validation loss at each length, scored by eval.py's ``loss`` evaluator
  (``lmx.evaluation.evaluators``: non-overlapping windows,
  ``evaluation.loss_at_length``) with ``config_lib.training_eval_config``.
  The loss function is made once, so each length compiles once (its
  batches have one shape). Parameters stay sharded on the mesh; the
  windows are placed replicated and the losses come back replicated, so
  every process scores the same windows and can read them."""

  def __init__(self, config, graphdef, mesh, lengths, stream):
    config = config_lib.training_eval_config(config)
    self.loss = evaluators.EVALUATORS['loss']()
    self.ctx = evaluators.Context(
        config=config, source=sources.data_source(config), lengths=lengths,
        stream=stream, graphdef=graphdef,
        token_losses=evaluation.mesh_loss_fn(graphdef, mesh,
                                             split_rows=False))

  def __call__(self, params) -> dict:
    start = time.perf_counter()
    self.ctx.set_params(params)
    out = {f'eval_loss_len{row["length"]}': row['loss']
           for row in self.loss.run(self.ctx)}
    self.ctx.set_params(None)  # holds neither the parameters nor the losses
    out['eval_seconds'] = time.perf_counter() - start
    return out


def eval_line(done: int, total: int, scores: dict, train_length: int) -> str:
  """The line a headless run prints for an evaluation during training."""
  width = len(str(total))
  parts = ', '.join(
      f'{v:.4f} at {k[len("eval_loss_len"):]}' for k, v in scores.items()
      if k.startswith('eval_loss_len'))
  return (f'eval {done:>{width}}/{total} validation loss {parts} tokens '
          f'(training length {train_length}), {scores["eval_seconds"]:.1f}s')


class _Loop:
  """Steps ``start .. train.steps``: check, log, checkpoint, stop.

  ``log_lines``: print a line (``log_line``) at each logged step, flushed,
  for runs without a progress bar (``--progress=false``, sweep members'
  logs); only the primary process is given it. ``evaluate`` (an
  ``_Evaluator``, or None): every ``train.eval_every`` steps its scalars
  go to the metrics as a row of their own, after the step's training row
  and before its checkpoint; its time is left out of tokens/s."""

  def __init__(self, config, workdir, batch_fn, saver, writer, bar, stop,
               skips, log_lines=False, evaluate=None):
    self.config, self.workdir, self.batch_fn = config, workdir, batch_fn
    self.saver, self.writer, self.bar, self.stop = saver, writer, bar, stop
    self.skips = skips
    self.log_lines = log_lines
    self.evaluate = evaluate
    self.last_saved = None

  def _check(self, done: int, m) -> None:
    """Stops (or, if allowed, counts a skip) on a non-finite step."""
    if bool(m['finite']):
      return
    t = self.config.train
    loss, grad_norm = float(m['loss']), float(m['grad_norm'])
    what = (f'loss {loss}' if not np.isfinite(loss)
            else f'gradient (global norm {grad_norm})')
    if self.skips < t.max_nonfinite_skips:
      self.skips += 1
      print(f'warning: non-finite {what} at step {done}; update skipped '
            f'({self.skips} of config.train.max_nonfinite_skips='
            f'{t.max_nonfinite_skips}).', file=sys.stderr, flush=True)
      return
    kept = (f'the checkpoint of step {self.last_saved}'
            if self.last_saved is not None else 'the checkpoints')
    allowance = (f'all {t.max_nonfinite_skips} allowed skips are used; '
                 if t.max_nonfinite_skips else '')
    raise FloatingPointError(
        f'Non-finite {what} at step {done}; {allowance}{kept} in '
        f'{checkpoint.checkpoint_dir(self.workdir)} is kept and nothing '
        'later was saved. Lower config.train.learning_rate, check the data, '
        'or set config.train.max_nonfinite_skips to skip such steps.')

  def run(self, step_fn, state, start: int) -> dict:
    # The next config.data.prefetch batches are built (and put on the
    # devices) in the background while the devices compute.
    with prefetch.Prefetch(self.batch_fn, start, self.config.train.steps,
                           self.config.data.prefetch) as self.batches:
      return self._run(step_fn, state, start)

  def _run(self, step_fn, state, start: int) -> dict:
    t = self.config.train
    tokens_per_step = t.batch_size * t.seq_len
    # Model FLOPs per token (lmx.flops) and the peak of all the devices,
    # None where it is not known (a CPU): then no MFU is reported.
    flops_per_token = flops.train_flops_per_token(self.config.model,
                                                  t.seq_len)
    peak = flops.device_peak(jax.devices()[0])
    peak = peak * jax.device_count() if peak else None
    last, unchecked = {}, None
    self.last_saved = start or None
    run_start = window_start = time.perf_counter()
    window_steps = 0
    for step in range(start, t.steps):
      state, m = step_fn(state, dict(self.batches.get(step)))
      done = step + 1
      # Check the previous step while this one runs: the host stays at most
      # one step ahead of the device, and the progress bar counts finished
      # steps.
      if unchecked is not None:
        self._check(*unchecked)
      unchecked = (done, m)
      window_steps += 1
      # Read once: a signal may arrive at any point of this iteration, and
      # the step that stops must be the step that is saved.
      # With several processes, all stop at the step any one was asked to.
      stopping = sharding.agree_stop(self.stop.signum)
      log_due = done % t.log_every == 0 or done == t.steps
      save_due = (done % t.checkpoint_every == 0 or done == t.steps
                  or stopping is not None)
      eval_due = self.evaluate is not None and done % t.eval_every == 0
      if log_due or save_due or eval_due:
        # Nothing is logged or saved before its step is known to be finite.
        m = jax.device_get(m)
        self._check(done, m)
        unchecked = None
      if log_due:
        elapsed = time.perf_counter() - window_start
        tok_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
        last = {'loss': float(m['loss']), 'grad_norm': float(m['grad_norm']),
                'learning_rate': float(m['learning_rate']),
                'nonfinite_skips': self.skips, 'tokens_per_second': tok_s,
                'tflops_per_second': tok_s * flops_per_token / 1e12}
        if peak:
          last['mfu'] = tok_s * flops_per_token / peak
        self.writer.write(done, last)
        if self.log_lines:
          now = time.perf_counter()
          eta = (t.steps - done) * elapsed / max(window_steps, 1)
          print(log_line(done, t.steps, last, now - run_start, eta),
                flush=True)
        if self.bar is not None:
          self.bar.set_postfix(loss=f'{last["loss"]:.3f}',
                               tok_s=f'{tok_s:,.0f}')
        window_start, window_steps = time.perf_counter(), 0
      if eval_due:
        scores = self.evaluate(state['params'])
        self.writer.write(done, scores)
        window_start += scores['eval_seconds']  # not training time
        if self.log_lines:
          print(eval_line(done, t.steps, scores, t.seq_len), flush=True)
        elif self.bar is not None:  # above the bar
          self.bar.write(eval_line(done, t.steps, scores, t.seq_len))
      if self.bar is not None:
        self.bar.update(1)
      if save_due:
        self.saver.save(done, state, {'nonfinite_skips': self.skips})
        self.last_saved = done
      if stopping is not None:
        raise TrainingInterrupted(stopping, done, self.workdir)
    return last
