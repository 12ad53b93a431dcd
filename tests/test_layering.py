"""The house rule: data -> model -> train -> eval -> baselines -> runner -> compare; no module imports from a
layer above its own (imports inside functions included)."""
import ast
import pathlib

LAYERS = {"errors": 0, "cli": 0, "huge_pages": 0, "compile_cache": 0, "paths": 0, "progress": 0, "config_check": 6, "data": 1, "model": 2, "adapters": 2, "train": 3, "eval": 4, "plan": 4, "baselines": 5,
          "runner": 6, "compare": 7, "main": 8, "evaluate": 8, "recommend": 8, "check": 8}
PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "calrec_jax"


def test_no_module_imports_from_a_layer_above_it():
  upward = []
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    own = LAYERS.get(parts[0]) if parts[0] != "__init__" else 0
    assert own is not None, f"{path}: add its top-level name to LAYERS"
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calrec_jax."):
        target = node.module.split(".")[1]
        if LAYERS.get(target, 0) > own:
          upward.append(f"{path.relative_to(PACKAGE)} imports {node.module}")
  assert not upward, upward


def test_no_import_circles_between_modules():
  """No module reaches itself through imports (module level or inside functions)."""
  graph = {}
  for path in PACKAGE.rglob("*.py"):
    name = ".".join(("calrec_jax",) + path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calrec_jax"):
        targets.add(node.module)
        targets.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    graph[name] = targets
  graph = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
  circles, state = [], {}

  def visit(m, stack):
    state[m] = "open"
    for t in sorted(graph[m]):
      if state.get(t) == "open":
        circles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t, stack + [t])
    state[m] = "done"
  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not circles, circles


def test_evaluation_and_planning_take_from_training_only_checkpoints_and_the_loss():
  """eval/ and plan/ read checkpoints and compute the training loss (validation; the planner measures the step);
  the model, its sharding, initialisation and the run builder (model/run_parts.py) live below train/."""
  allowed = {"calrec_jax.train.checkpoint", "calrec_jax.train.objective", "calrec_jax.train.step"}
  found = set()
  for layer in ("eval", "plan"):
    for path in (PACKAGE / layer).rglob("*.py"):
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("calrec_jax.train"):
          names = [node.module] if node.module != "calrec_jax.train" else [f"calrec_jax.train.{a.name}"
                                                                           for a in node.names]
          found.update((f"{layer}/{path.name}", n) for n in names)
  assert {n for _, n in found} <= allowed, sorted(f for f in found if f[1] not in allowed)
