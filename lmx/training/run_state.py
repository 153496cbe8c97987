"""The model and train state of a run, built or restored: what training,
evaluation, decoding and the extension comparison share.

The NNX model is split once into a graph definition and a pure dict of
parameters (``init_model``, ``abstract_model``); the train state is the dict
``{'step', 'params', 'opt_state'}`` of AdamW with clipping
(``make_optimizer``), whose abstract form is the restore target of a
checkpoint (``abstract_state``).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from lmx.training import checkpoint
from lmx.config import defaults
from lmx.model import layer_plan
from lmx.model import transformer as model_lib
from lmx import positions
from lmx.errors import ConfigError


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
  """(graphdef, params as a pure dict) of a freshly initialised model,
  inside the encoding's parameter bounds (``project``)."""
  model = model_lib.build(config.model, config.seed)
  graphdef, state = nnx.split(model)
  return graphdef, project(config)(nnx.to_pure_dict(state))


def project(config: ml_collections.ConfigDict) -> Callable[[dict], dict]:
  """``params -> params`` with each position encoding's parameters clipped
  into its ``param_bounds`` (the identity when no encoding has any). The
  train step applies it after every update, so a stored parameter pushed
  past a bound restarts from the bound (KERPLE's released code projects
  its parameters the same way).

  The encodings are found by walking the model's module graph
  (``nnx.iter_graph`` of the abstract model, whose paths are those of the
  pure dict of parameters), and each instance projects its own parameters
  (``PositionEncoding.project``) with the bounds of the settings it was
  built from: two encodings of a per-layer model whose parameters share a
  name keep their own bounds."""
  m = config.model
  used = layer_plan.used_encodings(m)
  if not any(enc.param_bounds(layer_plan.view(m, name))
             for name, enc in used.items()):
    return lambda params: params
  owners = [(path, node, view) for path, node, view in encodings(config)
            if node.param_bounds(view)]

  def apply(params):
    for path, node, view in owners:
      params = _replace_at(params, path,
                           lambda own, n=node, v=view: n.project(own, v))
    return params

  return apply


def encodings(config: ml_collections.ConfigDict) -> list[tuple]:
  """``(path, encoding instance, its view of config.model)`` of every
  position encoding in the model, found by walking its module graph
  (``nnx.iter_graph`` of the abstract model, whose paths are those of the
  pure dict of parameters): what owns each position parameter, in a
  per-layer model too."""
  m = config.model
  used = layer_plan.used_encodings(m)
  specs = layer_plan.plan(m)
  model = nnx.eval_shape(lambda: model_lib.build(m, config.seed))
  out = []
  for path, node in nnx.iter_graph(model):
    if isinstance(node, positions.PositionEncoding):
      view = layer_plan.view(m, _encoding_name(path, node, used, specs))
      out.append((tuple(path), node, view))
  return out


def owner_of(owners: list[tuple], param_path: tuple):
  """The encoding instance of ``encodings`` whose subtree holds the
  parameter at ``param_path``, or None."""
  for path, node, _ in owners:
    if tuple(param_path[:len(path)]) == path:
      return node
  return None


def _encoding_name(path, node, used: dict, specs) -> str:
  """The name ``node`` is registered under in this model: the one name of
  its class, else (a class registered twice) the name its layer's plan
  gives (``('blocks', i, ...)``; the model's own ``position`` is the first
  layer's)."""
  names = [name for name, cls in used.items() if type(node) is cls]
  if len(names) == 1:
    return names[0]
  layer = path[1] if len(path) > 1 and path[0] == 'blocks' else 0
  return specs[layer].position


def _replace_at(tree: dict, path: tuple, fn: Callable) -> dict:
  """``tree`` with its subtree at ``path`` replaced by ``fn(subtree)``
  (copies along the path only); unchanged where the path holds nothing."""
  if not path:
    return fn(tree)
  head, rest = path[0], path[1:]
  if not isinstance(tree, dict) or head not in tree:
    return tree
  return {**tree, head: _replace_at(tree[head], rest, fn)}


def abstract_model(config: ml_collections.ConfigDict):
  """(graphdef, abstract params): shapes only, nothing is initialised."""
  model = nnx.eval_shape(lambda: model_lib.build(config.model, config.seed))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def abstract_state(config: ml_collections.ConfigDict, tx=None):
  """(graphdef, abstract train state): the restore target of a checkpoint."""
  tx = tx or make_optimizer(config.train)
  graphdef, abstract_params = abstract_model(config)
  return graphdef, checkpoint.abstract(
      jax.eval_shape(lambda p: init_state(config, p, tx), abstract_params))


def init_state(config, params, tx) -> dict:
  return {'step': jnp.zeros((), jnp.int32), 'params': params,
          'opt_state': tx.init(params)}


def apply_fn(graphdef) -> Callable:
  """``(params, tokens, positions, dropout_key) -> logits``."""
  def apply(params, tokens, positions, dropout_key=None):
    return nnx.merge(graphdef, params)(tokens, positions, dropout_key)
  return apply


def _shapes(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def check_fits_run(config, workdir: str, params) -> None:
  """A ConfigError naming the fields if ``config`` (the run's saved config
  with the command line's overrides) builds parameters of other shapes than
  the run's: an override of a model size is reported as such, before any
  restore, not as a damaged checkpoint."""
  try:
    saved = checkpoint.read_config(workdir)
  except checkpoint.CheckpointError:
    return  # the restore reports what is wrong
  _, saved_params = abstract_model(saved)
  want, have = _shapes(params), _shapes(saved_params)
  if want == have:
    return
  asked = defaults.flatten(config.model.to_dict(), 'model.')
  fields = {k: (v, asked.get(k))
            for k, v in defaults.flatten(saved.model.to_dict(),
                                         'model.').items()
            if v != asked.get(k)}
  differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
  example = differ[0]
  shown = ('; '.join(f'config.{k}={b!r} (trained with {a!r})'
                     for k, (a, b) in fields.items())
           or 'the overrides')
  raise ConfigError(
      f'The model asked for does not fit the run in {workdir}: {shown}. '
      f'These change the parameter shapes (e.g. {example}: '
      f'{have.get(example) or "absent"} in the checkpoint, '
      f'{want.get(example) or "absent"} asked '
      'for); the checkpoint itself is fine. Drop these --config.model '
      'overrides, or train a run with them.')


def load_params(config, workdir: str, step: Optional[int] = None):
  """(graphdef, params, step) restored from the workdir's checkpoint at
  ``step`` (default: the latest), verified and never moved."""
  graphdef, target = abstract_state(config)
  latest = step is None
  step = checkpoint.require_checkpoint(workdir, step)
  check_fits_run(config, workdir, target['params'])
  # The latest step may be pruned by a training run while it is read: the
  # newest one is then read instead.
  step, state = checkpoint.load_step(workdir, step, target,
                                     follow_latest=latest)
  return graphdef, state['params'], int(state['step'])
