"""What the config files share: the ``:tiny`` smoke variant and the error for other tails.

``jaxembed train configs/NAME.py:tiny`` asks ``get_config("tiny")`` for a random
2-layer model (``tiny-random``) and a handful of steps; :func:`variant` builds it
from the paper config with :data:`TINY` and the file's own tiny overrides, so
every config's smoke run differs from :data:`TINY` only where it must.

The config files are loaded by path (:func:`jaxembed.train.config.load_config`),
not imported as a package, so a relative import cannot reach this file; each
config loads it from beside itself::

    variant = runpy.run_path(str(pathlib.Path(__file__).with_name("_common.py")))["variant"]

which works wherever the ``configs`` folder is and whatever the working directory.
"""

TINY = dict(model="tiny-random", batch_size=16, max_length=16, steps=4, eval_every=2,
            save_every=2, mixed_precision=False)


def variant(cfg, arg, **tiny):
    """``cfg`` for ``arg=None``; for ``"tiny"``, ``cfg`` with :data:`TINY` and then
    ``tiny`` applied; any other ``arg`` is a ``ValueError`` that names it."""
    if not arg:
        return cfg
    if arg == "tiny":
        return cfg.replace(**{**TINY, **tiny})
    raise ValueError(f"unknown config arg {arg!r} (use 'tiny' or nothing)")
