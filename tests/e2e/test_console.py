"""The analyst console in a real browser against the real stack: what an analyst does, end to end.

Sign in, watch decisions arrive live, open a case (reasons, features, the card's history, the
narrative streaming in), give a verdict and see it reach the ``labels`` topic and the API; then
meet a verdict someone else gave first (409) and change it. A screenshot of the console with a
case open is kept under the test's basetemp; with ``FRAUD_UPDATE_SCREENSHOT=1`` it also replaces
``docs/console.png``, the picture in the README.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Request, expect

from replay.producer import replay_async
from tests.e2e.conftest import Console, sign_in
from tests.integration.harness import ROOT, handbook_rows, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROWS = 1_500  # the handbook's first hours: ~100 of them trip the test policy's review rule
REPLAY_SECONDS = 12.0  # paced, so rows arrive while the page watches
DOCS_SCREENSHOT = ROOT / "docs" / "console.png"


async def test_an_analyst_watches_opens_a_case_and_gives_a_verdict(
    console: Console, browser: Browser, artifacts: Path
) -> None:
    context = await browser.new_context(
        viewport={"width": 1440, "height": 900}, locale="en-US", timezone_id="UTC"
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    requests: list[Request] = []
    page.on("request", lambda request: requests.append(request))

    await sign_in(page, console)
    assert await page.evaluate("sessionStorage.getItem('fraudstream.token')") == console.token

    # Payments start only now, so every decision reaches the page live, over SSE.
    rows = handbook_rows(ROWS)
    settings = console.stack.settings()
    speed = (rows[-1].tx.ts - rows[0].tx.ts) / REPLAY_SECONDS
    replay = asyncio.create_task(
        replay_async(
            rows,
            bootstrap=console.stack.bootstrap,
            topic=settings.topic_transactions,
            labels_topic=settings.topic_labels,
            speed=speed,
            send_labels=False,
        )
    )
    try:
        await expect(page.locator("#live-body tr").first).to_be_visible(timeout=90_000)
        await expect(page.locator("#live-body tr.row-review").first).to_be_visible(timeout=60_000)
        await replay
    finally:
        replay.cancel()
    await expect(page.locator("#count-all")).to_have_text(f"{ROWS:,}", timeout=90_000)
    # The table keeps the newest 500 rows in the DOM, however many came.
    await expect(page.locator("#live-body tr")).to_have_count(500)

    # The token travels in the Authorization header only, never in an address.
    stream = [r for r in requests if "/v1/decisions/stream" in r.url]
    assert stream, "the page never opened the decision stream"
    assert (await stream[0].all_headers()).get("authorization") == f"Bearer {console.token}"
    assert not [r.url for r in requests if console.token in r.url]

    # Open a review case: everything an analyst needs to judge it.
    row = page.locator("#live-body tr.row-review").first
    tx_id = await row.get_attribute("data-tx")
    assert tx_id
    await row.click()
    case = page.locator(".case-body")
    await expect(case.locator("h2")).to_have_text(tx_id)
    await expect(case.locator(".pill-large")).to_have_text("review")
    await expect(case.locator(".reasons")).to_contain_text("RULE_LARGE_AMOUNT")
    await expect(case.locator(".reasons")).to_contain_text("Amount of 120 or more")
    await expect(case.locator("table.features")).to_contain_text("card_count_1d")
    await expect(case.locator(".facts")).to_contain_text("logreg-v")
    await expect(case.locator(".history tbody tr").first).to_be_visible()
    # The narrative streams in chunk by chunk and ends; it says where it came from.
    narrative = case.locator(".narrative")
    await expect(narrative).not_to_have_class(re.compile("streaming"), timeout=60_000)
    assert len((await narrative.text_content() or "").strip()) > 40
    await expect(case.locator(".source-badge")).to_be_visible()
    await expect(case.locator(".narrative-status")).to_have_text("complete")

    # The verdict goes to the API, which stores it and sends it on as a label.
    await case.locator(".note").fill("cardholder denies this payment")
    await case.locator("button.verdict.fraud").click()
    await expect(case.locator(".verdict-current")).to_contain_text("Fraud")
    await expect(case.locator(".verdict-current")).to_contain_text("e2e-analyst")
    labels = await read_topic(
        console.stack.bootstrap,
        settings.topic_labels,
        lambda got: any(label["tx_id"] == tx_id for label in got),
        timeout=30,
    )
    label = next(label for label in labels if label["tx_id"] == tx_id)
    assert (label["label"], label["source"]) == ("fraud", "analyst")
    async with httpx.AsyncClient(base_url=console.base_url, headers=console.headers()) as api:
        stored = (await api.get(f"/v1/decisions/{tx_id}")).json()["verdict"]
    assert (stored["verdict"], stored["note"]) == ("fraud", "cardholder denies this payment")

    await page.locator("#case").evaluate("panel => panel.scrollTo(0, 0)")
    screenshot = artifacts / "console.png"
    await page.screenshot(path=str(screenshot))
    if os.environ.get("FRAUD_UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, DOCS_SCREENSHOT)

    # Another analyst decides a second case first: the console says so and offers to change it.
    second = page.locator(f"#live-body tr.row-review:not([data-tx='{tx_id}'])").first
    other_tx = await second.get_attribute("data-tx")
    await second.click()
    await expect(case.locator("h2")).to_have_text(other_tx or "")
    await expect(case.locator("button.verdict.legit")).to_be_enabled()
    async with httpx.AsyncClient(base_url=console.base_url, headers=console.headers()) as api:
        first = await api.post(
            f"/v1/decisions/{other_tx}/verdict", json={"verdict": "fraud", "note": "by phone"}
        )
    assert first.status_code == 201
    await case.locator("button.verdict.legit").click()
    message = case.locator(".verdict-message.error")
    await expect(message).to_contain_text("Already decided")
    await message.locator("button", has_text="Change it to legit").click()
    await expect(case.locator(".verdict-current")).to_contain_text("Legitimate")
    async with httpx.AsyncClient(base_url=console.base_url, headers=console.headers()) as api:
        changed = (await api.get(f"/v1/decisions/{other_tx}")).json()["verdict"]
    assert changed["verdict"] == "legit"

    # Filters are the server's: the stream reopens for review and decline above 0.5 only.
    async with page.expect_request(lambda r: "action=review&action=decline" in r.url) as reopened:
        await page.click(".chip[data-action='approve']")
    await expect(page.locator("#live-body tr")).to_have_count(0)
    async with page.expect_request(lambda r: "min_score=0.5" in r.url):
        await page.locator("#f-score").fill("0.5")
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    assert "/v1/decisions/stream?" in (await reopened.value).url

    assert not problems, problems
    await context.close()
