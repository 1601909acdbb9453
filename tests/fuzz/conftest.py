"""The fuzz test's control plane: secure, in this process (tests/security/conftest.py)."""

from tests.security.conftest import secure  # noqa: F401  (the `secure` fixture)
