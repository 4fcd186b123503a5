"""Pages: they render, carry the security headers, speak German by default and English on request."""

from __future__ import annotations


async def test_pages_render_with_security_headers(client):
    for path in ("/", "/join/buergerbuero", "/wait/abc", "/privacy", "/staff"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert 'lang="de"' in await resp.text()


async def test_language_switch_is_remembered(client):
    resp = await client.get("/?lang=en")
    assert 'lang="en"' in await resp.text()
    assert resp.cookies["sps_lang"].value == "en"
    assert 'lang="en"' in await (await client.get("/privacy")).text()


async def test_unknown_pages_get_the_html_404_and_api_paths_json(client):
    resp = await client.get("/no/such/page")
    assert resp.status == 404 and "text/html" in resp.headers["Content-Type"]
    resp = await client.get("/join/nope")
    assert resp.status == 404 and "text/html" in resp.headers["Content-Type"]
    resp = await client.get("/api/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_the_socket_io_client_is_served_locally(client):
    resp = await client.get("/static/vendor/socket.io.min.js")
    assert resp.status == 200 and len(await resp.read()) > 10_000
