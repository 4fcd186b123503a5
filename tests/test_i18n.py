"""The gettext catalogs: every message in every catalog, plural entries complete, placeholders the same,
the compiled .mo in step with the .po, CLDR plural rules, and the page language negotiated from
Accept-Language unless the citizen chose one."""

from __future__ import annotations

import string

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from server.i18n import PAGE_LANGUAGES, TRANSLATIONS, gettext, negotiate_accept_language, ngettext, po_path


def _catalog(lang: str):
    with po_path(lang).open("rb") as f:
        return read_po(f, locale=lang)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_message_exists_in_every_catalog_with_the_same_placeholders() -> None:
    catalogs = {lang: _catalog(lang) for lang in PAGE_LANGUAGES}
    ids = {lang: {m.id if isinstance(m.id, str) else m.id[0] for m in c if m.id} for lang, c in catalogs.items()}
    reference = ids["de"]
    assert len(reference) > 500
    for lang, found in ids.items():
        missing, extra = sorted(reference - found)[:10], sorted(found - reference)[:10]
        assert found == reference, f"{lang}: missing {missing}, extra {extra}"
    for lang, catalog in catalogs.items():
        for message in catalog:
            if not message.id:
                continue
            strings = message.string if message.pluralizable else (message.string,)
            assert all(s.strip() for s in strings), f"{lang}: {message.id} is not translated"
            assert not message.fuzzy, f"{lang}: {message.id} is fuzzy"
            if message.pluralizable:
                assert len(strings) == catalog.num_plurals, f"{lang}: {message.id} lacks plural forms"
            german = catalogs["de"].get(message.id)
            german_strings = german.string if german.pluralizable else (german.string,)
            assert _fields(" ".join(strings)) - {"n"} == _fields(" ".join(german_strings)) - {"n"}, (
                f"{lang}: {message.id} has other placeholders than German"
            )


def test_the_plural_forms_header_follows_cldr() -> None:
    for lang in PAGE_LANGUAGES:
        assert _catalog(lang).plural_forms == "nplurals=2; plural=(n != 1);"


@pytest.mark.parametrize("lang", PAGE_LANGUAGES)
def test_the_compiled_catalog_matches_its_source(lang: str) -> None:
    mo = po_path(lang).with_suffix(".mo")
    if not mo.exists():
        pytest.skip("not compiled: `make locale` (part of `make run` and `make test`) compiles the catalogs")
    with mo.open("rb") as f:
        compiled = read_mo(f)
    def entries(catalog) -> dict[str, tuple[str, ...]]:
        return {
            (m.id if isinstance(m.id, str) else m.id[0]): (
                (m.string,) if isinstance(m.string, str) else tuple(m.string)
            )
            for m in catalog if m.id
        }

    assert entries(compiled) == entries(_catalog(lang))


@pytest.mark.parametrize(("lang", "n", "expected"), [
    ("de", 0, "Niemand wartet"), ("de", 1, "1 Person wartet"), ("de", 2, "2 Personen warten"),
    ("en", 1, "1 person waiting"), ("en", 21, "21 people waiting"),
])
def test_plurals_are_chosen_by_the_language_rule(lang: str, n: int, expected: str) -> None:
    assert gettext(lang)("dept.waiting", n=n) == expected
    if n:
        assert ngettext(lang)("dept.waiting.one", "dept.waiting.other", n) == expected


def test_a_missing_message_falls_back_to_german_then_to_its_id() -> None:
    assert gettext("en")("no.such.message") == "no.such.message"
    assert TRANSLATIONS["de"].gettext("footer.home") == "Startseite"


@pytest.mark.parametrize(("header", "expected"), [
    ("en-GB,en;q=0.9,de;q=0.8", "en"),
    ("de-AT", "de"),
    ("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5", "en"),
    ("fr, de;q=0.1, en;q=0", "de"),  # q=0 means "not this one"
    ("tr, ar", None),
    ("", None),
    ("en;q=garbage, de", "de"),
    ("EN", "en"),  # tags are case-insensitive: our code comes back, not the browser's spelling
    ("EN-us, de;q=0.5", "en"),
])
def test_accept_language_negotiation(header: str, expected: str | None) -> None:
    assert negotiate_accept_language(header) == expected


async def test_pages_follow_accept_language_unless_the_citizen_chose(client) -> None:
    resp = await client.get("/", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert 'lang="en"' in await resp.text()
    assert "Accept-Language" in resp.headers["Vary"]
    resp = await client.get("/", headers={"Accept-Language": "tr"})
    assert 'lang="de"' in await resp.text()  # none of ours: German
    await client.get("/?lang=de")  # the citizen chose German: the cookie wins over the browser
    resp = await client.get("/privacy", headers={"Accept-Language": "en"})
    assert 'lang="de"' in await resp.text()


def test_templates_translate_through_the_jinja_i18n_extension() -> None:
    from jinja2 import Environment

    env = Environment(extensions=["jinja2.ext.i18n"], autoescape=True)
    template = env.from_string('{{ _("footer.home") }} {% trans count=3 %}x{% pluralize %}y{% endtrans %}')
    out = template.render(gettext=gettext("en"), ngettext=lambda s, p, n, **kw: p if n != 1 else s)
    assert out == "Home y"


def test_the_page_environment_has_the_i18n_extension(app) -> None:
    from server.http.pages import TEMPLATES

    assert "jinja2.ext.InternationalizationExtension" in app[TEMPLATES].extensions
