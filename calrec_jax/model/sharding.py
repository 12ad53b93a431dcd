"""Device mesh (data, fsdp, tensor) and logical-axis rules that place params, optimizer state and batches."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from calrec_jax.errors import ConfigError
from calrec_jax.model import host_collectives
from calrec_jax.model.partitioning import DEFAULT_RULES, logical_spec  # noqa: F401  (re-exported)

MESH_AXES = ("data", "fsdp", "tensor")



def mesh_shape(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Resolve one -1 entry so that the product equals the device count."""
  sizes = list(sizes)
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh sizes {sizes}: at most one may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"mesh sizes {sizes} do not divide {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ConfigError(f"mesh sizes {sizes} (product {int(np.prod(sizes))}) must use all {num_devices} devices; "
                      "set one of mesh.data/fsdp/tensor to -1 to fill")
  return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  shape = mesh_shape([data, fsdp, tensor], len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def mesh_from_config(section) -> Mesh:
  """The mesh of a config's `mesh` section (data, fsdp, tensor)."""
  return make_mesh(section.data, section.fsdp, section.tensor)


def shardings_from_boxed(abstract_boxed: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """A tree of NamedSharding for a tree whose leaves may be nn.LogicallyPartitioned (from eval_shape)."""
  def one(x):
    if isinstance(x, nn.LogicallyPartitioned):
      return NamedSharding(mesh, logical_spec(tuple(x.names), x.value.shape, mesh, rules))
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map(one, abstract_boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def abstract_with_sharding(abstract, shardings):
  """ShapeDtypeStructs carrying their target shardings (ahead-of-time lowering, orbax restore)."""
  return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def gather_to_host(tree):
  """Host numpy copy of (possibly multi-host sharded) arrays; a collective when there are several processes and
  some array spans them (arrays this process holds whole are copied without one)."""
  local = all(getattr(x, "is_fully_addressable", True) for x in jax.tree_util.tree_leaves(tree))
  if jax.process_count() == 1 or local:
    return jax.device_get(tree)
  return host_collectives.allgather(tree, tiled=True)


def gather_objects(obj) -> list:
  """Every process's picklable `obj`, in process order; a collective when there are several processes."""
  if jax.process_count() == 1:
    return [obj]
  import pickle
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(host_collectives.allgather(np.asarray([data.size], np.int64))).reshape(-1)  # [P]
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  every = np.asarray(host_collectives.allgather(padded))  # [P, max size]
  return [pickle.loads(every[p, :int(n)].tobytes()) for p, n in enumerate(sizes)]


def place_host_array(a: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from the same host array on every process (each supplies its addressable shards)."""
  return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim split over data x fsdp; everything else replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble each host's rows into global arrays sharded over the batch axes."""
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, v) for k, v in local.items()}
