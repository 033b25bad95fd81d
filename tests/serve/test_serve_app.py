"""The served application on a real local Ray, called over HTTP on 127.0.0.1.

One app is deployed for the whole module, with the `noise` recovery baseline, a random-weight
bundle on real mdt rows, and `fault_injection` on so that single requests can make the
recovery or the selector deployment raise or stall. Recovery runs per request under the
request's seed, so a served prediction can be recomputed offline from the same seed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from types import SimpleNamespace

import httpx
import pytest
import torch

from dymo_ray.bundle import load_bundle
from dymo_ray.data.io import load_split
from dymo_ray.recovery import build_recovery
from dymo_ray.selection import SelectionConfig, discard_predict, select
from dymo_ray.serve.decode import encode_png
from serve_helpers import free_port, request_body

pytestmark = [pytest.mark.slow]

SETTINGS = {
    "recovery": "noise",
    "tau": 0.1,
    "recovery_timeout_s": 5.0,
    "selector_timeout_s": 15.0,
    "max_body_bytes": 100_000,
    "max_batch_samples": 8,
    "batch_wait_timeout_s": 0.05,
    "replica_num_cpus": 0.1,
    "max_replicas": 1,
    "fault_injection": True,
}
MDT_PATTERNS = [list(p) for p in itertools.product([True, False], repeat=3) if any(p)]
FAULT = "x-dymo-fault"


@pytest.fixture(scope="module")
def served(ray_local, serve_bundle, serve_mdt):
    from ray import serve

    from dymo_ray.serve.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app({**SETTINGS, "bundle": str(serve_bundle)}), name="dymo_test",
                  route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            yield SimpleNamespace(
                client=client,
                base_url=f"http://127.0.0.1:{port}",
                bundle=load_bundle(serve_bundle),
                test=load_split(serve_mdt, "test"),
            )
    finally:
        serve.shutdown()


def predict(served, body, headers=None, path="/v1/predict"):
    return served.client.post(path, json=body, headers=headers or {})


def offline_dymo(served, row: int, present: list[bool], seed: int):
    """The same prediction without Serve: noise recovery under `seed`, then `select`."""
    card = served.bundle.card
    inputs = {name: tensor[row:row + 1] for name, tensor in served.test.inputs.items()}
    mask = torch.tensor([present])
    completed = build_recovery("noise", card).recover(inputs, mask, seed=seed)
    result = select(served.bundle.model, served.bundle.stats, completed, mask,
                    SelectionConfig(tau=SETTINGS["tau"]))
    return result.to_dict(card.modality_names)[0]


# ----------------------------------------------------------------------------- predictions


@pytest.mark.timeout(600)
@pytest.mark.parametrize("present", MDT_PATTERNS,
                         ids=["+".join(str(int(p)) for p in pattern) for pattern in MDT_PATTERNS])
def test_predict_every_missing_pattern(served, present):
    names = served.bundle.card.modality_names
    response = predict(served, request_body(served.test, 0, present))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["observed"] == [n for n, seen in zip(names, present) if seen]
    assert answer["missing"] == [n for n, seen in zip(names, present) if not seen]
    assert answer["class_name"] == served.bundle.card.class_names[answer["label"]]
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["strategy"] == "dymo"
    assert answer["degraded"] is False
    assert set(answer["recovered_used"]) <= set(answer["missing"])
    assert set(answer["recovered_rejected"]) <= set(answer["missing"])
    if all(present):
        assert answer["steps"] == []


@pytest.mark.timeout(300)
def test_explanation_fields_follow_trace(served):
    response = predict(served, request_body(served.test, 1, [False, True, False]))
    answer = response.json()
    steps = answer["steps"]
    assert [c["modality"] for c in steps[0]["candidates"]] == ["mnist", "text"]
    accepted = [step["accepted"] for step in steps if step["accepted"] is not None]
    assert accepted == answer["recovered_used"]
    rejected = [name for step in steps for name in step["rejected"]]
    assert sorted(rejected) == sorted(answer["recovered_rejected"])
    for step in steps:
        for candidate in step["candidates"]:
            if candidate["modality"] in step["rejected"]:
                assert candidate["reward"] < 0
            if candidate["modality"] == step["accepted"]:
                assert candidate["reward"] > 0
    assert answer["model_version"].startswith("local:")
    assert answer["recovery_version"] == "noise"


@pytest.mark.timeout(600)
def test_served_equals_offline_selection(served):
    """Sequential requests run in selector batches of one, the same computation as offline."""
    decisions = set()
    for row, present in itertools.product(range(4), MDT_PATTERNS[:-1]):
        seed = 100 + row
        answer = predict(served, request_body(served.test, row, present, seed=seed)).json()
        expected = offline_dymo(served, row, present, seed)
        assert answer["label"] == expected["prediction"], (row, present)
        assert list(answer["probabilities"].values()) == pytest.approx(
            expected["probabilities"], abs=1e-6
        )
        assert answer["observed"] == expected["observed"]
        assert answer["recovered_used"] == expected["recovered_used"]
        assert answer["recovered_rejected"] == expected["rejected"]
        served_rewards = [[c["reward"] for c in s["candidates"]] for s in answer["steps"]]
        expected_rewards = [[c["reward"] for c in s["candidates"]] for s in expected["trace"]]
        assert len(served_rewards) == len(expected_rewards)
        for got, want in zip(served_rewards, expected_rewards):
            assert got == pytest.approx(want, abs=1e-6)
        decisions.add((bool(answer["recovered_used"]), bool(answer["recovered_rejected"])))
    assert (True, False) in decisions or (True, True) in decisions, "no recovered modality used"
    assert (False, True) in decisions or (True, True) in decisions, "none rejected"


@pytest.mark.timeout(300)
def test_same_seed_same_answer(served):
    body = request_body(served.test, 2, [False, True, False], seed=7)
    first = predict(served, body).json()
    second = predict(served, body).json()
    assert first["probabilities"] == second["probabilities"]


@pytest.mark.timeout(300)
def test_classify_equals_offline_discard(served):
    present = [True, False, True]
    answer = predict(served, request_body(served.test, 3, present), path="/v1/classify").json()
    inputs = {name: tensor[3:4] for name, tensor in served.test.inputs.items()}
    expected = discard_predict(served.bundle.model, inputs, torch.tensor([present]))
    assert answer["strategy"] == "discard"
    assert answer["recovered_used"] == []
    assert answer["steps"] == []
    assert list(answer["probabilities"].values()) == pytest.approx(
        expected.probabilities[0].tolist(), abs=1e-6
    )


@pytest.mark.timeout(300)
def test_png_image_equals_nested_list(served):
    body = request_body(served.test, 4, [True, True, False], seed=3)
    as_list = predict(served, body).json()
    body["modalities"]["mnist"] = encode_png(served.test.inputs["mnist"][4].numpy())
    body["modalities"]["digits"] = encode_png(served.test.inputs["digits"][4].numpy())
    as_png = predict(served, body).json()
    assert as_png["probabilities"] == as_list["probabilities"]


@pytest.mark.timeout(300)
def test_predict_batch_matches_single(served):
    bodies = [request_body(served.test, row, MDT_PATTERNS[row], seed=row) for row in range(5)]
    response = served.client.post("/v1/predict_batch", json={"samples": bodies})
    assert response.status_code == 200, response.text
    batch = response.json()
    assert len(batch["predictions"]) == 5
    for index, body in enumerate(bodies):
        single = predict(served, body).json()
        answer = batch["predictions"][index]
        assert answer["request_id"] == f"{batch['request_id']}/{index}"
        assert answer["observed"] == single["observed"]
        assert list(answer["probabilities"].values()) == pytest.approx(
            list(single["probabilities"].values()), abs=1e-5
        )


@pytest.mark.timeout(300)
def test_model_health_and_docs(served):
    model = served.client.get("/v1/model").json()
    assert [m["name"] for m in model["modalities"]] == ["mnist", "digits", "text"]
    assert model["modalities"][0]["shape"] == [1, 28, 28]
    assert model["class_names"] == served.bundle.card.class_names
    assert model["recovery_version"] == "noise"
    assert model["limits"]["max_batch_samples"] == 8
    health = served.client.get("/v1/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert served.client.get("/docs").status_code == 200
    openapi = served.client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict_batch", "/v1/classify", "/v1/health",
            "/v1/model"} <= set(openapi["paths"])
    assert {"mnist", "digits", "text"} <= set(
        openapi["components"]["schemas"]["Modalities"]["properties"]
    )


# ----------------------------------------------------------------------------- bad input


def mnist_rows(value):
    return [[[value] * 28] * 28]


BAD_BODIES = [
    ("unknown modality", {"modalities": {"audio": [1, 2]}}, ["body", "modalities", "audio"],
     "Extra inputs"),
    ("wrong shape", {"modalities": {"mnist": [[[0] * 28] * 27]}}, ["body", "modalities", "mnist"],
     "expected [1, 28, 28]"),
    ("fractional pixel", {"modalities": {"mnist": mnist_rows(0.5)}},
     ["body", "modalities", "mnist"], "whole numbers"),
    ("pixel out of range", {"modalities": {"mnist": mnist_rows(300)}},
     ["body", "modalities", "mnist"], "outside [0, 255]"),
    ("string pixels", {"modalities": {"digits": [[["1"] * 8] * 8]}},
     ["body", "modalities", "digits"], "only numbers"),
    ("number not list", {"modalities": {"digits": 7}}, ["body", "modalities", "digits"],
     "must be a nested list of numbers or a base64 PNG, got int"),
    ("nothing observed", {"modalities": {}}, ["body", "modalities"], "every modality is missing"),
    ("all null", {"modalities": {"mnist": None, "digits": None, "text": None}},
     ["body", "modalities"], "every modality is missing"),
    ("bad base64", {"modalities": {"mnist": "%%%"}}, ["body", "modalities", "mnist"],
     "not valid base64"),
    ("not a png", {"modalities": {"mnist": "R0lGODlhAQABAAAAACw="}},
     ["body", "modalities", "mnist"], "not a PNG"),
    ("png wrong size", {"modalities": {"mnist": encode_png(torch.zeros(1, 8, 8,
                                                                      dtype=torch.uint8).numpy())}},
     ["body", "modalities", "mnist"], "expected 28x28"),
    ("png wrong mode", {"modalities": {"mnist": encode_png(torch.zeros(3, 28, 28,
                                                                      dtype=torch.uint8).numpy())}},
     ["body", "modalities", "mnist"], "mode 'RGB'"),
    ("text outside alphabet", {"modalities": {"text": "FIVE"}}, ["body", "modalities", "text"],
     "outside the alphabet"),
    ("text too long", {"modalities": {"text": "seventeen"}}, ["body", "modalities", "text"],
     "more than the maximum of 8"),
    ("text index too large", {"modalities": {"text": [0] * 7 + [71]}},
     ["body", "modalities", "text"], "outside [0, 70]"),
    ("negative seed", {"modalities": {"text": "five"}, "seed": -1}, ["body", "seed"],
     "greater than or equal to 0"),
    ("unknown top-level key", {"modalities": {"text": "five"}, "label": 3}, ["body", "label"],
     "Extra inputs"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("body, loc, message", [case[1:] for case in BAD_BODIES],
                         ids=[case[0] for case in BAD_BODIES])
def test_bad_input_names_field(served, body, loc, message):
    response = predict(served, body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == loc
    assert message in detail[0]["msg"]


@pytest.mark.timeout(300)
def test_nan_literal_rejected(served):
    # Python's JSON parser accepts the NaN literal, so it reaches the decoder.
    body = json.dumps({"modalities": {"mnist": mnist_rows(float("nan"))}})
    response = served.client.post("/v1/predict", content=body,
                                  headers={"content-type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "modalities", "mnist"]
    assert "NaN" in detail["msg"]


@pytest.mark.timeout(300)
def test_malformed_json_rejected(served):
    response = served.client.post("/v1/predict", content=b'{"modalities": ',
                                  headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.timeout(300)
def test_body_over_limit_by_header(served):
    body = {"modalities": {"text": "five"}, "padding": "x" * 200_000}
    response = predict(served, body)
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["detail"]


@pytest.mark.timeout(300)
def test_body_over_limit_chunked(served):
    """Without Content-Length, the bytes actually received are counted."""
    def chunks():
        yield b'{"modalities": {"text": "five"}, "padding": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    response = served.client.post("/v1/predict", content=chunks(),
                                  headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["detail"]


@pytest.mark.timeout(300)
def test_batch_over_limit_rejected(served):
    samples = [request_body(served.test, 0, [True, True, True])] * 9
    response = served.client.post("/v1/predict_batch", json={"samples": samples})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "samples"]
    assert "max_batch_samples" in detail["msg"]


@pytest.mark.timeout(300)
def test_batch_names_bad_sample(served):
    good = request_body(served.test, 0, [True, False, False])
    response = served.client.post(
        "/v1/predict_batch", json={"samples": [good, {"modalities": {"text": "TEN"}}]}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "samples", 1, "modalities", "text"]


@pytest.mark.timeout(300)
def test_replica_serves_after_bad_input(served):
    rejected_before = served.client.get("/v1/health").json()["ingress"]["rejected"]
    for case in BAD_BODIES:
        predict(served, case[1])
    response = predict(served, request_body(served.test, 0, [True, False, True]))
    assert response.status_code == 200
    health = served.client.get("/v1/health").json()
    assert health["ingress"]["rejected"] == rejected_before + len(BAD_BODIES)


# ----------------------------------------------------------------------------- failures


@pytest.mark.timeout(300)
def test_recovery_error_degrades(served):
    body = request_body(served.test, 5, [True, False, False], seed=1)
    response = predict(served, body, headers={FAULT: "recovery-error"})
    assert response.status_code == 200
    answer = response.json()
    assert answer["degraded"] is True
    assert "recovery failed" in answer["degraded_reason"]
    assert answer["strategy"] == "discard"
    assert answer["recovered_used"] == []
    assert answer["recovery_version"] is None
    reference = predict(served, body, path="/v1/classify").json()
    assert answer["probabilities"] == reference["probabilities"]


@pytest.mark.timeout(300)
def test_recovery_timeout_degrades(served):
    body = request_body(served.test, 5, [True, False, False], seed=1)
    started = time.monotonic()
    response = predict(served, body, headers={FAULT: "recovery-timeout"})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["degraded"] is True
    assert "timed out" in response.json()["degraded_reason"]
    assert elapsed < SETTINGS["recovery_timeout_s"] + 10


@pytest.mark.timeout(300)
def test_selector_error_gives_503(served):
    response = predict(served, request_body(served.test, 0, [True, True, True]),
                       headers={FAULT: "selector-error"})
    assert response.status_code == 503
    assert "selector failed" in response.json()["detail"]
    after = predict(served, request_body(served.test, 0, [True, True, True]))
    assert after.status_code == 200


@pytest.mark.timeout(300)
def test_selector_timeout_gives_503(served):
    started = time.monotonic()
    response = predict(served, request_body(served.test, 0, [True, True, False]),
                       headers={FAULT: "selector-timeout"})
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert "selector timed out" in response.json()["detail"]
    assert elapsed < SETTINGS["selector_timeout_s"] + 10
    after = predict(served, request_body(served.test, 0, [True, True, False]))
    assert after.status_code == 200


@pytest.mark.timeout(300)
def test_unknown_fault_rejected(served):
    response = predict(served, request_body(served.test, 0, [True, True, True]),
                       headers={FAULT: "meteor"})
    assert response.status_code == 400
    assert "must be one of" in response.json()["detail"]


# ----------------------------------------------------------------------------- batching


def size_counts(stats: dict) -> dict[int, int]:
    return {int(size): count for size, count in stats["batch_size_counts"].items()}


async def send_concurrently(base_url: str, bodies: list[dict]) -> list[int]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        responses = await asyncio.gather(*(client.post("/v1/predict", json=b) for b in bodies))
    return [response.status_code for response in responses]


def batched_rows(before: dict, after: dict) -> int:
    """Rows that ran in batches larger than one between two stats snapshots."""
    old, new = size_counts(before), size_counts(after)
    return sum(size * (new.get(size, 0) - old.get(size, 0)) for size in new if size > 1)


@pytest.mark.timeout(300)
def test_concurrent_requests_are_batched(served):
    before = served.client.get("/v1/health").json()
    bodies = [request_body(served.test, row % 8, [True, row % 2 == 0, False], seed=row)
              for row in range(32)]
    statuses = asyncio.run(send_concurrently(served.base_url, bodies))
    assert statuses == [200] * 32
    after = served.client.get("/v1/health").json()
    assert batched_rows(before["selector"], after["selector"]) > 0
    assert batched_rows(before["recovery"], after["recovery"]) > 0
    assert after["selector"]["max_batch_size_seen"] <= 16
