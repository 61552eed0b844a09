"""The GPU machine's missing packages, for the CPU rehearsal of the GPU check: put this folder
first on PYTHONPATH and `import nvidia.dali`, `import av` and `import webdataset` (and their
submodules) raise ModuleNotFoundError, as they do there (as the project describes the GPU machine: no DALI, no PyAV, no
webdataset). Python imports `sitecustomize` at start-up when it is on the path; nothing else
here changes.
"""

import importlib.abc
import sys

MISSING = ("nvidia.dali", "av", "webdataset")


class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in MISSING):
            raise ModuleNotFoundError(f"No module named {name!r} (the GPU machine has no "
                                      f"{name.split('.')[0] if name != 'nvidia.dali' else 'DALI'};"
                                      " benchmarks/gpu/offline)", name=name)
        return None


sys.meta_path.insert(0, _Missing())
