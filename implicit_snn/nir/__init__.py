"""Interchange through NIR, the Neuromorphic Intermediate Representation (the optional ``nir`` package).

``to_nir(model)`` writes a trained feedback SNN as a NIR graph with a cycle (the feedback edge
delayed one step; reset by subtraction as a Scale edge from the spikes back into the
integrator), exact where the format allows and refused with a reason where it does not;
``from_nir(graph_or_path)`` replays a NIR graph, ours or another tool's, as a PyTorch model.
"""

from ._export import DEFAULT_DT, ENCODING, MODES, NIRExportError, check_connected, to_nir
from ._import import NIRModel, from_nir, read_graph
from ._nodes import require_nir


def write(graph, path) -> None:
    """``nir.write`` to ``path``, atomically (a failure leaves no half-written file)."""
    import os
    import tempfile
    from pathlib import Path

    nir = require_nir()
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.",
                                         suffix=".tmp")
    os.close(handle)
    try:
        nir.write(temporary, graph)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


__all__ = ["DEFAULT_DT", "ENCODING", "MODES", "NIRExportError", "NIRModel", "check_connected", "from_nir",
           "read_graph", "require_nir", "to_nir", "write"]
