"""The embedded data plane: where buffers' bytes live, served over HTTP.

`DataPlane` (local disk, `server.py`) implements the BufferService's
`BufferStorage` port (`controlplane/services/buffers.py`); a second backend
(an S3-compatible store) would implement the same four methods; see
docs/buffers-format.md for what it must guarantee.
"""
