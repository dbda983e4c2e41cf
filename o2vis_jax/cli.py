"""What every command line of this project shares: how it starts, stops and reports bad input.

- `run(main)` replaces `absl.app.run(main)`:
  * `--help` / `--helpshort` / `--helpfull` print the usage and exit 0 (absl exits 1);
  * a usage error (`absl.app.UsageError`, an unknown or malformed flag, a missing required flag) prints
    one line `error: ...` and `see --help`, exit 2 (absl prints the whole help first);
  * an input error (`InputError` and the library's input errors: a bad checkpoint, config, video,
    annotation or results file) prints one line `error: ...` naming the file or field, exit 2; its
    traceback only with `-v 1` (absl's verbosity flag) or more;
  * Ctrl-C prints `interrupted` and exits 130 (training handles it itself: it saves, stops and raises
    a KeyboardInterrupt whose message, printed instead, says where it saved, and whose `exit_code` is
    the exit status: 130 for SIGINT, 143 for SIGTERM; see `o2vis_jax.train`);
  * a misspelt config override (`--config.trian.x=1`) is one line naming the field and the nearest one.
- `check_input_file`, `check_output_file` / `check_output_dir`: validate what is read and where results
  will go before the expensive work.
"""

import ast
import os
import re
import sys
import traceback
from typing import Callable, Iterable, Optional, Tuple, Type

from absl import app
from absl import flags

FLAGS = flags.FLAGS


class InputError(ValueError):
  """Bad input a user can fix (a path, a flag, a file's content): reported in one line, exit 2."""


def input_error_types() -> Tuple[Type[BaseException], ...]:
  """The library's exceptions that mean "bad input", reported without a traceback."""
  types = [InputError, app.UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
           PermissionError]
  for module, name in (("o2vis_jax.video_io", "VideoReadError"),
                       ("o2vis_jax.checkpoint_conversion.errors", "ConversionError"),
                       ("o2vis_jax.checkpoint_conversion.io", "UnsafePickleError"),
                       ("o2vis_jax.checkpoint_conversion.io", "CheckpointError"),
                       ("o2vis_jax.evaluation.errors", "EvaluationInputError"),
                       ("o2vis_jax.config_validation", "ConfigError"),
                       ("o2vis_jax.datasets.builders.common", "DataValidationError")):
    try:
      module_object = __import__(module, fromlist=[name])
    except ImportError:
      continue
    error = getattr(module_object, name, None)
    if isinstance(error, type) and issubclass(error, BaseException):
      types.append(error)
  return tuple(types)


def _verbose() -> bool:
  try:
    return FLAGS.is_parsed() and int(FLAGS["verbosity"].value) > 0
  except (KeyError, AttributeError, ValueError):
    return False


def _wants_help(argv) -> bool:
  return any(arg in ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?") for arg in argv[1:])


def _fail(message: str, show_help_hint: bool = True, code: int = 2):
  print(f"error: {message}", file=sys.stderr)
  if show_help_hint:
    print("see --help", file=sys.stderr)
  sys.exit(code)


def _config_override_error(error: Exception, argv) -> Optional[str]:
  """`--config.trian.x=1`: ml_collections raises a KeyError (AttributeError for a leaf) whose text is
  "'trian'\nDid you mean \"train\" instead of \"trian\"?"; -> one line naming the flag and the field."""
  if not isinstance(error, (KeyError, AttributeError)) or not error.args:
    return None
  text = str(error.args[0])
  if text[:1] in ("'", '"'):   # an AttributeError carries the KeyError's text quoted once more
    try:
      text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      pass
  missing = str(text).splitlines()[0].strip("'\"")
  for arg in argv[1:]:
    name = arg.lstrip("-").partition("=")[0]
    parts = name.split(".")
    if len(parts) > 1 and missing in parts[1:]:
      field = ".".join(parts[:parts.index(missing, 1) + 1])
      guess = re.search(r'Did you mean "([^"]+)"', str(text))
      hint = f"; did you mean {field.rsplit('.', 1)[0]}.{guess.group(1)}?" if guess else ""
      return f"{arg}: {field} is not a config field{hint}"
  return None


def run(main: Callable, argv=None) -> None:
  """`absl.app.run(main)` with the behaviour of the module docstring."""
  argv = list(sys.argv if argv is None else argv)
  if _wants_help(argv):
    app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True)
    sys.exit(0)
  try:
    remaining = FLAGS(argv)
  except flags.Error as e:   # unknown flag, bad value, missing required flag
    _fail(str(e).splitlines()[0])
  except InputError as e:    # a config file's get_config() may raise it while flags are parsed
    _fail(str(e), show_help_hint=False)
  except Exception as e:  # pylint: disable=broad-except  (a config file that fails to load)
    if _verbose():
      traceback.print_exc()
    _fail(_config_override_error(e, argv) or f"{type(e).__name__}: {e}".splitlines()[0],
          show_help_hint=False)
  errors = input_error_types()

  def checked_main(args):
    try:
      return main(args)
    except app.UsageError as e:
      _fail(str(e))
    except KeyboardInterrupt as e:   # training's TrainingInterrupted carries the line to show
      print(str(e) or "interrupted", file=sys.stderr)
      sys.exit(getattr(e, "exit_code", 130))
    except errors as e:
      if _verbose():
        traceback.print_exc()
      _fail(str(e), show_help_hint=False)

  app.run(checked_main, argv=argv, flags_parser=lambda _: remaining)


def check_input_file(path: str, flag: str) -> str:
  """`path` is an existing, readable file (not a directory)."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise InputError(f"--{flag} {path!r} does not exist")
  if os.path.isdir(path):
    raise InputError(f"--{flag} {path!r} is a directory; give a file")
  if not os.access(path, os.R_OK):
    raise InputError(f"--{flag} {path!r} is not readable")
  return path


def check_output_file(path: str, flag: str) -> str:
  """`path` can be written as a file: not a directory, its parent exists and is writable."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    raise InputError(f"--{flag} {path!r} is a directory; give a file path")
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise InputError(f"--{flag} {path!r}: directory {parent!r} does not exist")
  if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
    raise InputError(f"--{flag} {path!r} is not writable")
  return path


def check_output_dir(path: str, flag: str, create: bool = True) -> str:
  """`path` is (or can be created as) a writable directory."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise InputError(f"--{flag} {path!r} exists and is not a directory")
  if not os.path.exists(path):
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if not os.access(parent or "/", os.W_OK):
      raise InputError(f"--{flag} {path!r} cannot be created ({parent!r} is not writable)")
    if create:
      os.makedirs(path, exist_ok=True)
  elif not os.access(path, os.W_OK):
    raise InputError(f"--{flag} {path!r} is not writable")
  return path


def write_atomically(path: str, write: Callable[[str], None]) -> None:
  """`write(temporary path)`, then the file replaces `path`: an interrupted or failed write never leaves
  a truncated file, and an earlier file at `path` stays until the new one is complete."""
  temporary = f"{path}.tmp-{os.getpid()}"
  try:
    write(temporary)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def existing_paths(paths: Iterable[Tuple[str, str]]) -> None:
  """Each (flag, path) must exist: one line naming the first that does not."""
  for flag, path in paths:
    if path and not os.path.exists(path):
      raise InputError(f"--{flag} {path!r} does not exist")
