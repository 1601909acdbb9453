"""Where a job container finds its buffers' named pipes.

Shared by the control plane (which names ``<NAME>_PIPE`` in the job's
environment and command) and the agent (which mounts the run's FIFO
directory there), so the two can never disagree.
"""

PIPE_DIR = "/run/muster/pipes"
"""The directory, inside a job container, that holds one FIFO per buffer."""
