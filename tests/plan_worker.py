"""Run with 8 simulated CPU devices (XLA_FLAGS): prints JSON of the planner's total bytes per device against XLA's
compiled memory analysis of the real train step, for the shapes given as JSON in argv[1]."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from calrec_jax.model.config import preset  # noqa: E402
from calrec_jax.plan.estimate import StepShape, compiled_bytes, estimate  # noqa: E402


def main():
  out = []
  for name, batch, seq, mesh, options in json.loads(sys.argv[1]):
    shape = StepShape(batch, seq, 41, 42, tuple(mesh), **options)
    planned, compiled = estimate(preset(name), shape)["total"], compiled_bytes(preset(name), shape)["total"]
    out.append({"case": [name, batch, seq, mesh, options], "planned": planned, "compiled": compiled,
                "ratio": planned / compiled})
  print("RESULT " + json.dumps(out))


if __name__ == "__main__":
  main()
