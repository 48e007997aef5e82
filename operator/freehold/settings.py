"""Process settings, read once at the entry point and passed down (never read deeper)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LocalSettings(BaseSettings):
    """`freehold up`: serving one ModelDeployment on this machine."""

    model_config = SettingsConfigDict(env_prefix="FREEHOLD_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port the API listens on.")
    cpus: int | None = Field(default=None, ge=1, description="CPUs Ray may use; default all.")
    api_keys_file: Path | None = Field(
        default=None, description="File of accepted API keys, one per line; unset: no auth."
    )
    otlp_endpoint: str | None = Field(default=None, description="OTLP/HTTP trace endpoint.")
    ready_timeout_s: float = Field(default=600.0, gt=0)
