"""Provider storms and the charge log of the fakes, set at run time over ``/_fake/knobs``."""

from __future__ import annotations

import httpx

from services.fakeproviders import replicate, siliconflow
from services.fakeproviders.base import FakeProvider

MODEL_PATH = "/v1/models/black-forest-labs/flux-schnell/predictions"
AUTH = {"authorization": "Bearer r8_fake-storm-test-key"}


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fake.test")


async def statuses(http: httpx.AsyncClient, n: int) -> list[int]:
    codes = []
    for i in range(n):
        response = await http.post(MODEL_PATH, json={"input": {"prompt": f"storm sword {i}"}},
                                   headers=AUTH | {"prefer": "wait"})
        codes.append(response.status_code)
    return codes


async def test_a_seeded_storm_fails_the_share_asked_for_and_repeats_exactly() -> None:
    fake = FakeProvider("replicate")
    async with client(replicate.create_app(fake)) as http:
        knobs = await http.post("/_fake/knobs", json={"fail_rates": {"429": 0.3, "503": 0.1}, "fail_seed": 7,
                                                      "retry_after_s": 1})
        assert knobs.status_code == 200 and knobs.json()["fail_rates"] == {"429": 0.3, "503": 0.1}
        first = await statuses(http, 400)
        await http.post("/_fake/knobs", json={"fail_seed": 7})
        second = await statuses(http, 400)
        await http.post("/_fake/knobs", json={"fail_rates": {}})
        calm = await statuses(http, 20)
    assert first == second  # the same seed draws the same storm
    assert 0.22 < first.count(429) / 400 < 0.38 and 0.05 < first.count(503) / 400 < 0.15
    assert set(first) == {201, 429, 503}
    assert calm == [201] * 20


async def test_rates_that_are_no_probabilities_are_refused_by_name() -> None:
    async with client(replicate.create_app(FakeProvider("replicate"))) as http:
        response = await http.post("/_fake/knobs", json={"fail_rates": {"429": 0.8, "500": 0.5}})
        unknown = await http.post("/_fake/knobs", json={"fail_rates": {"418": 0.1}})
        kept = (await http.post("/_fake/knobs", json={})).json()["fail_rates"]
    assert response.status_code == 422 and "at most 1" in response.text
    assert unknown.status_code == 422 and "fail_rates" in unknown.text
    assert kept == {}  # a refused update leaves the knobs as they were


async def test_paid_fakes_log_a_charge_per_delivered_image_only() -> None:
    fake = FakeProvider("replicate")
    async with client(replicate.create_app(fake)) as http:
        served = await http.post(MODEL_PATH, json={"input": {"prompt": "paid axe"}}, headers=AUTH | {"prefer": "wait"})
        await http.post("/_fake/knobs", json={"fail_next": ["429"]})
        throttled = await http.post(MODEL_PATH, json={"input": {"prompt": "throttled axe"}}, headers=AUTH)
        charges = (await http.get("/_fake/charges")).json()
    assert (served.status_code, throttled.status_code) == (201, 429)
    assert [(c["prompt"], c["ref"]) for c in charges] == [("paid axe", served.json()["id"])]

    flow = FakeProvider("siliconflow")
    async with client(siliconflow.create_app(flow)) as http:
        await http.post("/v1/images/generations", json={"model": "m", "prompt": "paid bow", "image_size": "64x64"},
                        headers=AUTH)
        charges = (await http.get("/_fake/charges")).json()
    assert [(c["prompt"], c["ref"]) for c in charges] == [("paid bow", None)]
