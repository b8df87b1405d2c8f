"""Cloud-backup settings: keywords, environment variables and validation."""

from __future__ import annotations

import pytest

from immutable_logging.config import BackupConfig
from immutable_logging.errors import ConfigurationError


def test_explicit_none_disables_sse_and_env_fills_gaps() -> None:
    config = BackupConfig.from_options(
        {"enable_cloud_backup": True, "backup_provider": "s3", "s3_sse": None},
        log_directory="/tmp/logs",
        environ={"S3_BUCKET": "from-env", "S3_REGION": "eu-west-1"},
    )
    assert config.s3_sse is None
    assert (config.s3_bucket, config.s3_region) == ("from-env", "eu-west-1")
    backend = config.build_backend()
    assert backend.describe().startswith("s3://from-env")


@pytest.mark.parametrize("text", ["none", "None", "", " NONE "])
def test_settings_files_spell_no_sse_as_none(text: str) -> None:
    """A settings file cannot write None: s3_sse="none" was refused, by an error that
    named the backend's "sse" rather than the option."""
    config = BackupConfig.from_options(
        {"enable_cloud_backup": "true", "backup_provider": "s3", "s3_bucket": "b",
         "s3_sse": text}, log_directory="/tmp/logs", environ={})
    assert config.s3_sse is None
    assert config.build_backend().describe().startswith("s3://b")


def test_an_unknown_sse_names_the_option() -> None:
    with pytest.raises(ConfigurationError, match=r"^s3_sse must be one of AES256, aws:kms"):
        BackupConfig.from_options({"s3_sse": "aes256"}, log_directory="/x", environ={})


def test_keywords_win_over_environment_and_values_are_validated() -> None:
    env = {"ENABLE_CLOUD_BACKUP": "yes", "BACKUP_BATCH_SIZE": "50", "BACKUP_PROVIDER": "LOCAL"}
    config = BackupConfig.from_options({"backup_batch_size": 7}, log_directory="/x", environ=env)
    assert (config.enable_cloud_backup, config.backup_batch_size) == (True, 7)
    assert config.backup_provider == "local" and config.backup_directory == "/x-backup"
    for bad in ({"backup_provider": "ftp"}, {"backup_batch_size": 0},
                {"backup_flush_interval": -1}, {"enable_cloud_backup": "perhaps"},
                {"s3_object_lock_days": 0}, {"not_an_option": 1}):
        with pytest.raises(ConfigurationError):
            BackupConfig.from_options(bad, log_directory="/x", environ={})
    with pytest.raises(ConfigurationError, match="GCS_BUCKET"):
        BackupConfig.from_options({"enable_cloud_backup": True, "backup_provider": "gcs"},
                                  log_directory="/x", environ={})
