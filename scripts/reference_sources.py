"""What the fixture scripts share to run the authors' code: read its files from a (bare) git dir or a
checkout, and stub the imports it does not use in `sys.modules`.

None of the authors' code is part of this repository: the scripts read it at run time from where the user
has it (e.g. a `fetch`ed mirror) and copy it into a temporary package.
"""

import os
import subprocess
import sys
import types
from typing import Dict, Iterable, Optional, Tuple


def read_sources(paths: Iterable[str], git_dir: Optional[str] = None,
                 checkout_dir: Optional[str] = None) -> Tuple[str, Dict[str, str]]:
  """(commit, {path: text}) of `paths` at HEAD of `git_dir`, or in the checkout `checkout_dir` (commit
  'unknown' when the checkout is not a git work tree)."""
  paths = list(paths)
  if git_dir:
    git = ["git", f"--git-dir={git_dir}"]
    commit = subprocess.check_output(git + ["rev-parse", "HEAD"], text=True).strip()
    return commit, {p: subprocess.check_output(git + ["show", f"HEAD:{p}"], text=True) for p in paths}
  if not checkout_dir:
    raise SystemExit("give the authors' repository: a git dir or a checkout directory")
  texts = {}
  for path in paths:
    with open(os.path.join(checkout_dir, path)) as f:
      texts[path] = f.read()
  try:
    commit = subprocess.check_output(["git", "-C", checkout_dir, "rev-parse", "HEAD"], text=True,
                                     stderr=subprocess.DEVNULL).strip()
  except (subprocess.CalledProcessError, FileNotFoundError):
    commit = "unknown"
  return commit, texts


def stub_module(name: str, **attrs) -> types.ModuleType:
  """A module `name` holding `attrs`, installed in `sys.modules` (for imports the code never uses)."""
  module = types.ModuleType(name)
  module.__dict__.update(attrs)
  sys.modules[name] = module
  return module


class Registry:
  """detectron2's `Registry` as a decorator that registers nothing."""

  def __init__(self, *args, **kwargs):
    pass

  def register(self, *args, **kwargs):
    return lambda obj: obj
