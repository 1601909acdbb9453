"""Pure domain logic of the control plane. Nothing here performs I/O."""
