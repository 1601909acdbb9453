"""The chaos test needs Podman and the test images (tests/e2e/conftest.py checks them)."""

from tests.e2e.conftest import podman_ready  # noqa: F401  (the `podman_ready` fixture)
