"""The one retry layer: which real errors are retried, how often, and that nested layers do not multiply."""

import logging
import socket
import threading

import pytest

from millrace.config import ConfigError
from millrace.retry import TransientError, backoff, exception_chain, is_transient, with_retries
from tests.conftest import free_port

pytestmark = pytest.mark.unit


def refused() -> ConnectionRefusedError:
    """A real refused TCP connection: nothing listens on the port."""
    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", free_port()))
        except ConnectionRefusedError as exc:
            return exc
    raise AssertionError("something listens on a free port")


@pytest.fixture()
def silent_server():
    """A loopback TCP server that accepts connections and never answers; yields (port, accepted count)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()
    for conn in accepted:
        conn.close()


def raised(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("no exception")


def test_network_failures_are_transient(silent_server):
    port, _ = silent_server
    assert is_transient(refused())

    def read_with_timeout():
        with socket.create_connection(("127.0.0.1", port), timeout=0.05) as s:
            s.recv(1)

    assert isinstance(raised(read_with_timeout), TimeoutError) and is_transient(raised(read_with_timeout))
    assert is_transient(TransientError("busy"))


def test_library_errors_from_real_calls_are_classified():
    import boto3
    import requests
    from botocore.config import Config
    from botocore.exceptions import ClientError

    port = free_port()
    assert is_transient(raised(lambda: requests.get(f"http://127.0.0.1:{port}/", timeout=1)))
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="k", aws_secret_access_key="s",
                      region_name="us-east-1", config=Config(retries={"total_max_attempts": 1}))
    endpoint_error = raised(lambda: s3.list_objects_v2(Bucket="b"))
    assert type(endpoint_error).__name__ == "EndpointConnectionError" and is_transient(endpoint_error)

    def client_error(status: int, code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": code},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    assert is_transient(client_error(503, "SlowDown")) and is_transient(client_error(500, "InternalError"))
    assert is_transient(client_error(429, "TooManyRequests")) and is_transient(client_error(400, "Throttling"))
    assert not is_transient(client_error(403, "AccessDenied")) and not is_transient(client_error(404, "NoSuchKey"))
    assert not is_transient(raised(lambda: requests.get("not a url")))


def test_an_unreachable_milvus_is_transient_and_its_cyclic_chain_is_walked_once():
    from pymilvus import MilvusClient
    from pymilvus.exceptions import ParamError

    exc = raised(lambda: MilvusClient(uri=f"http://127.0.0.1:{free_port()}", timeout=2))
    assert is_transient(exc)
    assert len(list(exception_chain(exc))) < 10  # pymilvus raises `e from e`: a cycle, walked once
    assert not is_transient(ParamError(message="dim must be positive"))


def test_a_collection_not_yet_reloaded_after_a_milvus_restart_is_transient():
    """What a Milvus standalone answered a query right after its restart (tests/flows/test_faults_milvus.py), while
    it reloaded its collections in the background; Milvus Lite does not enforce loading, so the error is built here."""
    from pymilvus.exceptions import MilvusException

    assert is_transient(MilvusException(code=101, message="failed to query: collection not loaded[collection=47]"))
    assert not is_transient(MilvusException(code=100, message="collection not found[collection=t]"))


def test_mistakes_are_never_retried(tmp_path):
    try:
        try:
            raise refused()
        except ConnectionRefusedError as exc:
            raise ConfigError("cannot reach Milvus: check MILLRACE_MILVUS_URI") from exc
    except ConfigError as config_error:
        assert not is_transient(config_error)  # the ConfigError decides, not the refused connection under it
    assert not is_transient(raised(lambda: (tmp_path / "missing.txt").read_bytes()))
    assert not is_transient(raised(lambda: {}["key"]))
    assert not is_transient(raised(lambda: int("x")))
    assert not is_transient(raised(lambda: len(5)))
    assert not is_transient(PermissionError("denied"))
    assert not is_transient(RuntimeError("unknown: not retried"))


def test_attempts_are_bounded_and_logged(caplog):
    calls = []

    def connect():
        calls.append(1)
        raise refused()

    caplog.set_level(logging.WARNING, logger="millrace")
    with pytest.raises(ConnectionRefusedError):
        with_retries(connect, [0.01, 0.02], what="connect to the test port")
    assert len(calls) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert [("attempt %d/3" % n) in line for n, line in enumerate(lines, 1)] == [True] * 3
    assert all("connect to the test port" in line and "ConnectionRefusedError" in line for line in lines)
    assert "giving up" in lines[-1]


def test_a_transient_failure_then_success_returns_the_value():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise refused()
        return "ok"

    assert with_retries(flaky, [0.01, 0.01, 0.01], what="flaky") == "ok" and len(calls) == 3


def test_a_permanent_failure_is_tried_once(tmp_path):
    calls = []

    def read():
        calls.append(1)
        return (tmp_path / "missing").read_bytes()

    with pytest.raises(FileNotFoundError):
        with_retries(read, [0.01, 0.01], what="read")
    assert len(calls) == 1


def test_nested_layers_do_not_multiply_attempts():
    calls = []

    def connect():
        calls.append(1)
        raise refused()

    with pytest.raises(ConnectionRefusedError):
        with_retries(lambda: with_retries(connect, [0.01, 0.01], what="inner"), [0.01, 0.01], what="outer")
    assert len(calls) == 3  # the inner layer's three, not 3 x 3


def test_backoff_follows_the_delays_with_jitter():
    waits = [backoff([2.0, 5.0], 1) for _ in range(500)]
    assert 1.0 <= min(waits) < 1.5 and 2.5 < max(waits) <= 3.0
    assert all(2.5 <= backoff([2.0, 5.0], 2) <= 7.5 for _ in range(100))
