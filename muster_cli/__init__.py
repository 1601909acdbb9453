"""The thin `muster` CLI: parses flags and spec files, calls gRPC, prints results."""
