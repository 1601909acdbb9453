"""Where a job container finds its buffers' named pipes.

Shared by the control plane (which names ``<NAME>_PIPE`` in the job's
environment and command) and the agent (which mounts the run's FIFO
directory there), so the two can never disagree.
"""

PIPE_DIR = "/run/muster/pipes"
"""The directory, inside a job container, that holds one FIFO per buffer."""


def pipe_path(name: str) -> str:
    """The FIFO of buffer parameter `name` inside the container."""
    return f"{PIPE_DIR}/{name}"


def pipe_variable(name: str) -> str:
    """The variable naming that FIFO, as Tyger names it: the parameter
    upper-cased with `_PIPE` after it, a `-` left as it is (`MY-OUT_PIPE`)."""
    return f"{name.upper()}_PIPE"
