"""Settings, all from the environment with the prefix MNIST_ (e.g. MNIST_DEVICE=cpu)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MNIST_", extra="ignore")

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
        description="on CUDA, replay each forward pass of up to batch_max_size images from a "
        "captured graph (1.7-2.9x less CPU per pass than launching layer by layer)",
    )

    max_upload_bytes: int = Field(5 * 1024 * 1024, ge=1, description="bytes per image file")
    max_request_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="bytes per request body (batches included)"
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height limit")
    max_batch_size: int = Field(256, ge=1, description="images per batch request")

    batching: bool = Field(True, description="join concurrent requests into one forward pass")
    batch_max_size: int = Field(64, ge=1, description="images per joined forward pass")
    batch_max_delay_ms: float = Field(
        1.0, ge=0, description="longest a request waits for others to join its pass"
    )
    batch_queue_limit: int = Field(
        2048, ge=1, description="images waiting per model before answering 503"
    )

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated API keys; any key turns auth on"
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
    port: int = 8000
    workers: int = Field(1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("rate_limit_storage")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://")):
            raise ValueError("use memory:// or redis://host:port (rediss:// for TLS)")
        return value

    @field_validator("models", "api_keys", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
