"""Hostile input on every route: whatever arrives, the answer is a page with a 2xx-4xx status,
never a 500 and never a traceback. Walks the route table, so new routes are covered too."""
import pytest

from conftest import Client
from test_security import STATE_CHANGING, fill_url, routes, world  # noqa: F401  (world is a fixture)

HOSTILE_VALUES = [
    "\x00", "%00", "' OR 1=1 --", "<script>alert(1)</script>", "-1", "0", "99999999999999999999999",
    "1e309", "NaN", "../../etc/passwd", "x" * 5000, "２０２６-01-01", "\u202e\u0000", "[]", "{}",
]
FIELD_NAMES = ["q", "after", "status", "category", "role", "staff", "blocked", "sort", "min_budget",
               "max_budget", "from", "to", "customer", "performer", "action", "target_type", "next", "lang"]
FORM_FIELDS = ["title", "description", "category", "budget", "deadline", "rating", "review", "reason",
               "name", "email", "password", "role", "phone", "messenger", "experience_years",
               "experience_text", "bio", "current_password", "new_password", "slug", "name_ru",
               "name_en", "next", "categories"]


def assert_no_crash(resp, what):
    assert resp.status_int < 500, (what, resp.status)
    assert "Traceback" not in resp.text and "psycopg" not in resp.text, what


@pytest.fixture
def clients(app, world, sign_in):
    """A guest and a signed-in client of each kind."""
    result = {"guest": Client(app, extra_environ={"REMOTE_ADDR": "198.51.100.1"})}
    for kind in ("customer", "performer", "staff"):
        result[kind] = sign_in(Client(app, extra_environ={"REMOTE_ADDR": "198.51.100.2"}), world[kind])
    return result


def test_hostile_query_strings_on_every_get_route_never_crash(clients, world):
    for _method, rule in routes(("GET",)):
        url = fill_url(rule, world["ids"])
        for who, client in clients.items():
            for value in HOSTILE_VALUES:
                params = [(name, value) for name in FIELD_NAMES]
                assert_no_crash(client.get(url, params=params, status="*"), (who, url, value))
            raw = b"&".join(name.encode() + b"=%FF%FE%00" for name in FIELD_NAMES)
            assert_no_crash(client.get(url + "?" + raw.decode("latin-1"), status="*"), (who, url, "bytes"))


def test_hostile_forms_on_every_post_route_never_crash(clients, world):
    for method, rule in routes(STATE_CHANGING):
        url = fill_url(rule, world["ids"])
        for who, client in clients.items():
            for value in ("\x00", "x" * 20000, "-5", "99999999999999999999", "<b>", "", "2026-02-30"):
                fields = {name: value for name in FORM_FIELDS}
                assert_no_crash(client.post_form(url, fields), (who, url, value))
            body = "&".join(f"{name}=%FF%00" for name in FORM_FIELDS) + "&csrf_token=" + client.csrf()
            resp = client.post(url, params=body.encode(), content_type="application/x-www-form-urlencoded",
                               status="*")
            assert_no_crash(resp, (who, url, "bytes"))
