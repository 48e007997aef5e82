from pathlib import Path

import pytest

from freehold_serving.args import ApiKeysConfig, VaultKeySource
from freehold_serving.auth import ApiKeys, load_api_keys


def test_keys_accept_exact_matches_only() -> None:
    keys = ApiKeys(["k1", "k2"])
    assert keys.accepts("k2") and not keys.accepts("k3") and not keys.accepts("")


def test_no_config_means_no_auth() -> None:
    assert load_api_keys(None) is None


def test_key_file_comments_and_blanks(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# keys\n\nalpha\n  beta  \n")
    keys = load_api_keys(ApiKeysConfig(file=str(f)))
    assert keys is not None and len(keys) == 2 and keys.accepts("beta")


def test_empty_key_source_fails_closed(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# nothing\n")
    with pytest.raises(RuntimeError, match="refusing to serve without auth"):
        load_api_keys(ApiKeysConfig(file=str(f)))
    with pytest.raises(RuntimeError, match="no Vault client"):
        load_api_keys(ApiKeysConfig(vault=VaultKeySource(path="a/b")))
