"""Evaluation during training (config.train.eval_every): the logged
validation loss is eval.py's ``loss_at_length`` of that step's checkpoint;
off writes nothing; the curve draws it; bad settings are ConfigErrors; a
resumed run and a run on an 8-device mesh keep evaluating."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from lmx import memory
from lmx.training import checkpoint
from lmx.config import defaults
from lmx.evaluation import runner as evaluation
from lmx.training import metrics
from lmx.config import validate as config_lib
from lmx.training import run_state
from lmx.training import trainer
from lmx.data import store, subword

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# One of two processes (4 CPU devices each) of a run whose parameters are
# sharded over (data, fsdp, tensor) = (2, 2, 2), across both; each process
# records what its evaluator returned. Started in subprocesses: the device
# count is fixed when JAX starts.
PROCESS = """
import json, sys
sys.path.insert(0, {root!r})
from lmx import sharding
assert sharding.initialize({coordinator!r}, 2, {process})
from configs import base
from lmx.training import trainer
c = base.get_config('size=tiny')
c.update_from_flattened_dict({fields!r})
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
seen, evaluate = [], trainer._Evaluator.__call__
def record(self, params):
  seen.append(evaluate(self, params))
  return seen[-1]
trainer._Evaluator.__call__ = record
trainer.train(c, {workdir!r}, progress=False)
with open({out!r}, 'w') as f:
  json.dump(seen, f)
"""


def _eval_rows(workdir: str) -> list[dict]:
  rows = metrics.read_jsonl(os.path.join(workdir, metrics.METRICS_FILE))
  return [r for r in rows if any(k.startswith('eval_') for k in r)]


def _reference(config, workdir: str, steps, loss_fn=None) -> dict:
  """``{step: {length: loss}}`` that eval.py's code gives on the
  checkpoints of ``steps`` (restored on one device), with the settings of
  the evaluation during training."""
  stream = store.open_split(config.data, 'validation',
                            subword.for_run(config, workdir))
  cfg = config_lib.training_eval_config(config)
  lengths, _ = config_lib.eval_lengths(cfg)
  out = {}
  for step in steps:
    graphdef, params, _ = run_state.load_params(config, workdir, step)
    loss_fn = loss_fn or evaluation.make_loss_fn(graphdef)  # one compile
    out[step] = {n: evaluation.loss_at_length(loss_fn, params, cfg, stream,
                                              n)['loss'] for n in lengths}
  return out


def _assert_rows_match(rows, want) -> None:
  assert [r['step'] for r in rows] == sorted(want)
  for row in rows:
    losses = {int(k[len('eval_loss_len'):]): v for k, v in row.items()
              if k.startswith('eval_loss_len')}
    assert sorted(losses) == sorted(want[row['step']])
    for n, loss in losses.items():
      np.testing.assert_allclose(loss, want[row['step']][n], rtol=1e-5)


def test_logged_eval_loss_is_loss_at_length_of_the_checkpoint_and_resumes(
    tiny_config, tmp_path, capsys):
  c = tiny_config('rope', **{'train.steps': 2, 'train.eval_every': 2,
                             'train.checkpoint_every': 2,
                             'train.keep_checkpoints': 5,
                             'train.eval_multipliers': (1, 4),
                             'train.eval_tokens': 256})
  workdir = str(tmp_path / 'run')
  trainer.train(c, workdir, progress=False)
  assert 'eval 2/2 validation loss' in capsys.readouterr().out
  rows = _eval_rows(workdir)
  assert [r['step'] for r in rows] == [2]
  assert sorted(rows[0]) == ['eval_loss_len16', 'eval_loss_len64',
                             'eval_seconds', 'step']  # (1, 4) x seq_len 16
  assert rows[0]['eval_seconds'] > 0

  # Resumed to step 4: the row of step 2 stays (once) and step 4 is added.
  c.train.steps = 4
  trainer.train(c, workdir, progress=False)
  rows = _eval_rows(workdir)
  _assert_rows_match(rows, _reference(c, workdir, (2, 4)))
  # Training changed the parameters between the two evaluations.
  assert rows[0]['eval_loss_len16'] != rows[1]['eval_loss_len16']
  # TensorBoard has the same scalars at the same steps.
  tb = metrics.read_tensorboard(os.path.join(workdir,
                                             metrics.TENSORBOARD_DIR))
  assert [s for s, _ in tb['eval_loss_len64']] == [2, 4]
  np.testing.assert_allclose([v for _, v in tb['eval_loss_len64']],
                             [r['eval_loss_len64'] for r in rows], rtol=1e-6)
  # The training curve draws one validation curve per length from them.
  all_rows = metrics.read_jsonl(os.path.join(workdir, metrics.METRICS_FILE))
  data = metrics.curve_data(all_rows)
  assert data['step'] == [1, 2, 3, 4]
  assert sorted(data['eval']) == [16, 64]
  assert all(data['eval'][n]['step'] == [2, 4] for n in (16, 64))
  assert data['eval'][64]['loss'] == [r['eval_loss_len64'] for r in rows]
  assert os.path.getsize(os.path.join(workdir, trainer.CURVE_FILE)) > 0


def test_eval_every_zero_writes_no_eval_rows(tiny_config, tmp_path):
  c = tiny_config('rope', **{'train.steps': 1, 'train.warmup_steps': 0})
  assert c.train.eval_every == 0  # the tiny size's default: off
  workdir = str(tmp_path / 'run')
  trainer.train(c, workdir, progress=False)
  rows = metrics.read_jsonl(os.path.join(workdir, metrics.METRICS_FILE))
  assert [r['step'] for r in rows] == [1]
  assert not any(k.startswith('eval_') for r in rows for k in r)
  tb = metrics.read_tensorboard(os.path.join(workdir,
                                             metrics.TENSORBOARD_DIR))
  assert 'loss' in tb and not any(k.startswith('eval_') for k in tb)


def test_training_curve_draws_a_validation_curve_per_length(tmp_path):
  rows = [{'step': s, 'loss': 5.0 / s, 'learning_rate': 1e-3}
          for s in range(1, 11)]
  rows += [{'step': s, 'eval_loss_len64': 4.0 / s,
            'eval_loss_len256': 4.5 / s, 'eval_seconds': 1.0}
           for s in (5, 10)]
  path = str(tmp_path / 'curve.png')
  data = metrics.plot_training_curve(rows, path, 'tiny', train_length=64)
  assert data['step'] == list(range(1, 11))
  assert data['eval'] == {64: {'step': [5, 10], 'loss': [0.8, 0.4]},
                          256: {'step': [5, 10], 'loss': [0.9, 0.45]}}
  assert os.path.getsize(path) > 0


@pytest.mark.parametrize('field,value', [
    ('train.eval_every', -1),
    ('train.eval_multipliers', ()),
    ('train.eval_multipliers', (0,)),
    ('train.eval_multipliers', (1, -4)),
    ('train.eval_tokens', 0),
])
def test_bad_settings_are_config_errors_naming_the_field(tiny_config, field,
                                                         value):
  c = tiny_config('rope')
  c.update_from_flattened_dict({field: value})
  with pytest.raises(config_lib.ConfigError, match=f'config.{field}'):
    config_lib.validate(c)


def test_lengths_the_model_cannot_run_are_skipped_or_refused(tiny_config,
                                                             tmp_path):
  # A learned table of 100 positions runs 16 and 64, not 256.
  c = tiny_config('learned', **{'model.learned.max_len': 100,
                                'train.eval_every': 2,
                                'train.eval_multipliers': (1, 4, 16)})
  lengths, skipped = config_lib.training_eval_lengths(c)
  assert lengths == [16, 64] and list(skipped) == [256]
  assert 'config.model.learned.max_len' in skipped[256]
  # None of them runnable: refused before anything is written.
  c.train.eval_multipliers = (16, 32)
  workdir = str(tmp_path / 'run')
  with pytest.raises(config_lib.ConfigError,
                     match='config.train.eval_multipliers'):
    trainer.train(c, workdir, progress=False)
  assert checkpoint.latest_step(workdir) is None
  assert not os.path.exists(os.path.join(workdir, checkpoint.CONFIG_FILE))


def test_memory_estimate_counts_the_longest_eval_length(tiny_config,
                                                        monkeypatch):
  c = tiny_config('rope', **{'train.eval_every': 2,
                             'train.eval_multipliers': (1, 1024),
                             'train.eval_tokens': 16384,
                             'model.attention': 'dense'})
  c.eval.batch_tokens = 16384
  # Between the training step's need and that of a dense pass at 16384.
  limit = memory.activation_bytes(c.model, 1, 16384, backward=False) // 2
  monkeypatch.setenv(memory.ENV, str(limit))
  with pytest.raises(config_lib.ConfigError, match='length 16384'):
    memory.check_training(c)
  c.train.eval_every = 0
  memory.check_training(c)  # the training step alone fits


def test_old_config_json_is_completed_and_may_change_them_on_resume():
  saved = defaults.get_config('size=tiny').to_dict()
  for key in ('eval_every', 'eval_multipliers', 'eval_tokens'):
    del saved['train'][key]
  defaults.complete(saved)
  full = defaults.get_config()
  assert saved['train']['eval_every'] == full.train.eval_every
  assert tuple(saved['train']['eval_multipliers']) == (
      full.train.eval_multipliers)
  assert saved['train']['eval_tokens'] == full.train.eval_tokens
  assert {'train.eval_every', 'train.eval_multipliers',
          'train.eval_tokens'} <= set(trainer.SAFE_ON_RESUME)


def test_task_runs_are_not_evaluated_during_training(capsys):
  # A task has no validation text; its default size may still ask for
  # evaluation during training, so it is a note, not a refusal.
  from configs.tasks import reverse
  c = reverse.get_config('size=tiny')
  c.train.eval_every = 5
  assert trainer._training_eval_plan(c, None, primary=True) is None
  assert 'task has no validation text' in capsys.readouterr().out
  assert config_lib.training_eval_lengths(c) == ([], {})


def test_two_processes_on_a_mesh_evaluate_alike_and_one_writes(cache_dir,
                                                              tmp_path):
  fields = {'model.position': 'rope', 'data.cache_dir': cache_dir,
            'model.num_heads': 4, 'model.num_layers': 1,
            'train.batch_size': 8, 'train.steps': 1, 'train.warmup_steps': 0,
            'train.eval_every': 1, 'train.eval_multipliers': (4,),
            'train.eval_tokens': 256}
  workdir = str(tmp_path / 'run')
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    coordinator = f'127.0.0.1:{sock.getsockname()[1]}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT,
             XLA_FLAGS='--xla_force_host_platform_device_count=4')
  env.pop('LMX_COORDINATOR', None)
  procs = []
  for i in range(2):
    script = PROCESS.format(root=ROOT, coordinator=coordinator, process=i,
                            fields=fields, workdir=workdir,
                            out=str(tmp_path / f'seen{i}.json'))
    procs.append(subprocess.Popen(
        [sys.executable, '-c', script], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  try:
    outs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert 'on 8 devices (data=2, fsdp=2, tensor=2) in 2 processes' in outs[0]
  seen = []
  for i in range(2):
    with open(tmp_path / f'seen{i}.json') as f:
      seen.append(json.load(f))
  # Both processes scored the same windows with the sharded parameters.
  drop = lambda rows: [{k: v for k, v in r.items() if k != 'eval_seconds'}
                       for r in rows]
  assert len(seen[0]) == 1 and drop(seen[0]) == drop(seen[1])
  # One row per evaluation (the primary's), each the loss of that step's
  # checkpoint restored on one device.
  rows = _eval_rows(workdir)
  assert drop(rows) == [{'step': 1, **drop(seen[0])[0]}]
  assert list(rows[0]) == ['step', 'eval_loss_len64', 'eval_seconds']
  c = checkpoint.read_config(workdir)
  _assert_rows_match(rows, _reference(c, workdir, (1,)))
