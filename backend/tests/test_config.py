import pytest
from pydantic import ValidationError

from src.config import DEFAULT_SECRET_KEY, Settings


@pytest.mark.parametrize("secret", [DEFAULT_SECRET_KEY, "short"])
def test_production_refuses_a_weak_secret_key(secret):
    with pytest.raises(ValidationError, match="SECRET_KEY must be set"):
        Settings(environment="production", secret_key=secret, _env_file=None)


def test_production_accepts_a_real_secret_key_and_development_needs_none():
    assert Settings(environment="production", secret_key="x" * 40, _env_file=None).secret_key == "x" * 40
    assert Settings(environment="development", _env_file=None).secret_key == DEFAULT_SECRET_KEY
