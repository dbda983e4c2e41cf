"""The error every weight converter raises: it names the file, key or shape that does not fit."""


class ConversionError(ValueError):
  """A checkpoint's weights do not fit the converter's table (missing, unexpected or mis-shaped keys)."""
