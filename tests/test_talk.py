"""Conversations and files through HTTP (SPEC §10): who reads and writes which conversation, the
files' bytes and headers, the limits, staff reads during disputes, contacts, the header counts."""
import hashlib
import html
import io
import os
import re
import wsgiref.util
from types import SimpleNamespace

import pytest

import files
import web
from conftest import text_of
from db import Q
from test_app_core import CountingInput
from test_operations import empty_db_url  # noqa: F401  (a fixture)

PNG = bytes(range(256)) * 40 + b"\x89PNG\r\n\x1a\n\x00\xff"  # every byte value, and then some


def location(resp):
    return re.sub(r"^https?://[^/]+", "", resp.headers["Location"])


@pytest.fixture
def files_dir(app, tmp_path):
    """A real directory for the bytes of this test's files."""
    directory = tmp_path / "files"
    app.config["files_dir"] = str(directory)
    yield directory
    app.config["files_dir"] = str(files.default_dir())


def stored(directory):
    """Every file under FILES_DIR (the temporary area included)."""
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file()) \
        if directory.exists() else []


@pytest.fixture
def cast(make_user, make_client, sign_in):
    """The people of an order and some strangers, each with a signed-in browser."""
    people = {}
    for n, (key, role, staff) in enumerate([
            ("customer", "customer", False), ("performer", "performer", False),
            ("other_performer", "performer", False), ("other_customer", "customer", False),
            ("staff", "customer", True)]):
        user = make_user(role, staff=staff, name=key.replace("_", " ").title())
        people[key] = {"user": user, "browser": sign_in(make_client(f"198.51.100.{60 + n}"), user)}
    return people


def write(browser, order_id, body, status=303, with_id=None, upload=None):
    data = {"body": body}
    if with_id is not None:
        data["with"] = str(with_id)
    return browser.post_form(f"/orders/{order_id}/messages", data, upload_files=upload or [], status=status)


def file_ids(db, **where):
    column, value = next(iter(where.items()))
    return [row["id"] for row in db.execute(f"SELECT id FROM files WHERE {column} = %s ORDER BY position", (value,))]


# ---------------------------------------------------------------------------------------------
# Conversations

def test_a_performer_asks_about_an_open_order_and_the_customer_answers_with_unread_counts_in_the_header(
        db, cast, make_order, files_dir):
    customer, performer = cast["customer"], cast["performer"]
    order = make_order(customer["user"])
    oid, pid = order["id"], performer["user"]["id"]

    page = performer["browser"].get(f"/orders/{oid}")
    assert f'href="/orders/{oid}/messages"' in page.text  # "Write to the customer"
    assert performer["browser"].get(f"/orders/{oid}/messages").status_int == 200
    sent = write(performer["browser"], oid, "Is a vector logo fine?")
    assert location(sent) == f"/orders/{oid}/messages"
    assert "Is a vector logo fine?" in performer["browser"].get(f"/orders/{oid}/messages").text

    home = customer["browser"].get("/")
    assert re.search(r'href="/messages"[^>]*>Messages <span class="badge unread-count"[^>]*>1</span>', home.text)
    listing = customer["browser"].get(f"/orders/{oid}/messages")
    assert f"/orders/{oid}/messages?with={pid}" in listing.text and "1 unread" in listing.text
    inbox = customer["browser"].get("/messages")
    assert "Is a vector logo fine?" in inbox.text and "1 unread" in inbox.text
    thread = customer["browser"].get(f"/orders/{oid}/messages?with={pid}")
    assert "Is a vector logo fine?" in thread.text
    assert 'class="badge unread-count"' not in customer["browser"].get("/").text  # read now
    assert write(customer["browser"], oid, "Yes, SVG please", with_id=pid).status_int == 303
    assert db.execute("SELECT performer_unread, customer_unread, message_count FROM conversations").fetchone() == {
        "performer_unread": 1, "customer_unread": 0, "message_count": 2}
    assert "1 unread" in performer["browser"].get("/messages").text
    # The customer writes only with a performer chosen, and never to a performer who did not ask.
    assert write(customer["browser"], oid, "To whom?", status=400).status_int == 400
    other_id = cast["other_performer"]["user"]["id"]
    assert write(customer["browser"], oid, "Hi stranger", with_id=other_id, status=404).status_int == 404
    assert write(customer["browser"], oid, " ", with_id=pid, status=400).status_int == 400
    assert write(customer["browser"], oid, "x" * 5001, with_id=pid, status=400).status_int == 400
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 2


def test_kept_inbox_rows_follow_the_viewer_the_conversation_and_the_language(db, cast, make_order):
    """The inbox's rows are rendered once and kept (web.kept): the two sides of one conversation
    each see theirs, a new message its row, Russian its words; the excerpt is the last message's
    first 140 characters, cut at a word, as before the query read only 200 of them."""
    customer, performer = cast["customer"], cast["performer"]
    oid, pid = make_order(customer["user"])["id"], performer["user"]["id"]
    question = "Is a vector logo fine? " + "Tell me about the colours and the sizes you need. " * 8
    write(performer["browser"], oid, question)
    customer["browser"].get(f"/orders/{oid}/messages?with={pid}")  # read: no unread count on either side

    def row(person):
        return text_of(SimpleNamespace(text=person["browser"].get("/messages").text.split('class="conversation-list">')[1]))

    excerpt = question[:137].rsplit(" ", 1)[0] + "..."
    assert row(customer).startswith(f"A test order with Performer · just now {excerpt}")
    assert row(performer).startswith(f"A test order with Customer · just now You: {excerpt}")
    write(customer["browser"], oid, "Yes, SVG please", with_id=pid)
    assert "with Performer · just now You: Yes, SVG please" in row(customer)
    assert "1 unread with Customer · just now Yes, SVG please" in row(performer)
    customer["browser"].set_cookie("lang", "ru")
    assert "с Performer · только что Вы: Yes, SVG please" in row(customer)


def test_the_inbox_goes_on_to_its_next_page_through_its_own_link(db, cast, make_order):
    """A page holds 30 conversations; the link to the next one carries the last one's moment, whose
    "+00:00" a browser sends as it is written: the link must say it as %2B, or "+" reads as a space."""
    customer, performer = cast["customer"], cast["performer"]
    titles = []
    for n in range(31):
        order = make_order(customer["user"], title=f"Inbox order {n:02}")
        talk = db.execute(Q["conversation_open"], {"order_id": order["id"], "performer_id": performer["user"]["id"],
                                                   "sender_id": performer["user"]["id"]}).fetchone()
        db.execute(Q["message_send"], {"conversation_id": talk["id"], "sender_id": performer["user"]["id"],
                                       "body": f"Question {n:02}"})
        titles.append(order["title"])
    first = customer["browser"].get("/messages")
    shown = re.findall(r'class="card-title" href="[^"]+">([^<]+)</a>', first.text)
    assert shown == titles[::-1][:30]
    next_url = html.unescape(re.search(r'<a class="button secondary" href="([^"]+)">Next page', first.text).group(1))
    assert "+" not in next_url
    second = customer["browser"].get(next_url)
    assert re.findall(r'class="card-title" href="[^"]+">([^<]+)</a>', second.text) == ["Inbox order 00"]
    assert "Next page" not in second.text and 'href="/messages">← First page' in second.text


def test_after_the_take_only_the_assigned_performers_conversation_goes_on(db, cast, make_order, make_user, sign_in,
                                                                            make_client, files_dir):
    customer, performer, other = cast["customer"], cast["performer"], cast["other_performer"]
    order = make_order(customer["user"])
    oid = order["id"]
    write(performer["browser"], oid, "Me please")
    write(other["browser"], oid, "Or me")
    assert performer["browser"].post_form(f"/orders/{oid}/take").status_int == 303

    assert write(performer["browser"], oid, "Starting").status_int == 303
    assert write(customer["browser"], oid, "Great", with_id=performer["user"]["id"]).status_int == 303
    closed = write(other["browser"], oid, "Still free?", status=409)
    assert "another performer" in text_of(closed)
    assert write(customer["browser"], oid, "Sorry", with_id=other["user"]["id"], status=409).status_int == 409
    assert "this conversation is closed" in other["browser"].get(f"/orders/{oid}/messages").text
    latecomer = sign_in(make_client("198.51.100.90"), make_user("performer"))
    assert latecomer.get(f"/orders/{oid}/messages", status=403).status_int == 403
    assert write(latecomer, oid, "Hello?", status=403).status_int == 403
    counts = db.execute("SELECT performer_id, message_count FROM conversations ORDER BY id").fetchall()
    assert [row["message_count"] for row in counts] == [3, 1]


def test_a_customer_writes_first_to_the_assigned_performer_or_one_who_sent_an_offer(db, cast, make_order, files_dir):
    customer, performer, other = cast["customer"], cast["performer"], cast["other_performer"]
    offers_order = make_order(customer["user"], mode="offers")
    other["browser"].post_form(f"/orders/{offers_order['id']}/offers", {"price": "500", "days": "3", "message": "Me"})
    page = customer["browser"].get(f"/orders/{offers_order['id']}")
    assert f"/orders/{offers_order['id']}/messages?with={other['user']['id']}" in page.text
    assert write(customer["browser"], offers_order["id"], "When could you start?",
                 with_id=other["user"]["id"]).status_int == 303
    assert write(customer["browser"], offers_order["id"], "And you?",
                 with_id=performer["user"]["id"], status=404).status_int == 404

    taken = make_order(customer["user"], performer=performer["user"], status="in_progress")
    assert write(customer["browser"], taken["id"], "Here is the brief", with_id=performer["user"]["id"]).status_int == 303
    assert "Here is the brief" in performer["browser"].get(f"/orders/{taken['id']}/messages").text


def test_strangers_get_403_or_404_for_every_conversation_message_and_file(db, cast, make_order, make_client,
                                                                         files_dir):
    customer, performer = cast["customer"], cast["performer"]
    order = make_order(customer["user"])
    oid, pid = order["id"], performer["user"]["id"]
    write(performer["browser"], oid, "Private question", upload=[("files", "brief.pdf", b"%PDF-1.4 secret", "application/pdf")])
    performer["browser"].post_form(f"/orders/{oid}/take")
    performer["browser"].post_form(f"/orders/{oid}/deliver", {"message": "Done"},
                                   upload_files=[("files", "work.zip", b"PK secret work", "application/zip")])
    message_file = db.execute("SELECT id FROM files WHERE message_id IS NOT NULL").fetchone()["id"]
    delivery_file = db.execute("SELECT id FROM files WHERE delivery_id IS NOT NULL").fetchone()["id"]
    # The two people read everything.
    assert customer["browser"].get(f"/files/{message_file}").body == b"%PDF-1.4 secret"
    assert customer["browser"].get(f"/files/{delivery_file}").body == b"PK secret work"
    assert performer["browser"].get(f"/files/{message_file}").body == b"%PDF-1.4 secret"

    strangers = {name: cast[name]["browser"] for name in ("other_performer", "other_customer", "staff")}
    for name, browser in strangers.items():
        for url in (f"/orders/{oid}/messages", f"/orders/{oid}/messages?with={pid}"):
            resp = browser.get(url, status="*")
            assert resp.status_int in (403, 404), (name, url, resp.status)
            assert "Private question" not in resp.text
        resp = write(browser, oid, "Let me in", with_id=pid, status="*")
        assert resp.status_int in (403, 404), (name, resp.status)
        for file_id in (message_file, delivery_file if name != "staff" else message_file):
            resp = browser.get(f"/files/{file_id}", status="*")
            assert resp.status_int == 404 and b"secret" not in resp.body, (name, file_id)
    guest = make_client("198.51.100.99")
    for url in (f"/orders/{oid}/messages", f"/files/{message_file}", f"/files/{delivery_file}", "/messages"):
        assert location(guest.get(url, status=303)).startswith("/login?next=")
    assert location(write(guest, oid, "Anonymous", with_id=pid)).startswith("/login?next=")
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 1
    assert db.execute("SELECT count(*) AS n FROM admin_log").fetchone()["n"] == 0


def test_staff_read_a_conversation_only_while_the_order_is_disputed_and_each_read_is_logged(
        db, cast, make_order, files_dir):
    customer, performer, staff = cast["customer"], cast["performer"], cast["staff"]
    order = make_order(customer["user"], performer=performer["user"], status="in_progress")
    oid = order["id"]
    write(performer["browser"], oid, "Where is the brief?", upload=[("files", "q.txt", b"question", "text/plain")])
    file_id = db.execute("SELECT id FROM files").fetchone()["id"]
    assert staff["browser"].get(f"/orders/{oid}/messages", status=403).status_int == 403
    assert staff["browser"].get(f"/files/{file_id}", status=404).status_int == 404
    assert customer["browser"].post_form(f"/orders/{oid}/dispute", {"reason": "Silence"}).status_int == 303

    assert "Read the conversation" in staff["browser"].get(f"/orders/{oid}").text
    page = staff["browser"].get(f"/orders/{oid}/messages")
    assert "Where is the brief?" in page.text and "audit log" in page.text
    assert 'name="body"' not in page.text  # staff read, they do not write
    assert staff["browser"].get(f"/files/{file_id}").body == b"question"
    assert write(staff["browser"], oid, "Staff here", with_id=performer["user"]["id"], status=403).status_int == 403
    log = db.execute("SELECT staff_id, action, target_type, target_id, after FROM admin_log ORDER BY id").fetchall()
    conversation_id = db.execute("SELECT id FROM conversations").fetchone()["id"]
    assert log == [
        {"staff_id": staff["user"]["id"], "action": "read_conversation", "target_type": "order", "target_id": oid,
         "after": {"conversation_id": conversation_id, "performer_id": performer["user"]["id"]}},
        {"staff_id": staff["user"]["id"], "action": "read_conversation_file", "target_type": "order", "target_id": oid,
         "after": {"conversation_id": conversation_id, "performer_id": performer["user"]["id"], "file_id": file_id}}]
    reads = staff["browser"].get("/admin/log?action=read_conversation").text
    # each label stands once in the filter's options, and again for each row of the filtered log
    assert reads.count("Conversation read in a dispute") == 2
    assert reads.count("Conversation file read in a dispute") == 1
    # Staff reading leaves the people's unread counts alone.
    assert db.execute("SELECT customer_unread FROM conversations").fetchone()["customer_unread"] == 1


# ---------------------------------------------------------------------------------------------
# Files

def test_a_files_bytes_come_back_exactly_as_a_download_that_is_never_sniffed(db, cast, make_order, files_dir):
    customer, performer = cast["customer"], cast["performer"]
    order = make_order(customer["user"])
    payloads = [("files", "логотип «финал».png", PNG, "image/png"),
                ("files", "page.html", b"<script>alert(1)</script>", "text/html"),
                ("files", "../../etc/passwd", b"", "weird type")]
    write(performer["browser"], order["id"], "Three files", upload=payloads)
    ids = file_ids(db, message_id=db.execute("SELECT id FROM messages").fetchone()["id"])
    assert len(ids) == 3

    png = customer["browser"].get(f"/files/{ids[0]}")
    assert png.body == PNG
    assert png.headers["Content-Type"] == "image/png"
    assert png.headers["Content-Length"] == str(len(PNG))
    assert png.headers["X-Content-Type-Options"] == "nosniff"
    disposition = png.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''%D0%BB%D0%BE%D0%B3%D0%BE%D1%82%D0%B8%D0%BF%20%C2%AB%D1%84%D0%B8%D0%BD%D0%B0%D0%BB%C2%BB.png" in disposition
    html = customer["browser"].get(f"/files/{ids[1]}")
    assert html.body == b"<script>alert(1)</script>"
    assert html.headers["Content-Type"] == "application/octet-stream"
    assert html.headers["X-Content-Type-Options"] == "nosniff"
    assert html.headers["Content-Disposition"].startswith('attachment; filename="page.html"')
    assert "sandbox" in html.headers["Content-Security-Policy"]
    empty = customer["browser"].get(f"/files/{ids[2]}")
    assert empty.body == b"" and 'filename="passwd"' in empty.headers["Content-Disposition"]

    rows = db.execute("SELECT sha256, size, name, content_type FROM files ORDER BY position").fetchall()
    assert rows[0] == {"sha256": hashlib.sha256(PNG).hexdigest(), "size": len(PNG), "name": "логотип «финал».png",
                       "content_type": "image/png"}
    assert (rows[1]["content_type"], rows[2]["content_type"], rows[2]["name"]) == ("text/html", "application/octet-stream", "passwd")
    blob = files_dir / rows[0]["sha256"][:2] / rows[0]["sha256"]
    assert blob.read_bytes() == PNG
    assert stored(files_dir) == sorted(f"{row['sha256'][:2]}/{row['sha256']}" for row in rows)  # no temporary left
    assert customer["browser"].get("/files/999999", status=404).status_int == 404


def test_the_same_bytes_twice_are_stored_once(db, cast, make_order, files_dir):
    order = make_order(cast["customer"]["user"])
    for n in range(2):
        write(cast["performer"]["browser"], order["id"], f"Again {n}", upload=[("files", f"v{n}.png", PNG, "image/png")])
    assert db.execute("SELECT count(*) AS n FROM files").fetchone()["n"] == 2
    assert len(stored(files_dir)) == 1


def test_six_files_or_one_over_10_mb_are_refused_and_nothing_is_stored(db, cast, make_order, files_dir):
    customer, performer = cast["customer"], cast["performer"]
    order = make_order(customer["user"])
    six = [("files", f"f{n}.txt", b"x", "text/plain") for n in range(6)]
    resp = write(performer["browser"], order["id"], "Six files", upload=six, status=400)
    assert "at most 5 files" in text_of(resp) and "Six files" in resp.text  # the form is shown again, kept
    big = [("files", "small.txt", b"ok", "text/plain"),
           ("files", "huge.bin", b"\0" * (files.MAX_FILE_BYTES + 1), "application/octet-stream")]
    resp = write(performer["browser"], order["id"], "A huge file", upload=big, status=413)
    assert "at most 10 MB: huge.bin" in text_of(resp)
    assert db.execute("SELECT count(*) AS n FROM messages").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM files").fetchone()["n"] == 0
    assert db.execute("SELECT count(*) AS n FROM conversations").fetchone()["n"] == 0
    assert stored(files_dir) == []

    # The same limits on a delivery.
    taken = make_order(customer["user"], performer=performer["user"], status="in_progress")
    resp = performer["browser"].post_form(f"/orders/{taken['id']}/deliver", {"message": "All six"}, upload_files=six)
    assert resp.status_int == 400 and "at most 5 files" in text_of(resp)
    resp = performer["browser"].post_form(f"/orders/{taken['id']}/deliver", {"message": "Huge"}, upload_files=big)
    assert resp.status_int == 413
    assert db.execute("SELECT status FROM orders WHERE id = %s", (taken["id"],)).fetchone()["status"] == "in_progress"
    assert db.execute("SELECT count(*) AS n FROM order_deliveries").fetchone()["n"] == 0
    assert stored(files_dir) == []
    # Exactly at the limits: accepted.
    five = [("files", f"f{n}.bin", bytes([n]) * (files.MAX_FILE_BYTES if n == 0 else 10), "application/octet-stream")
            for n in range(5)]
    assert performer["browser"].post_form(f"/orders/{taken['id']}/deliver", {"message": "Five"},
                                          upload_files=five).status_int == 303
    assert len(file_ids(db, delivery_id=db.execute("SELECT id FROM order_deliveries").fetchone()["id"])) == 5


def claimed_length_request(app, path, length, cookie=""):
    """A POST that claims a Content-Length of `length` (sending almost nothing): the limit must
    refuse it before reading. Returns (status, bytes read)."""
    environ = {}
    wsgiref.util.setup_testing_defaults(environ)
    wsgi_input = CountingInput(b"body=x")
    environ.update({"REQUEST_METHOD": "POST", "PATH_INFO": path, "wsgi.input": wsgi_input,
                    "CONTENT_LENGTH": str(length), "CONTENT_TYPE": "multipart/form-data; boundary=x",
                    "HTTP_ACCEPT_LANGUAGE": "en", "HTTP_COOKIE": cookie})
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"] = int(status.split()[0])
    result = app(environ, start_response)
    b"".join(result)
    getattr(result, "close", lambda: None)()
    return started["status"], wsgi_input.bytes_read


def test_the_body_limit_is_60_mb_on_the_routes_that_take_files_and_1_mb_elsewhere(app, db, cast, make_order, files_dir):
    order = make_order(cast["customer"]["user"], performer=cast["performer"]["user"], status="in_progress")
    oid = order["id"]
    over_files = web.FILES_BODY_BYTES + 1
    for path in (f"/orders/{oid}/messages", f"/orders/{oid}/deliver", f"/orders/{oid}/complete"):
        assert claimed_length_request(app, path, over_files) == (413, 0), path
        status, _read = claimed_length_request(app, path, 2 * 1024 * 1024)
        assert status != 413, path  # 2 MB is fine here (the rest of the request decides)
    for path in (f"/orders/{oid}/cancel", "/signup", f"/orders/{oid}/dispute", "/notifications/read"):
        assert claimed_length_request(app, path, 2 * 1024 * 1024) == (413, 0), path
    # A real 2 MB file goes through.
    two_mb = os.urandom(2 * 1024 * 1024)
    write(cast["performer"]["browser"], oid, "Two megabytes", upload=[("files", "big.bin", two_mb, "application/octet-stream")])
    file_id = db.execute("SELECT id FROM files").fetchone()["id"]
    assert cast["customer"]["browser"].get(f"/files/{file_id}").body == two_mb


def test_delivered_files_are_shown_on_the_order_page_to_its_people(db, cast, make_order, files_dir):
    customer, performer = cast["customer"], cast["performer"]
    order = make_order(customer["user"], performer=performer["user"], status="in_progress")
    resp = performer["browser"].post_form(f"/orders/{order['id']}/deliver", {"message": "The logo, two formats"},
                                          upload_files=[("files", "logo.svg", b"<svg/>", "image/svg+xml"),
                                                        ("files", "logo.png", PNG, "image/png")])
    assert resp.status_int == 303
    ids = file_ids(db, delivery_id=db.execute("SELECT id FROM order_deliveries").fetchone()["id"])
    page = customer["browser"].get(f"/orders/{order['id']}")
    assert all(f'href="/files/{file_id}"' in page.text for file_id in ids)
    svg = customer["browser"].get(f"/files/{ids[0]}")
    assert svg.body == b"<svg/>" and svg.headers["Content-Type"] == "application/octet-stream"
    assert f'href="/files/{ids[0]}"' not in cast["other_performer"]["browser"].get(f"/orders/{order['id']}").text


# ---------------------------------------------------------------------------------------------
# Contacts

def test_once_assigned_the_customer_and_the_performer_see_each_others_phone_and_messenger(
        db, cast, make_order, files_dir):
    customer, performer, other = cast["customer"], cast["performer"], cast["other_performer"]
    db.execute("UPDATE users SET phone = '+7 900 111-22-33', messenger = '@anna_logo' WHERE id = %s",
               (customer["user"]["id"],))
    db.execute("UPDATE users SET phone = '+7 900 444-55-66', messenger = '@vera_draws' WHERE id = %s",
               (performer["user"]["id"],))
    order = make_order(customer["user"])
    url = f"/orders/{order['id']}"
    assert "@anna_logo" not in performer["browser"].get(url).text
    performer["browser"].post_form(f"{url}/take")
    assert "+7 900 111-22-33" in performer["browser"].get(url).text and "@anna_logo" in performer["browser"].get(url).text
    page = customer["browser"].get(url).text
    assert "+7 900 444-55-66" in page and "@vera_draws" in page
    for name in ("other_performer", "other_customer", "staff"):
        page = cast[name]["browser"].get(url).text
        assert "@anna_logo" not in page and "@vera_draws" not in page, name


# ---------------------------------------------------------------------------------------------
# Backup and restore keep the files

def test_restore_takes_only_the_bytes_of_blobs_from_the_archive_whatever_it_says(tmp_path):
    """A backup's archive is read as data: no path outside FILES_DIR, no link, no mode of its own,
    and no file under a name its bytes do not have (and the same on a Python without tarfile's
    extraction filters, 3.11.0-3.11.3)."""
    import hashlib
    import io
    import stat
    import tarfile

    import commands
    sha = hashlib.sha256(PNG).hexdigest()
    claimed = "0" * 64
    archive_path = tmp_path / "hostile.files.tar"
    with tarfile.open(archive_path, "w") as archive:
        def add(name, data=b"", **attributes):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            for key, value in attributes.items():
                setattr(member, key, value)
            archive.addfile(member, io.BytesIO(data))
        add(f"{sha[:2]}/{sha}", PNG, mode=0o6777)  # a blob, setuid and writable by all in the archive
        add("../escaped", b"outside")
        add(f"/{sha[:2]}/{sha[::-1]}", b"absolute")
        add(f"00/{claimed}", b"other bytes than the name says")
        add(f"11/{'1' * 64}", type=tarfile.SYMTYPE, linkname="/etc/passwd")
    directory = tmp_path / "files"

    assert commands.restore_files(archive_path, directory) == 1
    assert (directory / sha[:2] / sha).read_bytes() == PNG
    assert stat.S_IMODE((directory / sha[:2] / sha).stat().st_mode) & 0o6022 == 0
    assert not (directory / "00" / claimed).exists() and not (directory / "11").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["files", "hostile.files.tar"]


def test_backup_writes_the_files_beside_the_dump_and_restore_puts_them_back(
        db, db_url, cast, make_order, files_dir, empty_db_url, tmp_path, monkeypatch):
    import commands
    order = make_order(cast["customer"]["user"])
    write(cast["performer"]["browser"], order["id"], "With a file", upload=[("files", "a.png", PNG, "image/png")])
    sha = db.execute("SELECT sha256 FROM files").fetchone()["sha256"]
    (files_dir / "tmp").mkdir(exist_ok=True)
    (files_dir / "tmp" / "upload-half").write_bytes(b"half")  # an upload cut short is not backed up
    monkeypatch.setenv("FILES_DIR", str(files_dir))
    dump = tmp_path / "birzha.dump"
    assert commands.backup(db_url, str(dump)) == 0
    assert (tmp_path / "birzha.dump.files.tar").exists()

    elsewhere = tmp_path / "restored-files"
    monkeypatch.setenv("FILES_DIR", str(elsewhere))
    target = empty_db_url()
    assert commands.restore(target, str(dump)) == 0
    assert stored(elsewhere) == [f"{sha[:2]}/{sha}"]
    assert (elsewhere / sha[:2] / sha).read_bytes() == PNG
    import psycopg
    with psycopg.connect(target) as connection:
        assert connection.execute("SELECT sha256 FROM files").fetchone()[0] == sha
