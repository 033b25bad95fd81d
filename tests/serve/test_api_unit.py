"""The FastAPI app of the ingress without Ray: limits, headers and the documented schema."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from dymo_ray.data.spec import MOPOE_ALPHABET, DatasetCard, ModalitySpec
from dymo_ray.serve.api import create_api
from dymo_ray.serve.settings import ServeSettings


class StubIngress(SimpleNamespace):
    """Stands in for the Ingress replica: records the samples instead of predicting."""

    async def predict_sample(self, sample, request_id, strategy="dymo", fault=None):
        self.calls.append((sample, strategy, fault))
        raise AssertionError("the tests below never reach the models")


@pytest.fixture()
def client_for():
    card = DatasetCard(
        "json_named",
        [
            # Modality names that would shadow pydantic attributes as plain field names.
            ModalitySpec("json", "image", (1, 2, 2), "uint8"),
            ModalitySpec("copy", "text", (4,), "int64", alphabet=MOPOE_ALPHABET),
        ],
        ["a", "b"],
    )

    def build(**settings):
        service = StubIngress(card=card, settings=ServeSettings(**settings), counts=Counter(),
                              calls=[])
        return TestClient(create_api(service), raise_server_exceptions=False), service

    return build


def test_fault_header_needs_fault_injection(client_for):
    client, service = client_for()
    response = client.post("/v1/predict", json={"modalities": {"copy": "ab"}},
                           headers={"x-dymo-fault": "recovery-error"})
    assert response.status_code == 400
    assert "fault_injection" in response.json()["detail"]
    assert service.calls == []


def test_content_length_over_limit(client_for):
    client, _ = client_for(max_body_bytes=50)
    response = client.post("/v1/predict", json={"modalities": {"copy": "ab"}, "pad": "x" * 60})
    assert response.status_code == 413
    assert "over the limit of 50 bytes" in response.json()["detail"]


def test_invalid_content_length_rejected(client_for):
    client, _ = client_for()
    response = client.post("/v1/predict", content=b"{}",
                           headers={"content-type": "application/json", "content-length": "x"})
    assert response.status_code == 400


def test_modality_names_shadowing_pydantic(client_for):
    client, _ = client_for()
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Modalities"]
    assert sorted(schema["properties"]) == ["copy", "json"]
    response = client.post("/v1/predict", json={"modalities": {"copy": "ABC"}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "modalities", "copy"]


def test_validation_error_does_not_echo_input(client_for):
    client, _ = client_for()
    response = client.post("/v1/predict", json={"modalities": {"audio": [1] * 100}})
    assert response.status_code == 422
    assert "input" not in response.json()["detail"][0]
    assert response.json()["detail"][0]["loc"] == ["body", "modalities", "audio"]
