"""The one exception type of the evaluation package, and JSON reading that raises it."""

import json
import os
from typing import Any, Union


class EvaluationInputError(ValueError):
  """A ground-truth or results input that the protocol cannot score as given.

  The message names the file or input, the video and the annotation or result, so that a broken
  results file is fixed at its source instead of being scored silently wrong (the official
  evaluator truncates, zero-fills or drops such entries).
  """


def read_json(path: Union[str, os.PathLike], what: str) -> Any:
  """Parses a JSON file; a missing, unreadable or malformed file raises EvaluationInputError naming
  `what` (e.g. 'ground truth') and the path."""
  path = os.fspath(path)
  try:
    with open(path) as f:
      return json.load(f)
  except OSError as e:
    raise EvaluationInputError(f"{what} {path}: cannot be read: {e.strerror or e}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise EvaluationInputError(f"{what} {path}: not valid JSON: {e}") from None


def parse_json(text: Union[str, bytes], where: str) -> Any:
  """json.loads with EvaluationInputError naming `where` on malformed text."""
  try:
    return json.loads(text)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise EvaluationInputError(f"{where}: not valid JSON: {e}") from None
