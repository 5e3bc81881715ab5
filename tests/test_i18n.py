"""Every interface string goes through gettext and has a Russian translation."""
import ast
import re
from pathlib import Path

import app as birzha
import i18n
import web

ROOT = Path(birzha.__file__).parent


def python_msgids():
    """Literal first arguments of _() and ngettext() calls in the app's modules."""
    found = set()
    for path in ROOT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id == "_" and node.args and isinstance(node.args[0], ast.Constant):
                    found.add(node.args[0].value)
                if (node.func.id == "ngettext" and len(node.args) >= 2
                        and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                    found.add(node.args[0].value + "|" + node.args[1].value)
    # ERROR_TITLES are translated where they are shown
    found.update(web.ERROR_TITLES.values())
    return found


def template_msgids():
    found = set()
    for path in (ROOT / "views").glob("*.html"):
        for _lineno, func, message in web.templates.extract_translations(path.read_text(encoding="utf-8")):
            if func in ("_", "gettext"):
                # with keyword arguments the message comes as a tuple (text, None, ...)
                found.add(message[0] if isinstance(message, tuple) else message)
            elif func == "ngettext":
                found.add("|".join(message[:2]))
            elif func == "pgettext":
                found.add(message[0] + "\x04" + message[1])
    return found


def translated_keys(catalog):
    """The translated messages of a Babel catalog, keyed as the extractors above key them."""
    keys = set()
    for message in catalog:
        if not message.id or not all(message.string if isinstance(message.string, tuple) else [message.string]):
            continue
        key = "|".join(message.id) if message.pluralizable else message.id
        keys.add(message.context + "\x04" + key if message.context else key)
    return keys


def test_every_interface_string_has_a_russian_translation():
    missing = sorted((python_msgids() | template_msgids()) - translated_keys(i18n.read_catalog("ru")))
    assert missing == [], "add these to locale/ru/*.po:\n" + "\n".join(missing)


def test_the_po_files_are_standard_gettext_with_russian_plural_forms():
    """Babel reads them as gettext tools do; plurals are msgid_plural with three msgstr[n]."""
    catalog = i18n.read_catalog("ru")
    assert catalog.num_plurals == 3
    plurals = [message for message in catalog if message.pluralizable]
    assert plurals and all(len(message.string) == 3 and all(message.string) for message in plurals)
    assert not any("|" in message.id for message in catalog if message.id and not message.pluralizable)
    russian = i18n.TRANSLATIONS["ru"]
    forms = {n: russian.ngettext("%(num)s rating", "%(num)s ratings", n) % {"num": n}
             for n in (1, 2, 5, 11, 21, 22, 25, 111, 104)}
    assert forms == {1: "1 оценка", 2: "2 оценки", 5: "5 оценок", 11: "11 оценок", 21: "21 оценка",
                     22: "22 оценки", 25: "25 оценок", 111: "111 оценок", 104: "104 оценки"}


def test_templates_have_no_untranslated_visible_text():
    """Text between tags in templates must come from _() (numbers and punctuation aside)."""
    offenders = []
    for path in (ROOT / "views").glob("*.html"):
        source = path.read_text(encoding="utf-8")
        stripped = re.sub(r"{#.*?#}|{%.*?%}|{{.*?}}", " ", source, flags=re.S)
        stripped = re.sub(r"<(script|style)\b.*?</\1>", " ", stripped, flags=re.S)
        stripped = re.sub(r"<[^>]*>", " ", stripped)
        for word in re.findall(r"[A-Za-zА-Яа-яЁё]{2,}", stripped):
            offenders.append(f"{path.name}: {word}")
    assert offenders == []


def test_language_follows_accept_language_and_the_switch(client):
    assert 'lang="en"' in client.get("/").text
    ru = client.get("/", headers={"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.8"})
    assert 'lang="ru"' in ru.text and "Заказы" in ru.text
    client.get("/lang/ru?next=/orders", status=303)
    page = client.get("/orders")
    assert 'lang="ru"' in page.text and "Открытые заказы" in page.text
    assert client.get("/lang/xx", status=404)
    assert client.get("/lang/en?next=//evil.example/x", status=303).headers["Location"].endswith("/")
    # the switch marks the page's language and leads to the other one on the same page, query and all
    page = client.get("/orders?category=design&sort=budget").text
    switch = re.search(r'<span class="lang-switch">(.*?)</span>', page, flags=re.S).group(1)
    assert re.findall(r"<strong>(\w+)</strong>", switch) == ["EN"]
    links = re.findall(r'<a href="([^"]+)" hreflang="(\w+)">(\w+)</a>', switch)
    assert links == [("/lang/ru?next=/orders%3Fcategory%3Ddesign%26sort%3Dbudget", "ru", "RU")], switch
    back = client.get(links[0][0].replace("&amp;", "&"), status=303).headers["Location"]
    assert back.endswith("/orders?category=design&sort=budget")
    assert 'lang="ru"' in client.get(back).text


def test_constant_messages_are_translated_when_a_template_is_compiled():
    """Each language has its own compiled templates, with the constant messages in them as text
    (anywhere an expression goes); only a message with values is translated when shown."""
    source = ('{{ _("Orders") }}|{{ "x"|replace("x", gettext("Performers")) }}|{{ pgettext("counter", "staff") }}'
              '|<a title="{{ _("Orders") }}">|{{ _("%(num)s orders done", num=3) }}|{{ web._("Orders") }}')
    shown = {"ru": 'Заказы|Исполнители|сотрудники|<a title="Заказы">|%(num)s orders done|Заказы',
             "en": 'Orders|Performers|staff|<a title="Orders">|%(num)s orders done|Orders'}
    for lang, expected in shown.items():
        compiled = web.templates_in[lang]
        code = compiled.compile(source, raw=True)
        assert code.count("resolve('_')") == 1 and "gettext" not in code
        with web.language(lang):
            assert compiled.from_string(source).render(web=web) == expected.replace("%(num)s", "3")
    # The environment messages are extracted with keeps every call as written
    assert len(list(web.templates.extract_translations(source))) == 5
