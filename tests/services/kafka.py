"""A real Apache Kafka broker (KRaft, one node acting as broker and controller) for the tests.

The broker's jars come from Maven Central through the machine's Maven (`kafka/pom.xml` beside this
file) into `~/.cache/fraudstream/kafka-<version>/libs`, or `$FRAUD_KAFKA_HOME/libs`. `make services`
fetches them ahead of time (`python -m tests.services.kafka prepare`); otherwise the first
`KafkaBroker.start()` does, holding a file lock so parallel runs don't race. `FRAUD_KAFKA_VERSION`
picks another 4.x release.

Topics are not created on first use (`auto.create.topics.enable=false`, as on a managed cluster
where topics are declared): a test creates what it needs with `create_topics`, and a producer that
writes to an undeclared topic fails here as it would in production.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from tests.services.ports import ChildProcess, free_port, port_is_open

__all__ = [
    "KAFKA_VERSION",
    "KafkaBroker",
    "create_topics",
    "create_topics_sync",
    "fetch_kafka_libs",
    "kafka_home",
]

# Checked with aiokafka 0.14 and faust-streaming 0.15.3 (consumer groups, committed offsets,
# transactions); 4.4.0 passes the same checks and is one FRAUD_KAFKA_VERSION away.
KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("kafka") / "pom.xml"
_T = TypeVar("_T")
# Partitions of __consumer_offsets (50 by default, which slows the first group join on 2 cores).
_OFFSETS_PARTITIONS = 4

_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.requestchannel.name = kafka.network.RequestChannel$
logger.requestchannel.level = WARN
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
"""


def kafka_version() -> str:
    return os.environ.get("FRAUD_KAFKA_VERSION", KAFKA_VERSION)


def kafka_home(version: str | None = None) -> Path:
    """Where the broker's jars live: `$FRAUD_KAFKA_HOME` or the per-version user cache."""
    if home := os.environ.get("FRAUD_KAFKA_HOME"):
        return Path(home).expanduser()
    return Path.home() / ".cache" / "fraudstream" / f"kafka-{version or kafka_version()}"


def fetch_kafka_libs(version: str | None = None, home: Path | None = None) -> Path:
    """Copy the broker and its runtime dependencies into `<home>/libs` unless they are there.

    Idempotent and safe to call from several processes at once: the first one fetches under an
    exclusive lock, the others wait for it and then find the finished directory.
    """
    version = version or kafka_version()
    home = home or kafka_home(version)
    libs = home / "libs"
    done = libs / ".complete"
    # The marker names what filled the directory, so editing the pom refreshes the cache.
    stamp = f"kafka {version} pom {zlib.crc32(POM.read_bytes()):08x}\n"
    if _read(done) == stamp:
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".fetch.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _read(done) == stamp:
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError(
                "Maven (mvn) is not on PATH: it fetches the Kafka broker's jars. "
                "Run `make services`, or install Maven and a JDK 17."
            )
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-Dkafka.version={version}",
            f"-DoutputDirectory={partial}",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise RuntimeError(f"fetching Kafka {version} with Maven failed:\n{tail}")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        done.write_text(stamp)
    return libs


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _java() -> str:
    if java_home := os.environ.get("JAVA_HOME"):
        candidate = Path(java_home) / "bin" / "java"
        if candidate.exists():
            return str(candidate)
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("java is not on PATH: the Kafka broker needs a JDK 17 or newer")
    return java


def _class_archive(version: str) -> Path:
    """The broker's class-data-sharing archive, one per fetch of the jars and Java build.

    The JVM ignores (with a warning) an archive whose jars or JVM differ from the ones it runs
    with, so a new fetch or a new JDK gets an archive of its own.
    """
    java = Path(os.path.realpath(_java()))
    libs = kafka_home(version) / "libs" / ".complete"
    marks = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (java, libs) if p.exists()]
    return kafka_home(version) / f"classes-{zlib.crc32(' '.join(marks).encode()):08x}.jsa"


def _cluster_id() -> str:
    # Kafka's Uuid.randomUuid(): 16 random bytes, URL-safe base64 without padding, never
    # starting with "-" (the storage tool would read it as an option).
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _java_string_hash(text: str) -> int:
    value = 0
    for char in text:
        value = (31 * value + ord(char)) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _probe_groups(partitions: int) -> list[str]:
    """One group id per __consumer_offsets partition (Kafka: abs(hashCode) % partitions)."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < partitions:
        name = f"fraudstream-probe-{index}"
        value = _java_string_hash(name)
        found.setdefault((0 if value == -(1 << 31) else abs(value)) % partitions, name)
        index += 1
    return [found[p] for p in range(partitions)]


async def _not_ready_because(bootstrap: str, timeout: float) -> str | None:
    """Why a client could not use the broker yet, or None when it can.

    Ready means a broker is registered and unfenced, and the group coordinator has loaded every
    __consumer_offsets partition. The second half matters after a restart: until a partition is
    loaded the broker answers OffsetFetch with a request-level COORDINATOR_LOAD_IN_PROGRESS that
    aiokafka 0.14 ignores, so `consumer.committed()` would report no committed offset at all.
    """
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.commit import OffsetFetchRequest
    from aiokafka.protocol.coordination import FindCoordinatorRequest

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(int(timeout * 1000), 1000)
    )
    try:
        async with asyncio.timeout(timeout):
            await client.bootstrap()
            brokers = [broker.nodeId for broker in client.cluster.brokers()]
            if not brokers:
                return "no broker is registered and unfenced yet"
            for group in _probe_groups(_OFFSETS_PARTITIONS):
                found = await client.send(brokers[0], FindCoordinatorRequest(group, 0))
                if found.error_code:
                    return f"no coordinator for group {group} (error {found.error_code})"
                fetched = await client.send(found.coordinator_id, OffsetFetchRequest(group, None))
                if fetched.error_code:
                    return f"group {group}'s offsets not loaded (error {fetched.error_code})"
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    timeout: float = 30.0,
    config: Mapping[str, str] | None = None,
) -> None:
    """Create topics ({name: partitions}, replication 1); return once every partition is served.

    "Served" means the metadata names a leader and that leader answers a ListOffsets request for
    the partition: metadata alone runs a moment ahead of the broker taking leadership, and a
    producer then sees NOT_LEADER_OR_FOLLOWER. A topic that already exists is left as it is.
    `config` applies to every topic (e.g. {"cleanup.policy": "compact"}).
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import for_code

    topic_already_exists = 36
    request_timeout_ms = max(int(timeout * 1000), 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    waiting: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            await admin.start()
            new = [
                NewTopic(name, partitions, 1, topic_configs=dict(config or {}))
                for name, partitions in topics.items()
            ]
            response = await admin.create_topics(new, timeout_ms=request_timeout_ms)
            for name, code, *rest in response.topic_errors:
                if code not in (0, topic_already_exists):
                    message = rest[0] if rest else ""
                    raise for_code(code)(f"creating topic {name!r}: {message}")
            await client.bootstrap()
            while waiting := await _unserved_partitions(admin, client, topics):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(
            f"topics not served after {timeout:.0f}s: {waiting or list(topics)}"
        ) from None
    finally:
        await admin.close()
        await client.close()


async def _unserved_partitions(admin: Any, client: Any, topics: Mapping[str, int]) -> list[str]:
    """The partitions ("topic/partition") without a leader that answers for them yet."""
    from aiokafka.protocol.offset import OffsetRequest

    unserved: list[str] = []
    by_leader: dict[int, list[tuple[str, int]]] = {}
    for topic in await admin.describe_topics(list(topics)):
        name, partitions = topic["topic"], topic["partitions"]
        if topic["error_code"] != 0 or len(partitions) < topics[name]:
            unserved.append(f"{name}/*")
            continue
        for partition in partitions:
            if partition["leader"] < 0:
                unserved.append(f"{name}/{partition['partition']}")
            else:
                by_leader.setdefault(partition["leader"], []).append((name, partition["partition"]))
    for leader, owned in by_leader.items():
        grouped: dict[str, list[tuple[int, int]]] = {}
        for name, partition in owned:
            grouped.setdefault(name, []).append((partition, -1))  # -1: the latest offset
        response = await client.send(leader, OffsetRequest(-1, 0, list(grouped.items())))
        for name, partitions in response.topics:
            unserved += [f"{name}/{p[0]}" for p in partitions if p[1] != 0]
    return unserved


def create_topics_sync(
    bootstrap: str,
    topics: Mapping[str, int],
    timeout: float = 30.0,
    config: Mapping[str, str] | None = None,
) -> None:
    """`create_topics` for sync callers (works inside a running event loop too)."""
    run_sync(create_topics(bootstrap, topics, timeout, config))


class KafkaBroker:
    """One Apache Kafka broker in KRaft mode (broker and controller in one JVM) on 127.0.0.1.

    `start()` formats the storage on first use, launches the JVM and returns once a real client
    sees the broker in the cluster metadata and every consumer group's committed offsets can be
    read (see `_not_ready_because`). `restart()` keeps the port and the data directory:
    topics, records and committed offsets survive it, and survive `kill()` followed by `start()`.
    """

    def __init__(
        self,
        port: int | None = None,
        data_dir: Path | None = None,
        partitions: int = 1,
        *,
        version: str | None = None,
        heap: str = "512m",
        start_timeout: float = 90.0,
        auto_create_topics: bool = False,
    ) -> None:
        self.version = version or kafka_version()
        self.port = port or free_port()
        self.controller_port = free_port()
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="fraudstream-kafka-")) if data_dir is None else data_dir
        )
        self.partitions = partitions
        self.heap = heap
        self.start_timeout = start_timeout
        self.auto_create_topics = auto_create_topics
        self.log_path = self.data_dir / "broker.log"
        self.startup_seconds: float | None = None
        self._process: ChildProcess | None = None
        self._archive_partial: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.alive

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def _server_properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir / "kraft-logs"),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": str(self.auto_create_topics).lower(),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": str(_OFFSETS_PARTITIONS),
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After kill(), the restarted node must wait out its previous registration's session
            # before it may register again (DUPLICATE_BROKER_REGISTRATION): 9 s by default.
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            # Lets tests use short consumer session timeouts (the default floor is 6 s).
            "group.min.session.timeout.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _java_argv(
        self, libs: Path, main: str, *args: str, flags: tuple[str, ...] = ()
    ) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseSerialGC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            *flags,
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format_storage(self, libs: Path, config: Path) -> None:
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return
        archive = _class_archive(self.version)
        # A one-shot tool: the quick C1 compiler alone starts it fastest.
        flags: tuple[str, ...] = ("-XX:TieredStopAtLevel=1",)
        if archive.exists():
            flags += (f"-XX:SharedArchiveFile={archive}",)
        argv = self._java_argv(
            libs,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _cluster_id(),
            "-c",
            str(config),
            flags=flags,
        )
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"formatting KRaft storage failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )

    def _class_archive_flags(self) -> tuple[str, ...]:
        # Class data sharing: the broker loads most of its ~10,000 classes from a memory-mapped
        # archive instead of 46 jars, which halves its start time. The first broker on a machine
        # writes the archive when it exits cleanly; brokers after it read it.
        archive = _class_archive(self.version)
        if archive.exists():
            return (f"-XX:SharedArchiveFile={archive}",)
        self._archive_partial = archive.with_name(
            f"{archive.name}.{os.getpid()}-{id(self):x}.partial"
        )
        return (f"-XX:ArchiveClassesAtExit={self._archive_partial}",)

    def _settle_class_archive(self, clean_exit: bool) -> None:
        partial, self._archive_partial = self._archive_partial, None
        if partial is None:
            return
        if clean_exit and partial.exists() and partial.stat().st_size > 0:
            archive = _class_archive(self.version)
            partial.replace(archive)
            for stale in archive.parent.glob("classes-*.jsa"):
                if stale != archive:
                    stale.unlink(missing_ok=True)
        else:
            partial.unlink(missing_ok=True)

    def start(self) -> Self:
        if self.running:
            return self
        began = time.monotonic()
        libs = fetch_kafka_libs(self.version)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(self._server_properties())
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        self._format_storage(libs, config)
        argv = self._java_argv(libs, "kafka.Kafka", str(config), flags=self._class_archive_flags())
        self._process = ChildProcess(argv, self.log_path, cwd=self.data_dir)
        self._process.spawn()
        self._wait_ready(began)
        self.startup_seconds = time.monotonic() - began
        return self

    def _wait_ready(self, began: float) -> None:
        assert self._process is not None
        deadline = began + self.start_timeout
        reason = "its port is not open yet"
        while time.monotonic() < deadline:
            if not self._process.alive:
                code = self._process.returncode
                self.kill()
                raise RuntimeError(
                    f"Kafka broker exited with code {code} while starting; "
                    f"last lines of {self.log_path}:\n{self._process.log_tail()}"
                )
            if port_is_open(self.port):
                found = run_sync(_not_ready_because(self.bootstrap, 5.0))
                if found is None:
                    return
                reason = found
            time.sleep(0.1)
        tail = self._process.log_tail()
        self.kill()
        raise TimeoutError(
            f"Kafka broker on {self.bootstrap} not ready after {self.start_timeout:.0f}s "
            f"({reason}); last lines of {self.log_path}:\n{tail}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """Controlled shutdown (SIGTERM); SIGKILL if it has not exited after `timeout` seconds."""
        if self._process is not None:
            self._process.terminate(timeout)
            self._settle_class_archive(clean_exit=self._process.returncode in (0, 143))

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would: no controlled shutdown, logs recover on start."""
        if self._process is not None:
            self._process.kill()
            self._settle_class_archive(clean_exit=False)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop and, if this object created the data directory, delete it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"KafkaBroker({self.bootstrap}, kafka {self.version}, {state})"


def prepare() -> Path:
    """Fetch the jars and, once per machine, run a broker to write its class-sharing archive."""
    libs = fetch_kafka_libs()
    if not _class_archive(kafka_version()).exists():
        with KafkaBroker():
            pass
    return libs


def main(argv: list[str]) -> int:
    """`fetch`: the jars; `prepare`: the jars and a first run; `run`: a broker until Ctrl-C."""
    command = argv[0] if argv else "prepare"
    if command in ("fetch", "prepare"):
        print(fetch_kafka_libs() if command == "fetch" else prepare())
        return 0
    if command == "run":
        # Stop cleanly on SIGTERM too (a background job ignores Ctrl-C's SIGINT).
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with KafkaBroker() as broker:
            print(f"{broker.bootstrap} (ready in {broker.startup_seconds:.1f}s)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while broker.running:
                    time.sleep(1)
        return 0
    print("usage: python -m tests.services.kafka [fetch|prepare|run]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
