"""Run by tests/test_flash.py in a subprocess with 8 CPU devices: the
gradients of every parameter with the fused kernel under a data x fsdp x
tensor mesh (per shard, through jax.shard_map) and with the dense backend.
Prints one JSON line {position: [max |difference|, max |gradient|]}."""

import json
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from lmx.model import transformer as model_lib  # noqa: E402
from lmx import sharding  # noqa: E402
from lmx import trees  # noqa: E402
from lmx.training import run_state


def grads(position, backend):
  c = base.get_config('size=tiny')
  c.model.position, c.model.attention = position, backend
  c.model.d_model, c.model.num_heads, c.model.attention_block = 32, 4, 16
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  mesh = sharding.make_mesh(c)
  graphdef, params = run_state.init_model(c)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 257, (8, 21)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(21) + 3, (8, 21)).astype(jnp.int32)
  apply = run_state.apply_fn(graphdef)

  def loss(p, x, pos):
    return model_lib.cross_entropy(apply(p, x, pos), jnp.roll(x, -1, 1)).mean()

  with jax.set_mesh(mesh):
    p = sharding.place(params, sharding.tree_shardings(params, mesh))
    rows = sharding.batch_sharding(mesh)
    g = jax.jit(jax.grad(loss))(p, jax.device_put(tokens, rows),
                                jax.device_put(positions, rows))
  return jax.device_get(g)


out = {}
for position in sys.argv[1:]:
  ref, got = grads(position, 'dense'), grads(position, 'flash')
  diff = max(float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
  scale = max(float(np.abs(a).max()) for a in jax.tree.leaves(ref))
  pos_diff = max((float(np.abs(a - b).max()) for (path, a), (_, b) in zip(
      jax.tree_util.tree_flatten_with_path(got)[0],
      jax.tree_util.tree_flatten_with_path(ref)[0])
      if 'position' in trees.path_keys(path)), default=0.0)
  pos_scale = max((float(np.abs(a).max()) for path, a in
                   jax.tree_util.tree_flatten_with_path(ref)[0]
                   if 'position' in trees.path_keys(path)), default=0.0)
  out[position] = [diff, scale, pos_diff, pos_scale]
print(json.dumps(out))
