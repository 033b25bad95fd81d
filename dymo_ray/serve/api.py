"""The FastAPI app of the ingress: routes, the body size limit and the error responses.

Errors share two shapes. A 422 lists every invalid field as FastAPI does,
`{"detail": [{"loc": [...], "msg": ..., "type": ...}], "request_id": ...}`, without echoing
the input back. The other errors (400, 413, 500, 503) are
`{"detail": "<message>", "request_id": ...}`.
"""

# No `from __future__ import annotations` here: FastAPI reads the route annotations at
# definition time, and the request models are local variables built from the card.

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import dymo_ray
from dymo_ray.serve.decode import DecodedSample, FieldError, RequestInvalid, decode_sample
from dymo_ray.serve.deployments import ServiceUnavailable
from dymo_ray.serve.schemas import (
    BatchPrediction,
    HealthResponse,
    MessageErrorResponse,
    ModalityInfo,
    ModelInfo,
    Prediction,
    ValidationErrorResponse,
    build_request_models,
    describe_accepted_forms,
    modality_field_name,
)
from dymo_ray.serve.settings import FAULT_HEADER, FAULT_KINDS

if TYPE_CHECKING:
    from dymo_ray.serve.deployments import Ingress

logger = logging.getLogger("ray.serve").getChild(__name__)

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID_LENGTH = 128

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": MessageErrorResponse, "description": "Invalid header"},
    413: {"model": MessageErrorResponse, "description": "Body over max_body_bytes"},
    422: {"model": ValidationErrorResponse, "description": "Invalid fields, each named"},
    503: {"model": MessageErrorResponse, "description": "The selector failed or timed out"},
}


class BodySizeLimit:
    """ASGI middleware that rejects request bodies over `max_bytes` with a 413.

    It checks the Content-Length header before reading, then counts the bytes actually
    received, which also covers chunked bodies and a Content-Length that understates
    the body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                declared_bytes = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if declared_bytes > self.max_bytes:
                await _send_json(send, 413, {"detail": self._message(declared_bytes)})
                return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises an HTTPException from body reading, so this
                    # becomes a 413 response instead of its generic 400.
                    raise HTTPException(413, detail=self._message(received, at_least=True))
            return message

        await self.app(scope, counting_receive, send)

    def _message(self, size: int, at_least: bool = False) -> str:
        amount = f"at least {size}" if at_least else str(size)
        return (
            f"request body is {amount} bytes, over the limit of {self.max_bytes} bytes "
            "(setting max_body_bytes)"
        )


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    response = JSONResponse(body, status_code=status)
    await send(
        {"type": "http.response.start", "status": status, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


def request_id_of(request: Request) -> str:
    """Return the client's X-Request-ID (shortened to 128 characters), else a new id."""
    header = request.headers.get(REQUEST_ID_HEADER)
    if header:
        return header[:_MAX_REQUEST_ID_LENGTH]
    request_id = getattr(request.state, "request_id", None)
    if request_id is None:
        request_id = uuid.uuid4().hex
        request.state.request_id = request_id
    return request_id


def _validation_response(request: Request, errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse(
        {"detail": errors, "request_id": request_id_of(request)}, status_code=422
    )


def _fault_of(request: Request, service: "Ingress") -> str | None:
    fault = request.headers.get(FAULT_HEADER)
    if fault is None:
        return None
    if not service.settings.fault_injection:
        raise HTTPException(
            400,
            detail=f"header {FAULT_HEADER} is only accepted when the service runs with "
            "fault_injection: true",
        )
    if fault not in FAULT_KINDS:
        raise HTTPException(
            400, detail=f"header {FAULT_HEADER} must be one of {list(FAULT_KINDS)}, got {fault!r}"
        )
    return fault


def create_api(service: "Ingress") -> FastAPI:
    """Build the FastAPI app whose routes call `service` (the Ingress replica)."""
    card = service.card
    settings = service.settings
    models = build_request_models(card)
    PredictRequest = models.predict
    PredictBatchRequest = models.predict_batch

    app = FastAPI(
        title="dymo_ray",
        version=dymo_ray.__version__,
        description=(
            f"DyMo predictions for incomplete {card.name} samples: the missing modalities "
            "are recovered, and each recovered modality is fused only when its MTIR reward "
            "is positive."
        ),
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    def decode(body: Any, loc: tuple) -> DecodedSample:
        values = {
            spec.name: getattr(body.modalities, modality_field_name(index))
            for index, spec in enumerate(card.modalities)
        }
        return decode_sample(card, values, seed=body.seed, loc=loc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_body(request: Request, error: RequestValidationError):
        # FastAPI's default echoes the input, which can be megabytes of pixels.
        errors = [
            {"loc": list(item["loc"]), "msg": item["msg"], "type": item["type"]}
            for item in error.errors()
        ]
        service.counts["rejected"] += 1
        logger.info(
            "request %s: rejected, %d invalid fields, first %s: %s",
            request_id_of(request),
            len(errors),
            errors[0]["loc"] if errors else None,
            errors[0]["msg"] if errors else None,
        )
        return _validation_response(request, errors)

    @app.exception_handler(RequestInvalid)
    async def on_invalid_values(request: Request, error: RequestInvalid):
        service.counts["rejected"] += 1
        logger.info("request %s: rejected: %s", request_id_of(request), error)
        return _validation_response(request, [item.to_dict() for item in error.errors])

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException):
        if 400 <= error.status_code < 500:
            service.counts["rejected"] += 1
        logger.info(
            "request %s: responded %d: %s", request_id_of(request), error.status_code, error.detail
        )
        return JSONResponse(
            {"detail": error.detail, "request_id": request_id_of(request)},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(ServiceUnavailable)
    async def on_unavailable(request: Request, error: ServiceUnavailable):
        return JSONResponse(
            {"detail": str(error), "request_id": request_id_of(request)}, status_code=503
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception):
        logger.exception("request %s: unexpected error", request_id_of(request))
        return JSONResponse(
            {
                "detail": f"internal error ({type(error).__name__}); the request id is in "
                "the server log",
                "request_id": request_id_of(request),
            },
            status_code=500,
        )

    async def predict_one(body: PredictRequest, request: Request, strategy: str) -> Prediction:
        request_id = request_id_of(request)
        fault = _fault_of(request, service)
        sample = decode(body, ("body",))
        return await service.predict_sample(sample, request_id, strategy, fault)

    @app.post(
        "/v1/predict",
        response_model=Prediction,
        responses=_ERROR_RESPONSES,
        summary="Predict one incomplete sample with DyMo",
    )
    async def predict(body: PredictRequest, request: Request) -> Prediction:
        return await predict_one(body, request, "dymo")

    @app.post(
        "/v1/predict_batch",
        response_model=BatchPrediction,
        responses=_ERROR_RESPONSES,
        summary=f"Predict up to {settings.max_batch_samples} samples with DyMo",
    )
    async def predict_batch(body: PredictBatchRequest, request: Request) -> BatchPrediction:
        request_id = request_id_of(request)
        fault = _fault_of(request, service)
        if len(body.samples) > settings.max_batch_samples:
            raise RequestInvalid(
                [
                    FieldError(
                        ("body", "samples"),
                        f"has {len(body.samples)} samples, more than the limit of "
                        f"{settings.max_batch_samples} (setting max_batch_samples)",
                        "too_long",
                    )
                ]
            )
        samples, errors = [], []
        for index, item in enumerate(body.samples):
            try:
                samples.append(decode(item, ("body", "samples", index)))
            except RequestInvalid as error:
                errors.extend(error.errors)
        if errors:
            raise RequestInvalid(errors)
        outcomes = await asyncio.gather(
            *(
                service.predict_sample(sample, f"{request_id}/{index}", "dymo", fault)
                for index, sample in enumerate(samples)
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return BatchPrediction(request_id=request_id, predictions=list(outcomes))

    @app.post(
        "/v1/classify",
        response_model=Prediction,
        responses=_ERROR_RESPONSES,
        summary="Classify one sample from its observed modalities only (no recovery)",
    )
    async def classify(body: PredictRequest, request: Request) -> Prediction:
        return await predict_one(body, request, "discard")

    @app.get(
        "/v1/health",
        response_model=HealthResponse,
        responses={503: {"model": HealthResponse, "description": "The selector is down"}},
        summary="Health of the ingress and both model deployments",
    )
    async def health():
        status, body = await service.health()
        return JSONResponse(HealthResponse(**body).model_dump(), status_code=status)

    @app.get("/v1/model", response_model=ModelInfo, summary="The served model and its inputs")
    async def model_info() -> ModelInfo:
        served = service.served
        modalities = [
            ModalityInfo(
                name=spec.name,
                kind=spec.kind,
                shape=list(spec.shape),
                dtype=spec.dtype,
                min_value=spec.min_value,
                max_value=spec.max_value,
                alphabet=spec.alphabet,
                accepts=describe_accepted_forms(spec),
            )
            for spec in card.modalities
        ]
        return ModelInfo(
            dataset=card.name,
            modalities=modalities,
            class_names=list(card.class_names),
            model_version=served["model_version"],
            model_source=served["model_source"],
            backbone_fingerprint=served.get("backbone_fingerprint"),
            metric=served["metric"],
            recovery_version=served["recovery_version"],
            recovery_source=served["recovery_source"],
            selection=settings.selection_config().to_dict(),
            limits={
                "max_body_bytes": settings.max_body_bytes,
                "max_batch_samples": settings.max_batch_samples,
                "recovery_timeout_s": settings.recovery_timeout_s,
                "selector_timeout_s": settings.selector_timeout_s,
            },
        )

    return app
