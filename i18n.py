"""Translations: English is the source language; locale/<lang>/*.po hold the others.

The .po files are standard gettext catalogs (msgctxt, msgid_plural, msgstr[n]); Babel reads them
and the standard library's gettext answers from them. Imports nothing of ours.
"""
import gettext
import io
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent
LANGUAGES = ("ru", "en")
SOURCE_LANGUAGE = "en"


def read_catalog(lang, directory=ROOT / "locale"):
    """All the .po files of one language as one Babel catalog."""
    merged = Catalog(locale=lang)
    for path in sorted((directory / lang).glob("*.po")):
        with path.open("rb") as po:
            for message in read_po(po, locale=lang):
                if message.id:
                    merged[message.id] = message
    return merged


def load_translations(lang):
    """The gettext translations of one language (the source language translates to itself)."""
    if lang == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    compiled = io.BytesIO()
    write_mo(compiled, read_catalog(lang))
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


TRANSLATIONS = {lang: load_translations(lang) for lang in LANGUAGES}
