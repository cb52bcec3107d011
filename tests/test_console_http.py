"""The console over plain HTTP: its files, their headers, the packaging, and ``GET /api/channels``."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hq.http.console import STATIC_FILES, web_root

from .support import ROOT, HQServer, make_server


def get(hq: HQServer, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request (errors included)."""
    request = urllib.request.Request(f"{hq.url}{path}", headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def channels(hq: HQServer, headers: dict[str, str]) -> tuple[int, Any]:
    status, _, body = get(hq, "/api/channels", headers)
    return status, json.loads(body)


def test_the_page_has_the_contract_names(shared_hq: HQServer) -> None:
    status, headers, body = get(shared_hq, "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for label in ('for="codename">Codename<', 'for="password">Password<', 'type="submit">Log in<',
                  'for="channel">Channel<', 'for="message">Message<', 'for="send-to">Send to<',
                  'type="submit">Send<', '>Log out<', 'role="log"', 'role="status"', 'role="alert"'):
        assert label in page, label
    assert '<script type="module" src="/console.js">' in page
    assert "cdn" not in page.lower() and "http://" not in page and "https://" not in page


def test_the_page_runs_only_its_own_code(shared_hq: HQServer) -> None:
    _, headers, _ = get(shared_hq, "/")
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("path, content_type, marker", [
    ("/console.js", "text/javascript", b'import("/vendor/socket.io.esm.min.js")'),
    ("/requests.js", "text/javascript", b"export function request("),
    ("/channels.js", "text/javascript", b"export class ChannelDesk"),
    ("/directors.js", "text/javascript", b"export function mountDirectors("),
    ("/console.css", "text/css", b"prefers-color-scheme"),
    ("/vendor/socket.io.esm.min.js", "text/javascript", b"export{"),
])
def test_static_files(shared_hq: HQServer, path: str, content_type: str, marker: bytes) -> None:
    status, headers, body = get(shared_hq, path)
    assert status == 200 and headers["Content-Type"].startswith(content_type)
    assert marker in body


PAGE_SCRIPTS = [path for path in STATIC_FILES if path.endswith(".js") and not path.startswith("/vendor/")]


def test_the_console_never_touches_tokens_itself(shared_hq: HQServer) -> None:
    scripts = {path: get(shared_hq, path)[2].decode() for path in PAGE_SCRIPTS}
    assert set(scripts) >= {"/console.js", "/requests.js", "/channels.js", "/directors.js"}
    for path, script in scripts.items():
        for forbidden in ("localStorage", "sessionStorage", "document.cookie", "access_token", "refresh_token",
                          "Authorization", "innerHTML", "outerHTML", "insertAdjacentHTML", "eval("):
            assert forbidden not in script, (path, forbidden)
    # Every request goes through requests.js: the cookie, and the header HQ requires for cookie-borne changes.
    assert 'credentials: "include"' in scripts["/requests.js"] and '"X-HQ-Console"' in scripts["/requests.js"]
    assert "fetch(" not in "".join(script for path, script in scripts.items() if path != "/requests.js")
    assert "withCredentials: true" in scripts["/console.js"]


def test_head_and_unknown_paths(shared_hq: HQServer) -> None:
    status, headers, body = get(shared_hq, "/", method="HEAD")
    assert status == 200 and body == b""
    for path in ("/index.html.bak", "/vendor/", "/vendor/../console.py", "/web/console.js", "/console.py",
                 "/%2e%2e/hq/app.py"):
        status, headers, body = get(shared_hq, path)
        assert status == 404, path
        assert json.loads(body)["error"]["code"] == "not_found"


def test_channels_follow_the_stored_role(shared_hq: HQServer) -> None:
    expected = {
        "ana": [{"name": "missions", "read": False, "write": False}, {"name": "hq", "read": False, "write": False}],
        "fox": [{"name": "missions", "read": True, "write": False}, {"name": "hq", "read": False, "write": True}],
        "hank": [{"name": "missions", "read": True, "write": True}, {"name": "hq", "read": True, "write": True}],
        "dora": [{"name": "missions", "read": True, "write": True}, {"name": "hq", "read": True, "write": True}],
    }
    for codename, answer in expected.items():
        token = shared_hq.login(codename)["access_token"]
        assert channels(shared_hq, {"Authorization": f"Bearer {token}"}) == (200, answer), codename
        assert channels(shared_hq, {"Cookie": f"jwt={token}"}) == (200, answer), codename


def test_channels_refusals(shared_hq: HQServer) -> None:
    token = shared_hq.login("fox")["access_token"]
    for headers, code in (({}, "token_missing"),
                          ({"Authorization": "Bearer not-a-token"}, "token_invalid"),
                          ({"Authorization": f"Basic {token}"}, "token_invalid"),
                          ({"Authorization": f"Bearer {token}x"}, "token_invalid"),
                          ({"Cookie": "jwt=garbage"}, "token_invalid")):
        status, body = channels(shared_hq, headers)
        assert (status, body["error"]["code"]) == (401, code), headers
    _, response_headers, _ = get(shared_hq, "/api/channels", {"Authorization": f"Bearer {token}"})
    assert response_headers["Cache-Control"] == "no-store"


def test_roles_are_the_configured_levels_for_logged_in_agents(shared_hq: HQServer) -> None:
    token = shared_hq.login("fox")["access_token"]
    for headers in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"jwt={token}"}):
        status, response_headers, body = get(shared_hq, "/api/roles", headers)
        assert (status, json.loads(body)) == (200, ["analyst", "field-operative", "handler", "director"])
        assert response_headers["Cache-Control"] == "no-store"
    for headers, code in (({}, "token_missing"), ({"Authorization": "Bearer not-a-token"}, "token_invalid")):
        status, _, body = get(shared_hq, "/api/roles", headers)
        assert (status, json.loads(body)["error"]["code"]) == (401, code)


def test_channels_of_a_disabled_agent_are_refused(hq: HQServer) -> None:
    token = hq.login("fox")["access_token"]
    assert hq.cli("agents", "disable", "fox").returncode == 0
    status, body = channels(hq, {"Authorization": f"Bearer {token}"})
    assert (status, body["error"]["code"]) == (401, "agent_disabled")


def test_channels_follow_the_configured_policy(hq_factory) -> None:
    hq = hq_factory(agents={"ana": "analyst"},
                    channels={"lobby": {"read": "analyst", "write": "analyst"},
                              "vault": {"read": "director", "write": "director"}})
    token = hq.login("ana")["access_token"]
    assert channels(hq, {"Authorization": f"Bearer {token}"}) == (200, [
        {"name": "lobby", "read": True, "write": True}, {"name": "vault", "read": False, "write": False}])


def test_an_installed_hq_serves_the_console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``pip install .`` copies (setuptools' build step) carries the page and socket.io-client."""
    for name, _ in STATIC_FILES.values():
        assert web_root().joinpath(name).is_file(), f"{name} missing: run `make setup`"
    built = tmp_path / "lib"
    result = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                             "--build-lib", str(built)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    monkeypatch.setenv("PYTHONPATH", str(built))
    where = subprocess.run([sys.executable, "-c", "import hq; print(hq.__file__)"], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    assert where.stdout.startswith(str(built)), where
    hq = make_server(tmp_path / "installed", agents={}).start()
    try:
        for path, (name, _) in STATIC_FILES.items():
            status, _, body = get(hq, path)
            assert status == 200 and body == (built / "hq" / "web" / name).read_bytes(), path
    finally:
        hq.stop()
