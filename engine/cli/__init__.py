"""The command line: ``python -m engine.run`` (and the ``turngraph`` console script).

The only part of :mod:`engine` that imports :mod:`handlers` and :mod:`sessions`: the
layers run one way, ``engine`` ← ``handlers`` ← ``sessions`` ← this package.
"""
