"""The browser tests: the real stack (broker, Redis, a worker, ``fraudstream api``) and Chromium.

The broker and Redis are the integration suite's session fixtures (``FRAUD_TEST_STACK`` chooses
them the same way); on top, each test gets its own topics and Redis prefix, a worker process, the
API as a subprocess on a free port with a token of its own, and a headless Debian ``chromium``
driven by Playwright (``FRAUD_TEST_CHROMIUM`` names another binary). Nothing is downloaded:
``make services`` installs the browser with apt. The worker's narrator writes from its template
(``console``) or streams from the test OpenAI-compatible server (``llm_console``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from processor.worker import create_topics
from tests.integration.conftest import (  # noqa: F401  (fixtures, re-exported for this package)
    kafka_bootstrap,
    kafka_service,
    redis_service,
    redis_url,
    test_stack,
)
from tests.integration.harness import ROOT, Stack, WorkerProcess
from tests.llm_server import LLMServer
from tests.services.ports import free_port

_HERE = Path(__file__).parent

# A rule that sends large payments to review, so a fresh model (which approves everything) still
# escalates cases the test can open, narrate and judge.
TEST_POLICY = """\
version: "e2e"
thresholds: {review: 0.5, decline: 0.95}
explain_top: 3
lists: {block_cards: [], block_merchants: [], allow_cards: [], allow_merchants: []}
rules:
  - name: large_amount
    when: {feature: amount, op: ">=", value: 120}
    action: review
    priority: 10
    text: "Amount of 120 or more (the browser test's rule)"
"""


LLM_MODEL = "e2e-narrator"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@dataclass
class Console:
    """The running API and console, and the corner of the stack the worker uses."""

    base_url: str
    token: str
    stack: Stack
    worker: WorkerProcess
    api_log: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def describe(self) -> str:
        api_tail = "\n".join(self.api_log.read_text(errors="replace").splitlines()[-40:])
        return f"--- worker\n{self.worker.log_tail()}\n--- api\n{api_tail}"


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"`fraudstream api` exited with code {process.returncode}:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        try:
            answer = httpx.get(f"{url}/readyz", timeout=2)
            if answer.status_code == 200:
                return
            last = answer.text
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"`fraudstream api` not ready after {timeout:.0f}s: {last}")


@contextlib.asynccontextmanager
async def open_console(
    bootstrap: str,
    redis: str,
    tmp_path: Path,
    extra: dict[str, str] | None = None,
) -> AsyncIterator[Console]:
    """A worker and ``fraudstream api`` on their own topics, with an analyst token; ``extra``
    is added to both processes' environment."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(TEST_POLICY)
    stack = Stack(bootstrap, redis, extra={"FRAUD_POLICY": str(policy), **(extra or {})})
    await create_topics(stack.settings())
    worker = WorkerProcess(stack, tmp_path).start()

    token = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        **os.environ,
        **stack.env,
        "FRAUD_API_TOKENS": f"{token}:analyst:e2e-analyst",
        "FRAUD_API_HOST": "127.0.0.1",
        "FRAUD_API_PORT": str(port),
        "FRAUD_API_HEARTBEAT_S": "2",
    }
    api_log = tmp_path / "api.log"
    with api_log.open("ab") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "processor.cli", "api"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, api, api_log, timeout=60)
        yield Console(base_url, token, stack, worker, api_log)
    finally:
        if api.poll() is None:
            api.send_signal(signal.SIGTERM)
            try:
                api.wait(15)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait(5)
        worker.stop()


@pytest.fixture
async def console(
    kafka_bootstrap: str,  # noqa: F811
    redis_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Console]:
    """The stack with the template narrator: no API key, so no LLM is reached."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with open_console(kafka_bootstrap, redis_url, tmp_path) as running:
        yield running


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    """The test OpenAI-compatible server (``tests/llm_server.py``); tests script its replies."""
    with LLMServer() as server:
        yield server


@pytest.fixture
async def llm_console(
    kafka_bootstrap: str,  # noqa: F811
    redis_url: str,  # noqa: F811
    tmp_path: Path,
    llm: LLMServer,
) -> AsyncIterator[Console]:
    """The stack with the worker's narrator pointed at ``llm`` as model ``LLM_MODEL``.

    The narrator's stall and call timeouts are long, so a test may hold a reply mid-stream
    (``Reply.stall_after``, then ``llm.release()``) while the browser catches up.
    """
    extra = {
        "OPENAI_API_KEY": "e2e-test-key",
        "OPENAI_BASE_URL": llm.base_url,
        "FRAUD_LLM_MODEL": LLM_MODEL,
        "FRAUD_LLM_STALL_TIMEOUT_S": "60",
        "FRAUD_LLM_TIMEOUT_S": "120",
    }
    async with open_console(kafka_bootstrap, redis_url, tmp_path, extra) as running:
        yield running


async def sign_in(page: Page, console: Console) -> None:
    """Sign in as the analyst (after a wrong token is refused) and wait for the live stream."""
    await page.goto(console.base_url)
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token-input", "not-a-token")
    await page.click("#login-button")
    await expect(page.locator("#login-error")).to_contain_text("not valid")
    await page.fill("#token-input", console.token)
    await page.click("#login-button")
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "open", timeout=15_000)


def chromium_path() -> str:
    found = os.environ.get("FRAUD_TEST_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("the browser tests need Debian's chromium: run `make services`", pytrace=False)
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (Debian's), driven by Playwright over its own pipe."""
    from playwright.async_api import async_playwright

    # Root cannot use Chromium's sandbox; an unprivileged user keeps it.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=args
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Iterator[Path]:
    """Where a test leaves what a person may want to look at (screenshots): under basetemp."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    yield folder
