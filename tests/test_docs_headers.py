"""``/docs`` over a real socket and in a real browser: the dashboard's security headers (a
policy that allows only the server's own files, no framing, no sniffing), no inline script,
and a token given to Swagger UI's "Authorize" kept out of the browser's storage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.http.headers import SECURITY_HEADERS as DASHBOARD_HEADERS
from http_server import Server
from test_dashboard_browser import browser  # noqa: F401 (fixture)

SECRET = "docs-token-that-must-not-stay"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("docs"), "--no-worker").start()
    yield srv
    assert srv.stop() == 0, srv.output()


SECURITY = ("content-security-policy", "x-frame-options", "x-content-type-options",
            "referrer-policy")


def test_the_page_has_the_dashboards_security_headers(server: Server) -> None:
    answer = server.raw(b"GET /docs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close")
    assert answer.status_code == 200
    for name in SECURITY:
        wanted = {k.lower(): v for k, v in DASHBOARD_HEADERS.items()}[name]
        assert answer.headers.get(name) == wanted, name
    policy = answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert answer.headers["cache-control"] == "no-store"


def test_the_page_has_no_inline_script_and_keeps_no_authorization(server: Server) -> None:
    page = server.client.get("/docs").text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.S)
    assert len(scripts) == 2
    assert all(' src="/docs/static/' in attributes and not body.strip()
               for attributes, body in scripts), scripts
    init = server.client.get("/docs/static/init.js")
    assert init.status_code == 200
    assert init.headers["content-type"].startswith("text/javascript")
    assert "persistAuthorization: false" in init.text
    assert "localStorage" not in init.text


@pytest.mark.parametrize("name", ["init.js", "swagger-ui-bundle.js", "swagger-ui.css"])
def test_its_files_are_not_sniffed_nor_framed(server: Server, name: str) -> None:
    answer = server.raw(f"GET /docs/static/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        "Connection: close".encode())
    assert answer.status_code == 200
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"


def test_a_missing_file_is_still_404(server: Server) -> None:
    assert server.client.get("/docs/static/init.css").status_code == 404


def test_in_a_browser_the_page_works_and_forgets_the_token(
        browser: Any, server: Server) -> None:  # noqa: F811
    """The page and its files are fetched with the token (as a proxy in front might); the
    token the user types into "Authorize" is what "Try it out" sends, and it is gone from
    the browser after a reload."""
    from http_server import TOKEN

    context = browser.new_context(base_url=server.url)
    page_files = re.compile(r"/(docs(/static/[\w.-]+)?|openapi\.json)$")

    def with_token(route: Any) -> None:
        path = route.request.url.split("?", 1)[0][len(server.url):]
        headers = dict(route.request.headers)
        if page_files.fullmatch(path):
            headers["authorization"] = f"Bearer {TOKEN}"
        route.continue_(headers=headers)

    context.route("**/*", with_token)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda message: message.type == "error" and errors.append(message.text))
    tab.goto("/docs")
    tab.wait_for_selector(".opblock")  # the operations, read from /openapi.json
    assert tab.locator(".opblock").count() > 5
    tab.click("button.authorize")
    tab.fill(".modal-ux input", TOKEN)
    tab.click(".modal-ux button.authorize[type=submit]")
    tab.wait_for_selector(".modal-ux button:has-text('Logout')")
    tab.click(".modal-ux button.btn-done")
    sent: list[str] = []
    tab.on("request", lambda request: request.url.endswith("/queues") and sent.append(
        request.headers.get("authorization", "")))
    queues = tab.locator(".opblock-get", has=tab.locator("[data-path='/queues']")).first
    queues.locator(".opblock-summary").first.click()
    queues.locator(".try-out__btn").click()
    queues.locator(".execute").click()
    status = queues.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for()
    assert sent == [f"Bearer {TOKEN}"]
    assert "200" in status.inner_text()
    stored = tab.evaluate(
        "() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage),"
        " document.cookie])")
    assert TOKEN not in stored, stored
    assert not errors, errors  # script errors, refused files, CSP violations
    tab.reload()
    tab.wait_for_selector(".opblock")
    tab.click("button.authorize")
    tab.wait_for_selector(".modal-ux")
    # nothing is authorized any more
    assert tab.locator(".modal-ux button:has-text('Logout')").count() == 0
    assert not errors, errors
    context.close()
