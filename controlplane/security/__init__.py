"""Trust: the cluster CA and its certificates (files), and the TLS credentials of the server."""
