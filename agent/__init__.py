"""muster node agent: runs a node's share of runs on Podman and streams their state.

The agent is deliberately independent of ``controlplane``: it speaks only the
``muster.v1`` gRPC API, so either side can be replaced or restarted alone.
"""

from importlib import metadata

try:
    __version__ = metadata.version("muster")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
