"""The device mesh, logical-axis sharding rules and multi-host start-up.

Mesh. ``config.mesh`` gives the sizes of three mesh axes, ``data``, ``fsdp``
and ``tensor``; one of them may be -1 and takes the devices the others
leave. ``make_mesh`` builds it with ``jax.make_mesh`` over all devices of
all processes (``jax.sharding.AxisType.Auto`` axes: the compiler propagates
the shardings of parameters and batches through the step).

Logical axes (the MaxText way). Each parameter gets one logical axis name
per dimension from ``PARAM_RULES``, a list of (regular expression on its
path in the params pure dict, axes), first match wins; e.g.
``blocks/0/attn/qkv/kernel`` -> ``('embed', 'heads')``. Optimizer state
leaves end with their parameter's path (``opt_state/.../mu/<param path>``)
and so get the same axes. Position-encoding parameters (a path with
``position``: T5 and learned tables, KERPLE) and anything no rule names are
replicated. ``LOGICAL_RULES`` then maps logical names to mesh axes:
``batch`` -> ``('data', 'fsdp')``, ``embed`` -> ``fsdp``, ``heads``/``mlp``/
``vocab`` -> ``tensor``. A dimension its mesh axes do not divide (the
257-byte vocabulary, say) is replicated instead, so any mesh is correct.
Batches are split by rows over ``data`` x ``fsdp``.

Multi-host. Start one process per host (or several on one machine, each
with its own devices) with the same command plus

    python train.py --config=... --workdir=<shared dir> \\
        --coordinator=10.0.0.1:1234 --num_processes=2 --process_id=0

or the environment variables ``LMX_COORDINATOR``, ``LMX_NUM_PROCESSES``
and ``LMX_PROCESS_ID`` (flags win). ``initialize`` then calls
``jax.distributed.initialize`` (with gloo collectives for CPU devices).
Each process builds only its own rows of every batch (``local_rows``) and
``global_batch`` assembles them with ``jax.make_array_from_process_local_data``;
every process takes part in orbax saves and restores, process 0 alone seals
and prunes (``lmx.training.checkpoint``), and a stop request on any process stops all
of them at the same step (``agree_stop``).

Bad meshes are ConfigErrors: ``validate_config`` (no devices needed, from
``lmx.config.validate.validate``) and ``check_devices`` (against the devices present,
before anything is compiled).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lmx import trees
from lmx.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')
DATA_AXES = ('data', 'fsdp')

# (regex on the '/'-joined path of a leaf, logical axes of its dimensions).
# First match wins; a rule whose rank differs from the leaf's is skipped.
PARAM_RULES: tuple[tuple[str, tuple[Optional[str], ...]], ...] = (
    (r'(^|/)position(/|$)', ()),  # position encodings: always replicated
    (r'(^|/)qkv/kernel$', ('embed', 'heads')),
    (r'(^|/)(q|k|v|query|key|value)/kernel$', ('embed', 'heads')),
    (r'(^|/)(qkv|q|k|v|query|key|value)/bias$', ('heads',)),
    (r'(^|/)out/kernel$', ('heads', 'embed')),
    # The attention gate (lmx.model.gating): its outputs are the heads'
    # channels (or one per head), as a query projection's are.
    (r'(^|/)out_gate/kernel$', ('embed', 'heads')),
    (r'(^|/)(up|gate)/kernel$', ('embed', 'mlp')),
    (r'(^|/)(up|gate)/bias$', ('mlp',)),
    (r'(^|/)down/kernel$', ('mlp', 'embed')),
    (r'(^|/)(out|down)/bias$', ('embed',)),
    (r'(^|/)embed/embedding$', ('vocab', 'embed')),
    (r'(^|/)head/kernel$', ('embed', 'vocab')),
    (r'(^|/)head/bias$', ('vocab',)),
    (r'norm/(scale|bias)$', ('norm',)),
)

# Logical axis -> mesh axis, axes, or None (replicated).
LOGICAL_RULES: dict[str, Any] = {
    'batch': DATA_AXES,
    'embed': 'fsdp',
    'heads': 'tensor',
    'mlp': 'tensor',
    'vocab': 'tensor',
    'norm': None,
}


def _error(msg: str) -> ConfigError:
  return ConfigError(msg)


# ------------------------------------------------------------- validation


def _mesh_values(config) -> dict[str, Any]:
  mesh = config.get('mesh')
  if mesh is None:
    raise _error('config.mesh is missing. Start from a config in configs/ '
                 "(base.py sets mesh = {'data': -1, 'fsdp': 1, 'tensor': 1}).")
  unknown = sorted(set(mesh.keys()) - set(MESH_AXES))
  if unknown:
    raise _error(f'config.mesh has unknown axes {unknown}; its axes are '
                 f'{", ".join(MESH_AXES)}.')
  missing = [a for a in MESH_AXES if a not in mesh]
  if missing:
    raise _error(f'config.mesh.{missing[0]} is missing. Start from a config '
                 'in configs/ (lmx/config/defaults.py sets every mesh axis).')
  return {a: mesh[a] for a in MESH_AXES}


def validate_config(config) -> None:
  """Device-independent checks of ``config.mesh`` against the config."""
  sizes = _mesh_values(config)
  for axis, v in sizes.items():
    if not isinstance(v, int) or isinstance(v, bool) or v == 0 or v < -1:
      raise _error(
          f'config.mesh.{axis}={v!r} is invalid: each mesh axis is a '
          'positive number of devices, or -1 for the devices the other axes '
          'leave.')
  fill = [a for a, v in sizes.items() if v == -1]
  if len(fill) > 1:
    raise _error(
        f'config.mesh has more than one axis set to -1 ({", ".join(fill)}); '
        'at most one axis can take the remaining devices. Give the others '
        'sizes, e.g. --config.mesh.fsdp=1.')
  data = [sizes[a] for a in DATA_AXES]
  batch = config.train.batch_size
  if -1 not in data and isinstance(batch, int) and batch % math.prod(data):
    raise _error(_batch_message(batch, sizes))


def _batch_message(batch: int, sizes: dict[str, int]) -> str:
  n = sizes['data'] * sizes['fsdp']
  fit = n * max(1, round(batch / n))
  return (f'config.train.batch_size={batch} is not divisible by the data '
          f'axes of the mesh (data x fsdp = {sizes["data"]} x '
          f'{sizes["fsdp"]} = {n}): every data shard takes the same number '
          f'of rows. Use a multiple of {n} (e.g. --config.train.batch_size='
          f'{fit}) or change config.mesh.')


def resolve(config, device_count: Optional[int] = None) -> dict[str, int]:
  """Mesh axis sizes for ``device_count`` devices (default: all), with -1
  filled in; ConfigError if the mesh or the batch cannot use them."""
  validate_config(config)
  n = jax.device_count() if device_count is None else device_count
  sizes = _mesh_values(config)
  fixed = math.prod(v for v in sizes.values() if v != -1)
  fill = [a for a, v in sizes.items() if v == -1]
  where = (f'{n} device{"s" if n != 1 else ""} '
           f'({jax.devices()[0].platform}, {jax.process_count()} '
           f'process{"es" if jax.process_count() != 1 else ""})')
  shown = ', '.join(f'{a}={v}' for a, v in sizes.items())
  if fill:
    if n % fixed:
      raise _error(
          f'config.mesh ({shown}) fixes {fixed} devices per '
          f'{fill[0]} slice, which does not divide the {where}. Choose sizes '
          f'whose product divides {n}, e.g. --config.mesh.data=-1 '
          '--config.mesh.fsdp=1 --config.mesh.tensor=1.')
    sizes[fill[0]] = n // fixed
  elif fixed != n:
    raise _error(
        f'config.mesh ({shown}) needs {fixed} devices, but there are {where}: '
        'the product data x fsdp x tensor must equal the device count. Use '
        f'e.g. --config.mesh.data={n} --config.mesh.fsdp=1 '
        '--config.mesh.tensor=1, or set one axis to -1 to take the devices '
        'the others leave.')
  batch = config.train.batch_size
  if batch % (sizes['data'] * sizes['fsdp']):
    raise _error(_batch_message(batch, sizes))
  return sizes


def check_devices(config) -> None:
  """The device-dependent checks (``resolve``), before compiling."""
  resolve(config)


# -------------------------------------------------------------------- mesh


def make_mesh(config) -> jax.sharding.Mesh:
  """The mesh of ``config.mesh`` over all devices (of all processes)."""
  sizes = resolve(config)
  return jax.make_mesh(
      tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_axes(path: str, ndim: int) -> tuple[Optional[str], ...]:
  """Logical axis names of a leaf at ``path`` (None: replicated)."""
  for pattern, axes in PARAM_RULES:
    if re.search(pattern, path):
      if len(axes) == ndim:
        return tuple(axes)
      if not axes:
        break
  return (None,) * ndim


def logical_to_spec(axes: Sequence[Optional[str]], shape: Sequence[int],
                    mesh: jax.sharding.Mesh) -> P:
  """PartitionSpec of a leaf: each logical axis by ``LOGICAL_RULES``, with
  dimensions their mesh axes do not divide (or mesh axes of size 1, or an
  axis already used) replicated."""
  used, spec = set(), []
  for name, dim in zip(axes, shape):
    target = LOGICAL_RULES.get(name) if name else None
    mesh_axes = ((target,) if isinstance(target, str) else
                 tuple(target or ()))
    mesh_axes = tuple(a for a in mesh_axes
                      if mesh.shape[a] > 1 and a not in used)
    size = math.prod(mesh.shape[a] for a in mesh_axes)
    if not mesh_axes or dim % size:
      spec.append(None)
      continue
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def tree_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """NamedShardings for every leaf of a (possibly abstract) train state or
  params tree, by the rules on each leaf's path."""
  def one(path, leaf):
    shape = tuple(np.shape(leaf))
    axes = logical_axes(trees.path_str(path), len(shape))
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))
  return jax.tree_util.tree_map_with_path(one, tree)


def constrain_stacked(tree: Any) -> Any:
  """Layers' parameters stacked on a new leading axis (``model.scan_layers``)
  kept sharded as each layer's own are, under the current mesh: without
  the constraint the compiler may gather the stack whole. The identity
  outside a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return tree

  def one(path, leaf):
    # nnx State paths end in the Variable's 'value'.
    name = trees.path_str(path).removesuffix('/value')
    axes = logical_axes(name, leaf.ndim - 1)
    spec = logical_to_spec(axes, leaf.shape[1:], mesh)
    return jax.lax.with_sharding_constraint(leaf, P(None, *spec))
  return jax.tree_util.tree_map_with_path(one, tree)


def constrain_rows(x: jax.Array) -> jax.Array:
  """Activations ``[B, ...]`` with their rows over the data axes, under the
  current mesh (the identity outside one)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  sizes = math.prod(mesh.shape[a] for a in DATA_AXES if a in mesh.shape)
  if x.shape[0] % sizes:
    return x
  return jax.lax.with_sharding_constraint(x, P(DATA_AXES))


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """The abstract tree with each ShapeDtypeStruct carrying its sharding:
  a restore target that lands on the current mesh."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_tree, shardings)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Rows over the data axes (data x fsdp), the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def place(tree: Any, shardings: Any) -> Any:
  """Host values (the same on every process) as global arrays with the given
  shardings; each process fills only its own devices."""
  def one(x, s):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
  return jax.tree.map(one, tree, shardings)


# ----------------------------------------------------------------- batches


def local_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
  """The global row indices of a ``[batch_size, ...]`` batch that this
  process's devices hold, in the order ``make_array_from_process_local_data``
  expects them (blocks sorted by their first row)."""
  index = sharding.addressable_devices_indices_map((batch_size,))
  starts = sorted({(idx[0].start or 0) for idx in index.values()})
  first = next(iter(index.values()))[0]
  size = (first.stop or batch_size) - (first.start or 0)
  return np.concatenate([np.arange(s, s + size) for s in starts])


def global_batch(local: dict, sharding: NamedSharding,
                 batch_size: int) -> dict:
  """One global array per entry from this process's rows of it."""
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (batch_size,) + np.shape(v)[1:])
          for k, v in local.items()}


# --------------------------------------------------------------- processes


def initialize(coordinator: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Starts ``jax.distributed`` if more than one process is asked for (by
  arguments, else ``LMX_COORDINATOR``/``LMX_NUM_PROCESSES``/``LMX_PROCESS_ID``).
  Must run before anything touches a device; returns whether it started."""
  env = os.environ.get
  coordinator = coordinator or env('LMX_COORDINATOR') or None
  if num_processes is None and env('LMX_NUM_PROCESSES'):
    num_processes = int(env('LMX_NUM_PROCESSES'))
  if process_id is None and env('LMX_PROCESS_ID'):
    process_id = int(env('LMX_PROCESS_ID'))
  if not num_processes or num_processes <= 1:
    return False
  if not coordinator or process_id is None:
    raise _error(
        f'{num_processes} processes need a coordinator address (host:port '
        'of process 0) and this process\'s id: --coordinator and '
        '--process_id, or LMX_COORDINATOR and LMX_PROCESS_ID.')
  if not 0 <= process_id < num_processes:
    raise _error(f'The process id {process_id} must be in [0, '
                 f'{num_processes}).')
  # CPU devices talk to each other through gloo; other platforms ignore it.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes,
                             process_id=process_id)
  return True


def is_primary() -> bool:
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits for every process to reach ``name`` (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def agree_stop(signum: Optional[int]) -> Optional[int]:
  """The stop request of any process (its signal number), the same on all
  of them; with one process, ``signum`` itself."""
  if jax.process_count() == 1:
    return signum
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  every = multihost_utils.process_allgather(np.int32(signum or 0))
  top = int(np.max(every))
  return top or None


def broadcast_ints(values: Sequence[int], length: int) -> list[int]:
  """Process 0's ``values`` (at most ``length`` non-negative ints) on every
  process."""
  if jax.process_count() == 1:
    return list(values)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  buf = np.full((length,), -1, np.int32)
  buf[:len(values)] = values
  out = multihost_utils.broadcast_one_to_all(buf)
  return [int(v) for v in np.asarray(out) if v >= 0]
