"""An encrypted repository whose config.json is set back to plain text (format 1): a process
that knows a key for it refuses to use it instead of writing backups in the clear."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_encryption import FAST_KDF, PASSPHRASE
from txnbackup.constants import FORMAT_VERSION
from txnbackup.errors import EncryptionDowngrade
from txnbackup.keyfile import KeyAccess, KeyMode, NewKey
from txnbackup.repository import CONFIG_NAME, Repository, RepositoryConfig

CS = 64 * 1024


def downgrade(repo: Repository) -> None:
    """What someone able to write the repository does: same id, no encryption."""
    plain = RepositoryConfig(FORMAT_VERSION, repo.chunk_size, repo.id)
    (repo.path / CONFIG_NAME).write_bytes(plain.to_json())


def test_a_process_with_a_passphrase_refuses_a_downgraded_repository(tmp_path: Path) -> None:
    # Given an encrypted (repokey) repository whose config.json now says "not encrypted"
    repo = Repository.init(
        tmp_path / "repo", CS, NewKey(KeyMode.REPOKEY, PASSPHRASE, KeyAccess(), FAST_KDF)
    )
    downgrade(repo)
    # When a process configured with a passphrase opens it, Then it is refused (key error)
    with pytest.raises(EncryptionDowngrade) as refused:
        Repository.open(repo.path, KeyAccess(PASSPHRASE))
    assert refused.value.exit_code == 10
    assert str(refused.value).startswith(f"repository {repo.path} says it is not encrypted")
    assert "a passphrase is configured" in str(refused.value)


def test_a_process_holding_the_keyfile_key_refuses_a_downgraded_repository(
    tmp_path: Path,
) -> None:
    # Given a keyfile-mode repository, its key in the process's key directory, downgraded
    keys = KeyAccess(key_dir=tmp_path / "keys")
    (tmp_path / "keys").mkdir()
    repo = Repository.init(
        tmp_path / "repo", CS, NewKey(KeyMode.KEYFILE, PASSPHRASE, keys, FAST_KDF)
    )
    downgrade(repo)
    # When a process with no passphrase but that key opens it, Then it is refused, naming it
    with pytest.raises(EncryptionDowngrade, match=f"the key {tmp_path / 'keys' / repo.id}"):
        Repository.open(repo.path, keys)
    # And a named key file of this repository (TXNBACKUP_KEY_FILE) is as good a witness
    named = KeyAccess(key_file=tmp_path / "keys" / repo.id)
    with pytest.raises(EncryptionDowngrade):
        Repository.open(repo.path, named)


def test_a_plain_repository_still_opens_without_a_key_or_with_another_ones(
    tmp_path: Path,
) -> None:
    # Given a plain repository and a key directory holding a key of another repository
    keys = KeyAccess(key_dir=tmp_path / "keys")
    (tmp_path / "keys").mkdir()
    other = Repository.init(
        tmp_path / "other", CS, NewKey(KeyMode.KEYFILE, PASSPHRASE, keys, FAST_KDF)
    )
    plain = Repository.init(tmp_path / "plain", CS)
    # Then it opens with no key, and with keys that are not its own
    assert not Repository.open(plain.path).encrypted
    assert not Repository.open(plain.path, keys).encrypted
    assert not Repository.open(
        plain.path, KeyAccess(key_file=keys.location(other.path, other.id, KeyMode.KEYFILE))
    ).encrypted


def test_repositories_named_plain_are_opened_despite_a_passphrase(tmp_path: Path) -> None:
    # Given a process with a passphrase that also uses plain repositories below one directory
    repos = tmp_path / "repos"
    plain = Repository.init(repos / "plain", CS)
    elsewhere = Repository.init(tmp_path / "elsewhere", CS)
    keys = KeyAccess(PASSPHRASE, plain_ok=(repos.resolve(),))
    # Then those open, and a plain repository anywhere else is still refused
    assert not Repository.open(plain.path, keys).encrypted
    with pytest.raises(EncryptionDowngrade):
        Repository.open(elsewhere.path, keys)
