"""The grading worker: one prepared notebook, run in a real IPython kernel in the sandbox.

``npfl_course.autograde`` (the parent) runs ``python -I -m npfl_course.worker`` once per
notebook under :func:`npfl_course.sandbox.run_sandboxed`. The parts:

* :mod:`npfl_course.worker.protocol`: what parent and worker agree on (the command line,
  the output notebook's metadata, the exit statuses); the public surface below;
* :mod:`npfl_course.worker.driver`: the worker itself, nbclient with nbgrader's settings;
* :mod:`npfl_course.worker.trusted`: the test cells, run in the worker, the student's
  names as proxies; :mod:`npfl_course.worker.agent`: the kernel's end of their calls;
* :mod:`npfl_course.worker.prepare`: loaded into the student's kernel before its first
  cell (the course's packages from the installation only, preimported);
* :mod:`npfl_course.worker.zygote`: the kernel, forked from the worker;
  :mod:`npfl_course.worker.hiding`: the modules it cannot read (an assignment's
  references).
"""

from npfl_course.worker.hiding import HidingError, check_hideable, landlock_abi
from npfl_course.worker.protocol import (
    EXIT_INTERNAL,
    MATPLOTLIB_CACHE,
    META_KEY,
    ResultChannel,
    ResultWriter,
    bound_names,
    build_matplotlib_cache,
    copy_matplotlib_cache,
    is_trusted,
    worker_command,
)

__all__ = [
    "EXIT_INTERNAL",
    "HidingError",
    "MATPLOTLIB_CACHE",
    "META_KEY",
    "ResultChannel",
    "ResultWriter",
    "bound_names",
    "build_matplotlib_cache",
    "check_hideable",
    "copy_matplotlib_cache",
    "is_trusted",
    "landlock_abi",
    "worker_command",
]
