"""Request and response models of the HTTP API (pydantic v2).

The request models are built from the dataset card of the served bundle, so `/docs` and
`/openapi.json` list the modalities by name with their kinds and shapes. A modality that
the card does not have fails validation with its name in the error location. The response
models do not depend on the card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

from dymo_ray.data.spec import DatasetCard, ModalitySpec

# ----------------------------------------------------------------------------- requests


def modality_field_name(index: int) -> str:
    """Return the Python attribute that stores modality `index` in a request model.

    Modality names are the field aliases. The attributes use their own names, so a
    modality called e.g. `json` or `copy` cannot shadow a pydantic method.
    """
    return f"modality_{index}"


def describe_accepted_forms(spec: ModalitySpec) -> list[str]:
    """List the JSON forms a modality's value may take in a request."""
    if spec.kind == "image":
        return ["nested list of numbers", "base64 PNG"]
    if spec.kind == "text":
        return ["string", "list of character indices"]
    return ["list of numbers"]


def _modality_field(spec: ModalitySpec) -> tuple[Any, Any]:
    # The value is validated by `dymo_ray.serve.decode`, which names the modality in every
    # error. A pydantic union here would report one error per union member, with the
    # member's type appended to the location, so the field takes any JSON value and only
    # its documented schema lists the accepted forms.
    shape = list(spec.shape)
    null = {"type": "null"}
    if spec.kind == "image":
        channels, height, width = spec.shape
        mode = {1: "greyscale (mode L)", 3: "RGB"}.get(channels, f"{channels}-channel")
        schema = {
            "anyOf": [
                {"type": "array", "items": {}},
                {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"},
                null,
            ]
        }
        description = (
            f"Image of shape {shape} (channels, height, width), whole numbers in "
            f"[{spec.min_value:g}, {spec.max_value:g}], as a nested list, or a base64 "
            f"{mode} PNG of {width}x{height} pixels. Omit or send null when missing."
        )
    elif spec.kind == "text":
        length = spec.shape[0]
        schema = {
            "anyOf": [
                {"type": "string", "maxLength": length},
                {"type": "array", "items": {"type": "integer"}, "minItems": length,
                 "maxItems": length},
                null,
            ]
        }
        description = (
            f"Text of at most {length} characters from the alphabet {spec.alphabet!r} "
            "(shorter text is padded with spaces), or a list of "
            f"{length} character indices. Omit or send null when missing."
        )
    else:
        schema = {
            "anyOf": [
                {"type": "array", "items": {"type": "number"}, "minItems": shape[0],
                 "maxItems": shape[0]},
                null,
            ]
        }
        description = (
            f"Vector of shape {shape}, finite numbers in [{spec.min_value:g}, "
            f"{spec.max_value:g}]. Omit or send null when missing."
        )
    annotation = Annotated[Any, WithJsonSchema(schema)]
    return annotation, Field(default=None, alias=spec.name, description=description)


@dataclass(frozen=True)
class RequestModels:
    """The pydantic request models built for one dataset card.

    Attributes:
        modalities: One optional field per modality, aliased by the modality name; unknown
            names are rejected.
        predict: Body of `/v1/predict` and `/v1/classify`: `modalities` and an optional
            recovery `seed`.
        predict_batch: Body of `/v1/predict_batch`: a list `samples` of predict bodies.
    """

    modalities: type[BaseModel]
    predict: type[BaseModel]
    predict_batch: type[BaseModel]


def build_request_models(card: DatasetCard) -> RequestModels:
    """Build the request models of the API for a dataset card."""
    fields = {
        modality_field_name(index): _modality_field(spec)
        for index, spec in enumerate(card.modalities)
    }
    modalities = create_model(
        "Modalities",
        __config__=ConfigDict(extra="forbid", populate_by_name=False),
        __doc__=f"The modalities of one {card.name} sample, by name; missing ones omitted.",
        **fields,
    )
    predict = create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="One incomplete sample.",
        modalities=(
            modalities,
            Field(description="Observed modalities by name; at least one is required."),
        ),
        seed=(
            Optional[int],
            Field(
                default=None,
                ge=0,
                description=(
                    "Seed of the recovery of the missing modalities; the server's "
                    "recovery_seed when omitted. The same request with the same seed gets "
                    "the same prediction."
                ),
            ),
        ),
    )
    predict_batch = create_model(
        "PredictBatchRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Several incomplete samples, predicted in order.",
        samples=(list[predict], Field(min_length=1, description="The samples, in order.")),
    )
    return RequestModels(modalities=modalities, predict=predict, predict_batch=predict_batch)


# ----------------------------------------------------------------------------- responses


class CandidateReward(BaseModel):
    """The MTIR reward of adding one recovered modality to the current subset.

    Numbers are null where they are not finite, because JSON has no infinity or NaN.
    """

    modality: str
    reward: Optional[float] = Field(description="R(u | S) = Q(S + u) * G - Q(S).")
    q: Optional[float] = Field(description="Prototype confidence Q of S + u.")
    ics: Optional[float] = Field(description="ICS of S + u under its predicted class.")
    calibration_factor: Optional[float] = Field(description="Calibration factor G.")


class SelectionStep(BaseModel):
    """One greedy step of DyMo selection."""

    step: int
    q_base: Optional[float] = Field(description="Prototype confidence Q of the current subset.")
    ics_base: Optional[float] = Field(description="ICS of the current subset.")
    candidates: list[CandidateReward]
    accepted: Optional[str] = Field(description="Modality added at this step; null: stop.")
    rejected: list[str] = Field(description="Candidates with a negative reward.")
    left_out: list[str] = Field(description="Candidates neither accepted nor rejected.")


class Prediction(BaseModel):
    """The prediction for one sample, with how DyMo reached it."""

    request_id: str
    label: int = Field(description="Predicted class index.")
    class_name: str
    probabilities: dict[str, float] = Field(description="Class name -> probability.")
    strategy: Literal["dymo", "discard"] = Field(
        description=(
            "dymo: selection over recovered modalities. discard: the observed modalities "
            "only (the /v1/classify endpoint, or a degraded prediction)."
        )
    )
    observed: list[str]
    missing: list[str]
    recovered_used: list[str] = Field(
        description="Recovered modalities fused into the prediction."
    )
    recovered_rejected: list[str] = Field(description="Recovered modalities with R < 0.")
    steps: list[SelectionStep] = Field(description="Every selection step with its rewards.")
    model_version: str
    recovery_version: Optional[str] = Field(
        description="Recovery model of the service; null for discard predictions "
        "(/v1/classify, or a degraded prediction)."
    )
    degraded: bool = Field(
        description="True when recovery failed or timed out and the prediction uses the "
        "observed modalities only."
    )
    degraded_reason: Optional[str] = None


class BatchPrediction(BaseModel):
    """Predictions of a `/v1/predict_batch` request, in the order of its samples."""

    request_id: str
    predictions: list[Prediction]


class ModalityInfo(BaseModel):
    name: str
    kind: str
    shape: list[int]
    dtype: str
    min_value: float
    max_value: float
    alphabet: Optional[str] = None
    accepts: list[str] = Field(description="JSON forms a request may use for this modality.")


class ModelInfo(BaseModel):
    """Description of the served model and its inputs, from `GET /v1/model`."""

    dataset: str
    modalities: list[ModalityInfo]
    class_names: list[str]
    model_version: str
    model_source: str
    backbone_fingerprint: Optional[str]
    metric: str
    recovery_version: str
    recovery_source: str
    selection: dict[str, Any]
    limits: dict[str, Any]


class HealthResponse(BaseModel):
    """Service health from `GET /v1/health`.

    `status` is "ok" when both model deployments responded, "degraded" when the recovery
    deployment did not (predictions then use the observed modalities only), and
    "unavailable" (with a 503) when the selector did not.
    """

    status: Literal["ok", "degraded", "unavailable"]
    model_version: str
    recovery_version: str
    ingress: dict[str, Any]
    selector: Optional[dict[str, Any]] = None
    recovery: Optional[dict[str, Any]] = None
    errors: list[str] = Field(default_factory=list)


class ErrorItem(BaseModel):
    loc: list[Union[str, int]] = Field(description="Path of the invalid field in the body.")
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    """A 422: every invalid field of the request, with its location."""

    detail: list[ErrorItem]
    request_id: Optional[str] = None


class MessageErrorResponse(BaseModel):
    """A 400, 413, 500 or 503 with a message."""

    detail: str
    request_id: Optional[str] = None
