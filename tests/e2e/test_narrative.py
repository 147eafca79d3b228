"""An escalated case's narrative, written by an LLM, streams into the console's case panel in order.

The worker's narrator talks to the test OpenAI-compatible server (``tests/llm_server.py``), which
answers with numbered chunks at a steady pace; the reply is held after the first few until the
analyst has the case open, so the page is seen mid-stream whatever the machine's speed. The page
records every change of the narrative's text (a ``MutationObserver``): each must be the chunks
so far, joined in order, and the last the whole reply, with its source and model on the badge.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from replay.producer import replay_async
from tests.e2e.conftest import LLM_MODEL, Console, sign_in
from tests.integration.harness import handbook_rows, read_topic
from tests.llm_server import LLMServer, Reply

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CHUNKS = [f"part-{i:02d}" for i in range(1, 17)]
# The server splits its reply on spaces, one word a chunk, each but the last with its space.
PIECES = [f"{chunk} " for chunk in CHUNKS[:-1]] + [CHUNKS[-1]]
PREFIXES = ["".join(PIECES[: k + 1]) for k in range(len(PIECES))]
HELD = 3  # chunks streamed before the reply waits for the case panel to show them
PACE_S = 0.25  # between chunks once released: about 3 s for the rest

# Every distinct text of the open case's narrative, in the order the page showed them.
RECORD_NARRATIVE = """() => {
  window.narrativeSeen = [];
  new MutationObserver(() => {
    const node = document.querySelector('.case-body .narrative');
    const seen = window.narrativeSeen;
    if (node && node.textContent && seen[seen.length - 1] !== node.textContent) {
      seen.push(node.textContent);
    }
  }).observe(document.body, { subtree: true, childList: true, characterData: true });
}"""

NARRATIVE_IS = """(want) => {
  const node = document.querySelector('.case-body .narrative');
  return node !== null && node.textContent === want;
}"""


async def test_an_llm_narrative_streams_into_the_case_panel_in_order(
    llm_console: Console, llm: LLMServer, browser: Browser, artifacts: Path
) -> None:
    llm.script(Reply(text=" ".join(CHUNKS), pace_s=PACE_S, stall_after=HELD, model=LLM_MODEL))
    context = await browser.new_context(
        viewport={"width": 1440, "height": 900}, locale="en-US", timezone_id="UTC"
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    await sign_in(page, llm_console)
    await page.evaluate(RECORD_NARRATIVE)

    # One payment that the test policy's large-amount rule sends to review: one narrative.
    row = next(r for r in handbook_rows(500) if r.tx.amount >= 120)
    tx_id = row.tx.tx_id
    settings = llm_console.stack.settings()
    await replay_async(
        [row],
        bootstrap=llm_console.stack.bootstrap,
        topic=settings.topic_transactions,
        send_labels=False,
    )
    line = page.locator(f"#live-body tr[data-tx='{tx_id}']")
    await expect(line).to_have_class(re.compile("row-review"), timeout=60_000)
    await line.click()
    case = page.locator(".case-body")
    await expect(case.locator("h2")).to_have_text(tx_id)
    narrative = case.locator(".narrative")

    # Mid-stream: the panel shows exactly the chunks sent so far, and says it is still writing.
    await page.wait_for_function(NARRATIVE_IS, arg=PREFIXES[HELD - 1], timeout=60_000)
    await expect(narrative).to_have_class(re.compile("streaming"))
    await expect(case.locator(".narrative-status")).to_have_text("writing…")
    llm.release()
    await expect(narrative).not_to_have_class(re.compile("streaming"), timeout=60_000)
    await expect(case.locator(".narrative-status")).to_have_text("complete")

    seen: list[str] = await page.evaluate("window.narrativeSeen")
    strays = [text for text in seen if text not in PREFIXES]
    assert not strays, f"texts that are not the chunks joined in order: {strays}"
    counts = [PREFIXES.index(text) + 1 for text in seen]
    assert counts == sorted(set(counts)), f"the text went back or repeated: {counts}"
    assert seen[-1] == "".join(PIECES) == await narrative.text_content()
    released = [n for n in counts if n > HELD]
    assert len(released) >= (len(CHUNKS) - HELD) // 2, f"grew in too few steps: {counts}"

    badge = case.locator(".source-badge")
    await expect(badge).to_have_attribute("data-source", "llm")
    await expect(badge).to_have_text(f"LLM · {LLM_MODEL}")
    await expect(case.locator(".narrative-box p.small")).to_contain_text("tokens")
    await page.screenshot(path=str(artifacts / "narrative.png"))

    # The wire agrees: one LLM call, and the chunks on ``narratives`` in seq order.
    assert len(llm.requests) == 1
    assert llm.requests[0].body["model"] == LLM_MODEL
    records = await read_topic(
        llm_console.stack.bootstrap,
        settings.topic_narratives,
        lambda got: any(r["tx_id"] == tx_id and r["done"] for r in got),
        timeout=30,
    )
    chunks = sorted((r for r in records if r["tx_id"] == tx_id), key=lambda r: r["seq"])
    assert [r["seq"] for r in chunks] == list(range(len(PIECES) + 1))
    assert [r["delta"] for r in chunks[:-1]] == PIECES
    assert (chunks[-1]["source"], chunks[-1]["model"]) == ("llm", LLM_MODEL)

    assert not problems, problems
    await context.close()
