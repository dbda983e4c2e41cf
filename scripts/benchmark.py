"""Benchmarks: `python scripts/benchmark.py NAME [flags]`.

Each NAME is a module `scripts/benchmarks/NAME.py` with a `main(argv)` function; run
`python scripts/benchmark.py NAME --help` for its flags. Figures are printed, never asserted.
"""

import importlib
import os
import pkgutil
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)


def _available():
  return sorted(m.name for m in pkgutil.iter_modules([os.path.join(_HERE, "benchmarks")])
                if not m.name.startswith("_"))


def main():
  names = _available()
  if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
    print(__doc__)
    print("available:", ", ".join(names))
    return 0
  name = sys.argv[1]
  if name not in names:
    print(f"unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
    return 2
  import jax
  device = jax.devices()[0]
  print(f"backend {jax.default_backend()}, device {device.device_kind} ({device.platform}), "
        f"{jax.device_count()} device(s); jax {jax.__version__}", flush=True)
  module = importlib.import_module(f"benchmarks.{name}")
  return module.main(sys.argv[2:]) or 0


if __name__ == "__main__":
  sys.exit(main())
