"""The signed upload's URL, signature scope, retries and fallback.

Whether a store accepts its signature: ``tests/integration/test_s3_signed_put.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import AnyHttpUrl, SecretStr

from services.common.s3put import PutFailed, SignedPut, object_url, usable
from services.common.settings import S3Settings


def settings(**fields) -> S3Settings:
    return S3Settings(**({"access_key_id": SecretStr("AKIDEXAMPLE"), "secret_access_key": SecretStr("s3cr3t")}
                         | fields))


@pytest.mark.parametrize(("endpoint", "style", "url"), [
    ("http://127.0.0.1:19000", "path", "http://127.0.0.1:19000/forgeline-dev/images/ab/x.png"),
    ("http://127.0.0.1:19000", "auto", "http://127.0.0.1:19000/forgeline-dev/images/ab/x.png"),
    ("https://acct.r2.cloudflarestorage.com", "virtual",
     "https://forgeline-dev.acct.r2.cloudflarestorage.com/images/ab/x.png"),
    (None, "auto", "https://forgeline-dev.s3.eu-west-1.amazonaws.com/images/ab/x.png"),
    (None, "virtual", "https://forgeline-dev.s3.eu-west-1.amazonaws.com/images/ab/x.png"),
    (None, "path", "https://s3.eu-west-1.amazonaws.com/forgeline-dev/images/ab/x.png"),
])
def test_the_object_url_follows_the_addressing_style(endpoint, style, url):
    chosen = settings(endpoint_url=AnyHttpUrl(endpoint) if endpoint else None, addressing_style=style,
                      region="eu-west-1")
    assert object_url(chosen, "images/ab/x.png") == url


def test_a_key_is_escaped_in_the_url_but_its_slashes_kept():
    assert object_url(settings(), "a b/é+.png").endswith("/forgeline-dev/a%20b/%C3%A9%2B.png")


def test_the_signature_is_scoped_to_the_configured_region_and_signs_the_body():
    uploads = SignedPut(settings(region="eu-west-1"))
    headers = uploads._signed("http://127.0.0.1:19000/forgeline-dev/k.png", b"body", "image/png", "no-cache")

    assert "/eu-west-1/s3/aws4_request" in headers["Authorization"]
    assert headers["X-Amz-Content-SHA256"] == "230d8358dc8e8890b4c58deeb62912ee2f20357ae92a5cc861b98e68fe31acb5"
    assert "s3cr3t" not in repr(uploads) and "s3cr3t" not in str(headers)


def test_it_is_off_when_turned_off_or_when_a_proxy_is_set_for_the_endpoint(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert usable(settings())
    assert not usable(settings(signed_put=False))
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert not usable(settings())  # boto3 honours the proxy: uploads go through it
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert usable(settings())


class _Store(BaseHTTPRequestHandler):
    """Answers each PUT with the next of ``answers`` (status, body), recording the requests."""

    answers: list[tuple[int, bytes]] = []
    seen: list[dict[str, str]] = []

    def do_PUT(self) -> None:  # http.server's name for it
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(dict(self.headers))
        status, body = type(self).answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


@pytest.fixture
def store() -> Iterator[tuple[type[_Store], S3Settings]]:
    handler = type("Store", (_Store,), {"answers": [], "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield handler, settings(endpoint_url=AnyHttpUrl(f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
        server.server_close()


SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


def test_a_slow_down_is_tried_again_with_a_fresh_signature(store):
    handler, chosen = store
    handler.answers = [(503, SLOW_DOWN), (200, b"")]

    SignedPut(chosen).put("images/k.png", b"png", content_type="image/png", cache_control="no-cache")

    assert len(handler.seen) == 2
    assert all(seen["Authorization"].startswith("AWS4-HMAC-SHA256 ") for seen in handler.seen)


def test_a_refusal_is_not_tried_again_and_names_the_stores_code(store):
    handler, chosen = store
    handler.answers = [(403, b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")]

    with pytest.raises(PutFailed, match="HTTP 403 AccessDenied: Access Denied"):
        SignedPut(chosen).put("images/k.png", b"png", content_type="image/png", cache_control="no-cache")
    assert len(handler.seen) == 1


def test_the_last_slow_down_is_reported_after_three_attempts(store):
    handler, chosen = store
    handler.answers = [(503, SLOW_DOWN)] * 3

    with pytest.raises(PutFailed, match="HTTP 503 SlowDown"):
        SignedPut(chosen).put("images/k.png", b"png", content_type="image/png", cache_control="no-cache")
    assert len(handler.seen) == 3
