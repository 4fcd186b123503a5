"""Message catalogs for the pages: German (the default) and English, in gettext ``.po`` files.

The catalogs are ``server/locale/<lang>/LC_MESSAGES/messages.po``: a translator opens them in any PO
editor; the Makefile compiles them to ``.mo`` at install (``pybabel compile``). Messages are keyed by a
stable id (the msgid), not by their German text, so that rewording German never orphans a translation.
Ids starting with ``js.`` are what the browser scripts need; the pages emit them (without the prefix)
in a JSON block, so the scripts stay language-neutral. Plurals are gettext plural entries (msgid
``<id>.one``, msgid_plural ``<id>.other``) chosen by the language's CLDR plural rule (Babel writes the
Plural-Forms header from CLDR); the scripts get one id per CLDR category and pick with
``Intl.PluralRules``. Placeholders use ``str.format`` syntax (``{name}``) in Python and the scripts.
Templates use ``jinja2.ext.i18n``: ``_()`` there resolves to :func:`gettext` of the page's language.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from gettext import c2py
from pathlib import Path
from typing import Any

from babel import Locale, negotiate_locale, support
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

DEFAULT_LANGUAGE = "de"
PAGE_LANGUAGES = ("de", "en")
"""Languages the pages are written in."""

LANGUAGE_NAMES = {
    "de": "Deutsch",
    "en": "English",
    "tr": "Türkçe",
    "ar": "العربية",
    "ru": "Русский",
    "uk": "Українська",
    "pl": "Polski",
    "fr": "Français",
    "es": "Español",
    "it": "Italiano",
    "fa": "فارسی",
}
"""Languages a citizen may ask to be served in, each named in itself (server.queue.core.LANGUAGES)."""

RTL_LANGUAGES = frozenset({"ar", "fa"})

Translate = Callable[..., str]

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def _read_po(lang: str) -> Catalog:
    with po_path(lang).open("rb") as f:
        return read_po(f, locale=lang, domain=DOMAIN)


def _translations(lang: str, catalog: Catalog) -> support.Translations:
    """The compiled catalog (the Makefile runs ``pybabel compile``), or, when the ``.mo`` is missing or
    older than the ``.po`` (a checkout used without ``make``), the ``.po`` compiled in memory."""
    po = po_path(lang)
    mo = po.with_suffix(".mo")
    if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
        with mo.open("rb") as f:
            return support.Translations(f, domain=DOMAIN)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return support.Translations(buffer, domain=DOMAIN)


def _flatten(lang: str, catalog: Catalog) -> dict[str, str]:
    """Every message by id, for the scripts and the tests: a plural entry (``<id>.one`` /
    ``<id>.other`` in the catalog) as one id per CLDR plural category of the language, e.g.
    ``<id>.one`` and ``<id>.other`` for German and English, ``<id>.few`` and ``<id>.many`` as well for
    Polish. Which msgstr serves a category is read off the catalog's own Plural-Forms formula."""
    locale = Locale.parse(lang)
    form_of = c2py(catalog.plural_expr)
    out: dict[str, str] = {}
    for message in catalog:
        if not message.id:
            continue
        if isinstance(message.id, str):
            out[message.id] = str(message.string)
        else:
            base = message.id[0].rsplit(".", 1)[0]
            forms = tuple(message.string or ())
            for n in range(200):
                out.setdefault(f"{base}.{locale.plural_form(n)}", forms[form_of(n)])
    return out


def _load() -> tuple[dict[str, support.Translations], dict[str, dict[str, str]]]:
    translations, catalogs = {}, {}
    for lang in PAGE_LANGUAGES:
        catalog = _read_po(lang)
        translations[lang] = _translations(lang, catalog)
        catalogs[lang] = _flatten(lang, catalog)
    return translations, catalogs


TRANSLATIONS, CATALOGS = _load()
DE = CATALOGS["de"]
EN = CATALOGS["en"]
_PLURAL_IDS = frozenset(k[:-4] for k in DE if k.endswith(".one"))


def negotiate(requested: str | None) -> str | None:
    """The page language for a requested code, or None when it is not one we have."""
    if not requested:
        return None
    code = requested.strip().lower()[:2]
    return code if code in CATALOGS else None


def negotiate_accept_language(header: str | None) -> str | None:
    """The best of our languages for an ``Accept-Language`` header (quality values honoured), or None."""
    if not header:
        return None
    preferred: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and quality > 0:
            preferred.append((-quality, index, tag.strip().replace("_", "-")))
    tags = [tag for _, _, tag in sorted(preferred)]
    # Babel matches case-insensitively but returns the browser's spelling ("EN"): normalise it to our code.
    return negotiate(negotiate_locale(tags, list(PAGE_LANGUAGES), sep="-"))


def gettext(lang: str) -> Translate:
    """A translate function ``_(message_id, n=None, **placeholders)`` for one language.

    With ``n``, the plural entry ``<message_id>.one``/``.other`` is chosen by the language's plural rule
    (a separate ``<message_id>.zero`` message, where there is one, is used for 0), and ``n`` is available
    as a placeholder. A missing message falls back to German, then to the id.
    """
    translations = TRANSLATIONS.get(lang, TRANSLATIONS[DEFAULT_LANGUAGE])
    fallback = TRANSLATIONS[DEFAULT_LANGUAGE]

    def lookup(message_id: str) -> str:
        text = translations.gettext(message_id)
        if text == message_id:
            text = fallback.gettext(message_id)
        return text

    def translate(message_id: str, n: int | None = None, **placeholders: Any) -> str:
        if n is not None:
            placeholders["n"] = n
            zero = f"{message_id}.zero"
            if n == 0 and lookup(zero) != zero:
                text = lookup(zero)
            elif message_id in _PLURAL_IDS:
                text = translations.ngettext(f"{message_id}.one", f"{message_id}.other", n)
            else:
                text = lookup(message_id)
        else:
            text = lookup(message_id)
        return text.format(**placeholders) if placeholders else text

    return translate


def ngettext(lang: str) -> Callable[..., str]:
    """gettext's ``ngettext(singular_id, plural_id, n, **placeholders)`` for one language (for
    ``{% trans count=... %}`` blocks of jinja2.ext.i18n); ``n`` is a placeholder too."""
    translations = TRANSLATIONS.get(lang, TRANSLATIONS[DEFAULT_LANGUAGE])

    def translate(singular: str, plural: str, n: int, **placeholders: Any) -> str:
        return translations.ngettext(singular, plural, n).format(n=n, **placeholders)

    return translate


def script_messages(lang: str) -> dict[str, str]:
    """The messages the browser scripts need, without their ``js.`` prefix."""
    catalog = {**CATALOGS[DEFAULT_LANGUAGE], **CATALOGS.get(lang, {})}
    return {k[3:]: v for k, v in catalog.items() if k.startswith("js.")}


def estimate_text(translate: Translate, estimate: list[int] | tuple[int, int] | None) -> str | None:
    """An estimated-wait range in words, or None when there is no estimate (no clerk)."""
    if not estimate:
        return None
    low, high = estimate
    if high <= 1:
        return translate("range.soon")
    if low == high:
        return translate("range.same", n=low)
    if low == 0:
        return translate("range.upto", n=high)
    return translate("range.span", low=low, high=high)


_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def when_text(translate: Translate, moment: datetime, now: datetime) -> str:
    """When something happens, relative to ``now`` (both in the municipality's zone): "heute um 14:00",
    "morgen um 8:00", "Montag um 8:00" within a week, else "am 24.12. um 8:00". Mirror of ``whenText`` in
    web/static/js/common.js."""
    days = (moment.date() - now.date()).days
    clock = f"{moment.hour}:{moment.minute:02d}"
    if days <= 0:
        return translate("js.when.today", time=clock)
    if days == 1:
        return translate("js.when.tomorrow", time=clock)
    if days < 7:
        return translate("js.when.weekday", weekday=translate(f"js.weekday.{_WEEKDAYS[moment.weekday()]}"),
                         time=clock)
    date = translate("js.date_short", day=moment.day, month=moment.month)
    return translate("js.when.date", date=date, time=clock)


def opening_text(translate: Translate, next_opening: str | None, now: datetime) -> str:
    """What a closed department's card says about its next opening (``next_opening`` as on the wire)."""
    if not next_opening:
        return translate("js.opens_unknown")
    moment = datetime.fromisoformat(next_opening).astimezone(now.tzinfo)
    return translate("js.opens", when=when_text(translate, moment, now))
