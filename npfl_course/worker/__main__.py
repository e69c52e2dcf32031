"""``python -m npfl_course.worker IN OUT``: see :mod:`npfl_course.worker.driver`."""

import os
import sys

from npfl_course.worker.driver import main

sys.stdout.flush()
status = main()
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)  # the kernel's threads and channels must not keep the worker alive
