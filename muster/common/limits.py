"""Message sizes the control plane, the agent and the CLI agree on.

Container output may be any size; gRPC messages may not. An agent ships a line
longer than ``LOG_PART_BYTES`` in parts and never sends a ``LogBatch`` of more
than ``LOG_BATCH_BYTES``; the control plane answers ``GetRunLogs`` in
responses of about that much text. The agent's channel may send messages of
up to ``AGENT_MAX_SEND_BYTES`` (a batch, or a Register listing many
containers) and the control plane's server receives up to
``SERVER_MAX_RECEIVE_BYTES``, twice that, so whatever an agent may send is
always accepted. Replies to clients stay well below gRPC's 4 MiB default
receive limit, so any gRPC client reads them.
"""

from __future__ import annotations

LOG_PART_BYTES = 64 * 1024
"""Longest piece of a line in one log entry, in bytes of UTF-8 (longer lines come in parts)."""
LOG_BATCH_BYTES = 1024 * 1024
"""Largest LogBatch (serialized) an agent sends, and the text per GetRunLogs response."""
AGENT_MAX_SEND_BYTES = 8 * 1024 * 1024
"""Largest message the agent's channel sends."""
SERVER_MAX_RECEIVE_BYTES = 2 * AGENT_MAX_SEND_BYTES
"""Largest message the control plane's server receives."""
