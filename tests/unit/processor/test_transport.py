"""The worker's Faust transport: our consumer loop is upstream's with one change."""

from __future__ import annotations

import hashlib
import inspect

from faust.transport import consumer as upstream

from processor.settings import Settings
from processor.transport import App, Consumer, Transport

# sha256 of faust-streaming 0.15.3's Consumer._drain_messages. When an upgrade changes that loop,
# this fails: read the new loop and carry its changes into processor/transport.py.
UPSTREAM_DRAIN = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


def test_the_upstream_loop_is_the_one_the_override_was_made_from() -> None:
    source = inspect.getsource(upstream.Consumer._drain_messages)
    assert "callback(message), self.suspend_flow.wait()" in source
    assert hashlib.sha256(source.encode()).hexdigest() == UPSTREAM_DRAIN


def test_the_override_hands_messages_over_without_wait_first() -> None:
    source = inspect.getsource(Consumer._drain_messages)
    assert "wait_first" not in source
    assert "await callback(message)" in source


def test_the_app_consumes_through_the_transport() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", redis_url="redis://127.0.0.1:9")
    app = App("transport-test", broker=settings.broker_urls)
    assert isinstance(app.transport, Transport)
    assert app.transport.Consumer is Consumer
