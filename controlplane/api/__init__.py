"""gRPC adapters: servicers translate protobuf <-> domain and map errors to status codes."""
