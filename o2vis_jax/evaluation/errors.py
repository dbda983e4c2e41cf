"""The one exception type of the evaluation package."""


class EvaluationInputError(ValueError):
  """A ground-truth or results input that the protocol cannot score as given.

  The message names the file or input, the video and the annotation or result, so that a broken
  results file is fixed at its source instead of being scored silently wrong (the official
  evaluator truncates, zero-fills or drops such entries).
  """
