"""The dashboard in a real browser: Debian's chromium driven by selenium against the running pipeline.

``chromium`` and ``chromium-driver`` are installed with apt-get when missing (with progress), and
the test fails saying why if they cannot be. It logs in with the operator key, waits for the
gallery to show the images just generated, checks the diagram's figures against ``/v1/status``,
and saves a screenshot (``FORGELINE_DASHBOARD_SCREENSHOT`` names where; default the test's tmp dir).
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from services.common import contracts as c
from services.devstack.errors import DevStackError
from services.devstack.host import ensure_commands
from services.providers.procedural import render_icon
from tests.helpers import job_finished

pytestmark = pytest.mark.e2e

TENANT_KEY = "k_test_studio_dashboard"
OPERATOR_KEY = "op_test_dashboard_0123456789"
PROMPTS = ("flaming obsidian greatsword", "frost crystal longbow", "healing potion")
WAIT_S = 60


@pytest.fixture(scope="module")
def browser_binaries() -> dict[str, str]:
    try:
        return ensure_commands({"chromium": "chromium", "chromedriver": "chromium-driver"},
                               progress=lambda m: print(f"[browser] {m}", flush=True))
    except DevStackError as exc:
        pytest.fail(f"the dashboard test needs Debian's chromium and chromium-driver: {exc}", pytrace=False)


@pytest.fixture
def chromium(browser_binaries: dict[str, str]):
    options = webdriver.ChromeOptions()
    options.binary_location = browser_binaries["chromium"]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1680,1500", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=browser_binaries["chromedriver"]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# The page redraws its figures and rebuilds the gallery every 2 s, so an element found in one
# WebDriver call may be gone by the next (StaleElementReferenceException). Each read below is one
# script, which runs between two redraws and returns plain values.
_FIGURES_JS = """
return Object.fromEntries(Array.from(document.querySelectorAll('[data-figure]'),
                                     el => [el.dataset.figure, el.textContent]));  // SVG text: no innerText
"""
_GALLERY_JS = """
const text = (card, cls) => { const el = card.querySelector('.' + cls); return el ? el.innerText : null; };
return Array.from(document.querySelectorAll('#gallery .card'), card => {
  const img = card.querySelector('img'), score = card.querySelector('.score');
  return {job_id: card.dataset.jobId, src: img ? img.src : null, width: img && img.complete ? img.naturalWidth : 0,
          prompt: text(card, 'prompt'), route: text(card, 'route'), provider: text(card, 'provider'),
          cost: text(card, 'cost'), latency: text(card, 'latency'), score: text(card, 'score'),
          score_background: score ? getComputedStyle(score).backgroundColor : null};
});
"""


def _figures(driver) -> dict[str, str]:
    return driver.execute_script(_FIGURES_JS)


def _gallery(driver) -> dict[str, dict]:
    """The gallery's cards by job id, as the page shows them at one moment."""
    return {card["job_id"]: card for card in driver.execute_script(_GALLERY_JS)}


def _expected_figures(status: dict) -> dict[str, str]:
    """What the boxes must say, written from /v1/status independently of the page's code."""
    queues, routes, cache, budget = status["queues"], status["routes"], status["cache"], status["budget"]
    share, rate = routes["fallback_share"], cache["hit_rate"]
    hits, lookups = cache["hit_local"] + cache["hit_redis"], cache["hit_local"] + cache["hit_redis"] + cache["miss"]
    return {
        "queue.primary": f"depth {queues['primary']['depth']}",
        "queue.fallback": f"depth {queues['fallback']['depth']}",
        "route.split": f"primary {routes['primary']} · fallback {routes['fallback']} "
                       f"({'—' if share is None else f'{share * 100:.0f} %'} paid)",
        "cache": f"hit rate {'—' if rate is None else f'{rate * 100:.0f} %'} "
                 f"({hits} of {lookups})",
        "budget": f"{budget['spent']} spent + {budget['reserved']} held of {budget['cap']} (0 %)",
        # Its one tenant has no budget of its own and its jobs stay free: nobody paid this month.
        "budget.tenants": "no tenant spend yet" if not budget["tenants"] else
                          "tenants: " + ", ".join(f"{t['tenant']} {t['spent']}" for t in budget["tenants"]),
    }


async def test_the_dashboard_shows_the_pipeline_and_the_images_just_generated(running_pipeline, chromium, tmp_path):
    reference = render_icon(c.ImageSpec(prompt="frost crystal longbow", width=256, height=256, seed=5))
    env = {"FORGELINE_INGEST_API_KEYS": f'{{"studio": "{TENANT_KEY}"}}', "FORGELINE_INGEST_OPERATOR_KEY": OPERATOR_KEY}
    async with running_pipeline(env=env) as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30,
                                     headers={"Authorization": f"Bearer {TENANT_KEY}"}) as http:
            bodies = [{"prompt": prompt, "width": 256, "height": 256, "seed": 11 + i} for i, prompt in enumerate(PROMPTS)]
            bodies[1]["reference_image"] = "data:image/png;base64," + base64.b64encode(reference).decode()
            accepted = [await http.post("/v1/generations", json=body) for body in bodies]
            assert [a.status_code for a in accepted] == [202] * 3, [a.text for a in accepted]
            jobs = [await job_finished(http, a.json()["job_id"]) for a in accepted]
            assert [job["status"] for job in jobs] == ["completed"] * 3, jobs
            tenant_view = await http.get("/dashboard/data")
            assert tenant_view.status_code == 401  # a tenant's key is not the operator's

            await asyncio.to_thread(chromium.get, f"{p.ingest_url}/dashboard")
            assert "operator key" in chromium.page_source
            chromium.find_element(By.ID, "key").send_keys(OPERATOR_KEY)
            chromium.find_element(By.ID, "login").click()

            wanted = {job["job_id"] for job in jobs}
            wait = WebDriverWait(chromium, WAIT_S)
            try:  # every image just generated on the page, loaded by the browser from its URL
                cards = wait.until(lambda d: (shown := _gallery(d)).keys() >= wanted
                                   and all(shown[job]["width"] for job in wanted) and shown)
            except Exception:  # noqa: BLE001 — say what the page shows instead
                pytest.fail(f"the gallery shows {_gallery(chromium)}, not the loaded images of {sorted(wanted)}")
            status = (await http.get("/v1/status")).json()
            expected = _expected_figures(status)
            try:
                wait.until(lambda d: {k: v for k, v in _figures(d).items() if k in expected} == expected)
            except Exception:  # noqa: BLE001 — say which figure differs
                pytest.fail(f"figures on the page { {k: _figures(chromium).get(k) for k in expected} } != {expected}")

            for job, prompt in zip(jobs, PROMPTS, strict=True):
                found = cards[job["job_id"]]
                assert found["src"] == job["url"]
                assert found["prompt"] == prompt
                assert found["route"] == job["route"] == "primary"
                assert found["provider"] == "provider procedural"
                assert found["cost"] == "cost $0"
                assert found["latency"].startswith("latency ")
                assert found["width"] == 256, "the browser could not load the image from its URL"
            comparison = jobs[1]["result"]["comparison"]
            score = cards[jobs[1]["job_id"]]
            assert score["score"] == f"{comparison['score']:.1f} {comparison['band']}"
            colour = comparison["band_color"]
            assert score["score_background"] == "rgb({}, {}, {})".format(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)))

            screenshot = Path(os.environ.get("FORGELINE_DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            assert chromium.save_screenshot(str(screenshot))
            print(f"dashboard screenshot: {screenshot}")
    with Image.open(screenshot) as shot:
        assert shot.size[0] >= 1600
        assert len(shot.convert("RGB").getcolors(1 << 24)) > 50, "the screenshot is a blank page"
