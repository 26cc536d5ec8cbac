"""What handlers depend on: the settings and the loaded models, as Annotated aliases."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np
from fastapi import Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from service.batcher import Arrival, MicroBatcher
from service.errors import ModelNotFound, NotReady
from service.predictor import Predictor


@dataclass
class Registry:
    """The models this process serves; filled once by the lifespan."""

    predictors: dict[str, Predictor] = field(default_factory=dict)  # name -> latest version
    versions: dict[str, dict[str, Predictor]] = field(default_factory=dict)  # name -> all
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)  # by Predictor.key

    default: str | None = None
    ready: bool = False

    def add(self, loaded: list[Predictor]) -> None:
        for predictor in loaded:
            self.versions.setdefault(predictor.name, {})[predictor.version] = predictor
        self.predictors = {
            name: versions[max(versions, key=int)] for name, versions in self.versions.items()
        }

    def all(self) -> list[Predictor]:
        return [p for versions in self.versions.values() for p in versions.values()]

    def get_version(self, name: str, version: str) -> Predictor:
        versions = self.versions.get(self.get(name).name, {})
        if version not in versions:
            available = ", ".join(sorted(versions, key=int))
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; available: {available}"
            )
        return versions[version]

    def get(self, name: str | None) -> Predictor:
        if not self.ready:
            raise NotReady("the model is not loaded yet")
        key = name or self.default
        if key not in self.predictors:
            raise ModelNotFound(
                f"unknown model {key!r}; loaded: {', '.join(sorted(self.predictors))}"
            )
        return self.predictors[key]

    def arriving(self, predictor: Predictor) -> contextlib.AbstractContextManager[Arrival | None]:
        """Around a request's reading and preparing: its model's batcher may wait for it."""
        batcher = self.batchers.get(predictor.key)
        return batcher.arriving() if batcher is not None else contextlib.nullcontext()

    async def infer(
        self, predictor: Predictor, images: np.ndarray, arrival: Arrival | None = None
    ) -> np.ndarray:
        """Probabilities for preprocessed images: through the model's batcher when batching is
        on, else one forward pass of its own in the threadpool."""
        batcher = self.batchers.get(predictor.key)
        # A request that fills a pass by itself gains nothing from waiting for others.
        if batcher is not None and len(images) < batcher.max_batch:
            return await batcher.submit(images, arrival)
        if batcher is not None:
            batcher.arrived(arrival)
        return await run_in_threadpool(predictor.predict, images)


# `async def` although it never awaits: FastAPI runs a plain `def` dependency in the
# threadpool, and that hop per request cost more than the rest of a PNG prediction.


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]
ModelName = Annotated[
    str | None, Query(description="which loaded model answers (default: the service's default)")
]
