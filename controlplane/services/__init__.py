"""Use cases: each combines core decisions with the store. No gRPC here."""
