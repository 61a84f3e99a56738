"""hpo's Hydra configs, importable so that any app can add ``pkg://hpo.conf`` to its search path.

In the source tree ``src/hpo/conf`` is a link to this folder; the wheel carries it as ``hpo/conf``.
"""
