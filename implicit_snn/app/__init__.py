"""The ``implicit-snn`` application: the command line, run settings, building a run from them, the
run directory, the commands that read checkpoints, plots and the progress display.

The library (``implicit_snn`` and its other subpackages) never imports from here.
"""

from .._siblings import require_sibling_package

require_sibling_package("models")
