"""Settings, all from the environment with the prefix MNIST_ (e.g. MNIST_DEVICE=cpu).

Every value is checked when the settings load, so that a wrong one stops the service at start-up
with a message naming it, not on the first request: the rate limit is parsed, the API-keys file
read, the trusted proxies parsed as addresses or networks.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from limits import parse
from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


class Settings(BaseSettings):
    # populate_by_name: Settings(field=...) in code; the aliases are environment names only.
    model_config = SettingsConfigDict(env_prefix="MNIST_", extra="ignore", populate_by_name=True)

    weights_dir: Path = Field(REPO_WEIGHTS, description="folder of <name>.pt + <name>.json")
    model: str = Field("cnn", description="default model for the plain REST endpoints")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated models to load (default: every .pt in weights_dir)",
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    torch_threads: int = Field(
        0,
        ge=0,
        description="CPU threads per worker (0: the CPUs this process may use / the worker "
        "processes, see service/threads.py)",
    )
    int8: bool = Field(
        True,
        description="on the CPU, serve weights/int8/<name>.pt (python -m training.quantize) in "
        "place of the float model when present",
    )

    cuda_graphs: bool = Field(
        True,
        description="on CUDA, replay each forward pass of up to batch_max_images images from a "
        "captured graph (1.7-2.9x less CPU per pass than launching layer by layer)",
    )

    max_upload_bytes: int = Field(5 * 1024 * 1024, ge=1, description="bytes per image file")
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="bytes per request body (batches included)"
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height limit")
    max_request_images: int = Field(
        256,
        ge=1,
        description="images per request (/predict/batch, v2 infer); old name MNIST_MAX_BATCH_SIZE",
        validation_alias=AliasChoices("mnist_max_request_images", "mnist_max_batch_size"),
    )

    batching: bool = Field(True, description="join concurrent requests into one forward pass")
    batch_max_images: int = Field(
        64,
        ge=1,
        description="images per joined forward pass (and the largest CUDA graph); old name "
        "MNIST_BATCH_MAX_SIZE",
        validation_alias=AliasChoices("mnist_batch_max_images", "mnist_batch_max_size"),
    )
    batch_max_delay_ms: float = Field(
        1.0, ge=0, description="longest a request waits for others to join its pass"
    )
    batch_queue_limit: int = Field(
        2048, ge=1, description="images waiting per model before answering 503"
    )

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated API keys; any key turns auth on (those of api_keys_file "
        "are added when the settings load)",
    )
    api_keys_file: Path | None = Field(None, description="file with one API key per line")
    auth_probes: bool = Field(False, description="also require a key on the health probes")
    auth_metrics: bool = Field(False, description="also require a key on /metrics")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated origins allowed by CORS (none: off)"
    )
    rate_limit: str | None = Field(
        None, description='requests per client, e.g. "50/second" or "1000/minute" (none: off)'
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="where rate limits are counted: memory:// (each worker process on its "
        "own) or redis://host:port[/db] (shared by every worker and replica)",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated addresses or networks (or *) of proxies whose "
        "X-Forwarded-For names the client (none: the connection's own address)",
    )
    drain_seconds: float = Field(
        5.0,
        ge=0,
        description="after SIGTERM: seconds of answering 503 on readiness while still "
        "serving, before the listener closes (SIGINT skips it)",
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("rate_limit_storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("use memory:// or redis://host:port (rediss:// for TLS)")
        return value

    @field_validator("rate_limit")
    @classmethod
    def _parseable_limit(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            parse(value)  # the `limits` notation the middleware counts with
        except ValueError as exc:
            raise ValueError(f"{exc}: write e.g. 50/second or 1000/minute") from None
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        # uvicorn would take a mistyped address as a literal host name and silently trust nobody.
        if "*" in value and len(value) > 1:
            raise ValueError("* trusts every proxy: give it alone, or list the proxies")
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry)  # as uvicorn parses it: no host bits past the mask
            except ValueError as exc:
                raise ValueError(f"{entry!r}: {exc} (want an address, a network or *)") from None
        return value

    @model_validator(mode="after")
    def _read_keys_file(self) -> Settings:
        """The keys in api_keys_file (one per line, # comments) join api_keys, read once here."""
        if self.api_keys_file is None:
            return self
        try:
            text = Path(self.api_keys_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"MNIST_API_KEYS_FILE: cannot read {str(self.api_keys_file)!r}: {exc}"
            ) from None
        keys = [line.strip() for line in text.splitlines()]
        self.api_keys = self.api_keys + [k for k in keys if k and not k.startswith("#")]
        return self

    @field_validator("models", "api_keys", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()


def describe(error: ValidationError) -> str:
    """One line per wrong setting, named as in the environment: MNIST_PORT: ..."""
    lines = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        if name:  # a model-wide check names its setting in the message itself
            message = f"{name if name.startswith('MNIST_') else f'MNIST_{name}'}: {message}"
        lines.append(message)
    return "\n".join(lines)
