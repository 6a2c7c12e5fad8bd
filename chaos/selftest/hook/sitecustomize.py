"""chaos selftest's hook: plants the bug named by CHAOS_PLANT in this interpreter, then runs the next
sitecustomize on sys.path (the site's own), as ddtrace's bootstrap does.

Put on PYTHONPATH by `chaos selftest` only. Standard library only; never imports chaos, torch or numpy;
never takes the process down: a plant that cannot be installed is a `failed` record and one line on stderr.
"""

import os
import sys


def _chaos_plant():
    bug = os.environ.get("CHAOS_PLANT")
    if not bug:
        return
    try:
        import chaos_plants

        chaos_plants.install()
    except Exception as error:
        text = f"{type(error).__name__}: {error}"
        try:
            from chaos_plants import log

            text = log.one_line(error)
            log.record("failed", bug=bug, error=text)
        except Exception:
            pass
        try:
            sys.stderr.write(f"chaos plant {bug!r}: failed: {text}\n")
            sys.stderr.flush()
        except Exception:
            pass


def _chain_next_sitecustomize():
    """Finds the sitecustomize that this one shadows (on sys.path, outside this directory) and runs it."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.realpath(__file__))

    def elsewhere(entry):
        try:
            return os.path.realpath(entry or os.getcwd()) != here
        except Exception:
            return True

    try:
        spec = importlib.machinery.PathFinder.find_spec(
            "sitecustomize", [p for p in sys.path if isinstance(p, str) and elsewhere(p)])
        if spec is None or spec.loader is None:
            return
        if spec.origin and os.path.realpath(spec.origin) == os.path.realpath(__file__):
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
    except Exception as error:  # what site.py does with a broken sitecustomize
        if isinstance(error, ImportError) and getattr(error, "name", None) == "sitecustomize":
            return
        try:
            sys.stderr.write("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                             f"{type(error).__name__}: {error}\n")
        except Exception:
            pass


_chaos_plant()
_chain_next_sitecustomize()
del _chaos_plant, _chain_next_sitecustomize
