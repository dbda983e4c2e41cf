"""Config sections, one module each, composed by `configs/base.py`.

Each module has `get()` (the paper-scale defaults) and `tiny(config)` (in-place overrides that make
the section small enough for unit tests on a 2-core CPU).
"""
