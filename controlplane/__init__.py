"""muster control plane: durable codespecs and runs, scheduling, agent streams.

Layout:
  core/   pure domain logic, no I/O (validation, equality, quantities,
          run state machine, scheduler placement)
  store/  the Store interface and its SQLite implementation
  services/ use cases that combine core decisions with the store
  api/    gRPC servicers: translate protobuf <-> domain, map errors to codes
"""
