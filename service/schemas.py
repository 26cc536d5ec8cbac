"""Request and response bodies of the REST API (the contract clients rely on)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

_ROW = {
    "type": "array",
    "items": {"type": "number", "minimum": 0, "maximum": 255},
    "minItems": 28,
    "maxItems": 28,
}
PIXELS_SCHEMA = {
    "description": "28 rows of 28 grey levels, or one flat list of 784; 0-255, MNIST polarity "
    "(0 = background, 255 = ink)",
    "oneOf": [
        {"type": "array", "items": _ROW, "minItems": 28, "maxItems": 28},
        {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 255},
            "minItems": 784,
            "maxItems": 784,
        },
    ],
}
# Validated by service.pixels.pixels_to_array in one numpy call (shape, NaN, range), which
# is both faster and gives clearer messages than per-element validation.
Pixels = Annotated[Any, WithJsonSchema(PIXELS_SCHEMA)]

_EXAMPLE_PIXELS = [[0] * 28 for _ in range(28)]
for _r in range(6, 22):
    _EXAMPLE_PIXELS[_r][13] = _EXAMPLE_PIXELS[_r][14] = 255  # a vertical stroke: a "1"

NORMALIZE_FIELD = Field(
    False,
    strict=True,  # documented as a boolean: 0, 1 or "yes" are refused, not guessed
    description="run the upload pipeline (crop to the ink, scale to 20 px, centre by mass) on "
    "the array first; off by default: arrays are taken as already in MNIST form",
)


class PixelsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"pixels": _EXAMPLE_PIXELS}]}
    )
    pixels: Pixels
    normalize: bool = NORMALIZE_FIELD


class BatchPixelsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"images": [_EXAMPLE_PIXELS]}]}
    )
    images: list[Pixels] = Field(description="pixel arrays, each like PixelsRequest.pixels")
    normalize: bool = NORMALIZE_FIELD


class Prediction(BaseModel):
    digit: int | None = Field(
        None, ge=0, le=9, description="the most probable digit (digit models only)"
    )
    label: str = Field(description='the name of the most probable class ("7", "Sneaker")')
    class_index: int = Field(ge=0, le=9, description="its index into the model's class_names")
    confidence: float = Field(description="probability of that class")
    probabilities: list[float] = Field(
        description="10 probabilities summing to 1, index = class (for digit models: the digit)"
    )
    model: str = Field(description="the model that answered")
    image: list[list[int]] | None = Field(
        None, description="the 28x28 input the model saw (only with ?include_image=true)"
    )
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "digit": 7,
                    "label": "7",
                    "class_index": 7,
                    "confidence": 0.998,
                    "model": "cnn",
                    "probabilities": [0.0, 0.0, 0.001, 0.0, 0.0, 0.0, 0.0, 0.998, 0.0, 0.001],
                }
            ]
        }
    )


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="one per input, in input order")


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong")
    index: int | None = Field(None, description="which image of a batch was wrong")
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": "no digit found: the image has no ink"}]}
    )


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    models: list[str] = Field(default_factory=list)
    default_model: str | None = None
    device: str | None = None


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())
    name: str
    architecture: str
    parameters: int | None
    input: dict
    dataset: str = Field(description="mnist (digits) or fashion-mnist (clothing)")
    classes: list[int]
    class_names: list[str] = Field(description="the class names, index = class")
    weights_file: str
    sha256: str
    test_accuracy: float | None
    trained_at: str | None
    device: str
    dtype: str
    torch_version: str


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]
