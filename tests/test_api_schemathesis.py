"""The API answers as its OpenAPI document says: schemathesis runs every check against the app
under gunicorn, as a guest, a customer and a performer (each with an API token), on a database
with orders of theirs in every state, offers and a conversation.

The runs are derandomized (tests/schemathesis.toml), so each one sends the same requests every
time; a failure fails the test with schemathesis' report, the request to reproduce it included.
"""
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import accounts
import web
from conftest import gunicorn
from db import Q

pytestmark = pytest.mark.server

CONFIG = Path(__file__).with_name("schemathesis.toml")


def api_token(db, user):
    token = accounts.API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.execute(Q["api_token_create"], {"user_id": user["id"], "token_hash": web.token_hash(token),
                                       "label": "schemathesis", "max_tokens": accounts.MAX_API_TOKENS})
    return token


@pytest.fixture
def marketplace(db, make_user, make_order):
    """A customer and two performers: an order of each state and mode, two offers on an order
    waiting for them, a conversation; the ids of it all, and an API token of each side."""
    customer, performer = make_user("customer"), make_user("performer", categories=["design"])
    rival = make_user("performer", categories=["texts"])
    orders = [make_order(customer, performer=None if status == "open" else performer, status=status,
                         mode=mode, rating=8 if status == "done" else None)
              for mode, states in (("take", ("open", "in_progress", "delivered", "disputed", "done", "cancelled")),
                                   ("offers", ("open", "in_progress")))
              for status in states]
    waiting = make_order(customer, mode="offers", title="Waiting for offers")
    offers = [db.execute(Q["offer_submit"], {"order_id": waiting["id"], "performer_id": who["id"], "price": 900,
                                             "days": 5, "message": "I can"}).fetchone()
              for who in (performer, rival)]
    talk = db.execute(Q["conversation_open"], {"order_id": waiting["id"], "performer_id": performer["id"],
                                               "sender_id": performer["id"]}).fetchone()
    for sender in (performer, customer):
        db.execute(Q["message_send"], {"conversation_id": talk["id"], "sender_id": sender["id"],
                                       "body": "A question about the order"})
    return {"tokens": {"guest": None, "customer": api_token(db, customer), "performer": api_token(db, performer)},
            "ids": {"order": [order["id"] for order in orders + [waiting]], "offer": [row["id"] for row in offers],
                    "performer": [performer["id"], rival["id"]]}}


def with_ids(ids):
    """tests/schemathesis.toml, and the ids of the data for the generated ids to be drawn from."""
    bindings = {"path.order_id": "order", "path.offer_id": "offer", "path.performer_id": "performer",
                "query.with": "performer", "body.with": "performer"}
    return (CONFIG.read_text() + "\n"
            + "".join(f"[dictionaries.{name}]\nvalues = {values}\n" for name, values in ids.items())
            + "[parameters]\n"
            + "".join(f'"{key}" = {{ dictionary = "{name}", probability = 0.7 }}\n' for key, name in bindings.items()))


def schemathesis(port, config, token):
    """Runs the schemathesis CLI on the served document: (exit code, report)."""
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
               f"http://127.0.0.1:{port}/api/v1/openapi.json", "--checks", "all", "--no-color",
               "--header", "Accept-Language: en"]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=config.parent)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_the_api_answers_as_its_openapi_document_says_to_a_guest_a_customer_and_a_performer(
        db_url, marketplace, tmp_path):
    """One run each, one after the other on the same app and data (the guest's reads first)."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(with_ids(marketplace["ids"]))
    failed = []
    with gunicorn(db_url) as server:
        for who, token in marketplace["tokens"].items():
            code, report = schemathesis(server.port, config, token)
            if code != 0:
                failed.append(f"======== as {who} ========\n{report}")
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)
