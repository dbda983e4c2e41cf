"""The error every weight converter raises: it names the file, key or shape that does not fit."""


class ConversionError(ValueError):
  pass
