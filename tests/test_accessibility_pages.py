"""BITV 2.0 §4: the Leichte Sprache page, the accessibility statement with the configured feedback contact,
and the sign-language video served from a configured local file."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.i18n import DE, EN
from server.settings import ConfigError, settings_from_dict


async def test_every_page_links_easy_language_and_the_statement(client):
    for lang in ("de", "en"):
        html = await (await client.get(f"/?lang={lang}")).text()
        assert 'href="/leichte-sprache"' in html and 'href="/barrierefreiheit"' in html
    html = await (await client.get("/privacy?lang=de")).text()
    assert 'href="/leichte-sprache"' in html and DE["footer.accessibility"] in html


async def test_easy_language_page_in_both_languages(client):
    resp = await client.get("/leichte-sprache?lang=de")
    assert resp.status == 200
    html = await resp.text()
    assert DE["easy.how_3"] in html and 'lang="de"' in html
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    html = await (await client.get("/leichte-sprache?lang=en")).text()
    assert EN["easy.how_3"] in html and 'lang="en"' in html


async def test_statement_names_the_configured_contact(aiohttp_client, make_app):
    client = await aiohttp_client(make_app(accessibility_contact="barrierefrei@example.org",
                                           accessibility_statement_date="30.11.2026"))
    html = await (await client.get("/barrierefreiheit")).text()
    assert 'href="mailto:barrierefrei@example.org"' in html
    assert DE["a11y.date"].format(date="30.11.2026") in html
    client2 = await aiohttp_client(make_app(accessibility_contact="https://example.org/feedback"))
    html = await (await client2.get("/barrierefreiheit?lang=en")).text()
    assert 'href="https://example.org/feedback"' in html


async def test_statement_without_contact_says_whom_to_ask(client):
    html = await (await client.get("/barrierefreiheit")).text()
    assert DE["a11y.contact_none"] in html and "mailto:" not in html


async def test_sign_language_video_is_served_locally_with_ranges(aiohttp_client, make_app, tmp_path: Path):
    video = tmp_path / "dgs.webm"
    video.write_bytes(bytes(range(256)) * 40)
    client = await aiohttp_client(make_app(sign_language_video=str(video)))
    html = await (await client.get("/")).text()
    assert 'src="/media/sign-language-video"' in html and DE["index.sign_language_h"] in html
    resp = await client.get("/media/sign-language-video", headers={"Range": "bytes=256-511"})
    assert resp.status == 206
    assert await resp.read() == bytes(range(256))


def test_a_missing_video_file_stops_the_start(tmp_path: Path):
    raw = {"server": {"sign_language_video": str(tmp_path / "missing.webm")},
           "departments": [{"id": "buergerbuero", "name": "Bürgerbüro"}]}
    with pytest.raises(ConfigError, match="sign_language_video"):
        settings_from_dict(raw)
    with pytest.raises(ConfigError, match="sign_language_video"):  # a directory is no video either
        settings_from_dict({**raw, "server": {"sign_language_video": str(tmp_path)}})


async def test_no_video_configured_means_no_section_and_a_json_404(client):
    html = await (await client.get("/")).text()
    assert "sign-language-video" not in html
    resp = await client.get("/media/sign-language-video")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_the_sign_language_video_can_carry_captions(aiohttp_client, make_app, tmp_path: Path):
    video = tmp_path / "dgs.webm"
    video.write_bytes(b"\x1a\x45\xdf\xa3" + bytes(100))
    captions = tmp_path / "dgs.vtt"
    captions.write_text("WEBVTT\n\n00:00.000 --> 00:02.000\nGuten Tag.\n", "utf-8")
    client = await aiohttp_client(make_app(sign_language_video=str(video), sign_language_captions=str(captions)))
    html = await (await client.get("/")).text()
    assert '<track kind="captions" src="/media/sign-language-video.vtt"' in html
    resp = await client.get("/media/sign-language-video.vtt")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/vtt")
    assert "Guten Tag." in await resp.text()


def test_captions_without_a_video_stop_the_start(tmp_path: Path):
    import pytest

    from server.settings import ConfigError

    from .app_fixtures import make_settings

    captions = tmp_path / "dgs.vtt"
    captions.write_text("WEBVTT\n", "utf-8")
    with pytest.raises(ConfigError, match="sign_language_captions"):
        make_settings(tmp_path, sign_language_captions=str(captions))
