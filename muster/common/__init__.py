"""What the control plane, the agent and the CLI share besides the generated API."""
