"""The JSON API under /api/v1/ (SPEC §6): the same rules as the HTML routes, answered in JSON.

Credentials: a personal token (`Authorization: Bearer bz_…`, made on the profile page) or the
browser session, which must also send the form's CSRF token in `X-CSRF-Token` on every POST.
Errors are application/problem+json (error_page in app.py). The transitions and their
404/403/409 decisions are the ones of orders.py; this module only reads JSON and writes JSON.
Every POST takes an `Idempotency-Key` header (`idempotent`): a retry gets the first answer again.
"""
import decimal
import functools
import hashlib
import json
import re
from functools import wraps

import jsonschema
from bottle import request, response
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

import accounts
import orders
from web import (Form, Routes, _, check_csrf, current_user, db_all, db_one, db_run, error_response,
                 not_found, set_current_user, token_hash)

routes = Routes()

CATALOGUE_PAGE = 20


# ---------------------------------------------------------------------------------------------
# Credentials

def bearer_user(token):
    """The user of a personal token, or a 401 when it is unknown or blocked.

    The lookup only reads; the token is marked as used at most once every 5 minutes, by a write
    that skips a row another request holds, so parallel calls with one token never queue."""
    user = None
    if token.startswith(accounts.API_TOKEN_PREFIX) and len(token) < 100:
        user = db_one("api_token_user", token_hash=token_hash(token))
    if user is None:
        raise unauthorized(_("This API token is not valid. Create a new one on your profile page."),
                           'Bearer error="invalid_token"')
    token_id, due = user.pop("token_id"), user.pop("touch_due")
    if due:
        db_run("api_token_touch", token_id=token_id)
    return user


def unauthorized(message, challenge="Bearer"):
    return error_response(401, message, WWW_Authenticate=challenge)


def authenticate(required):
    """Signs the request in by Bearer token or session (CSRF header on POST); 401 when required."""
    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            scheme, _sep, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                # From here on current_user() is the token's user, for orders.py's checks too.
                set_current_user(bearer_user(token.strip()))
            elif current_user() is not None and request.method == "POST":
                check_csrf()  # a session cookie rides along on any cross-site request
            if required and current_user() is None:
                raise unauthorized(_("Sign in or send an API token: Authorization: Bearer <token>."))
            return view(*args, **kwargs)
        return wrapper
    return decorate


# ---------------------------------------------------------------------------------------------
# Idempotency-Key: a retried POST gives the first answer again

IDEMPOTENCY_KEY = re.compile(r"[ -~]{1,255}")  # printable ASCII (the database checks it too)


def idempotent(view):
    """A POST with an `Idempotency-Key` header runs once per key and user for 24 hours: a retry
    with the same method, path and body gets the first answer again (`Idempotent-Replayed: true`),
    one with another request a 422. Goes under @authenticate(required=True).

    The key is claimed (api_idempotency_claim) before the view writes anything, and its answer is
    stored in the same transaction as the write: a request that fails keeps nothing and leaves the
    key free, and one that commits has its answer, so a retry after a lost connection finds it. A
    request with the key while the first is still running waits for it on the claim's row lock.
    Only a success (2xx) is kept: a refused request wrote nothing, and may be sent again."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        key, user = request.headers.get("Idempotency-Key"), current_user()
        if key is None or user is None:
            return view(*args, **kwargs)
        key = key.strip()
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise error_response(400, _("The Idempotency-Key header must be 1 to 255 printable ASCII characters."))
        this = {"user_id": user["id"], "key": key}
        sent = {"request": f"{request.method} {request.path}",
                "body_sha256": hashlib.sha256(request.body.read()).digest()}
        if db_one("api_idempotency_claim", **this, **sent) is None:
            return replay(db_one("api_idempotency_read", **this), sent)
        result = view(*args, **kwargs)
        if isinstance(result, str) and 200 <= response.status_code < 300:
            db_run("api_idempotency_answer", **this, status=response.status_code, body=result,
                   location=response.headers.get("Location"))
        else:
            db_run("api_idempotency_release", **this)
        return result
    wrapper.idempotent = True
    return wrapper


def replay(kept, sent):
    """The answer kept for the key, if it was given to the same request; else a 422."""
    if kept is None:  # not expected: the claim left the row locked for this transaction
        raise error_response(409, _("This change collided with another one at the same moment. "
                                    "Reload the page and try again."))
    if (kept["request"], kept["body_sha256"]) != (sent["request"], sent["body_sha256"]):
        raise error_response(422, _("This Idempotency-Key was already used for another request (another path or "
                                    "body). Send a new key with a new request."))
    if kept["response_location"]:
        response.set_header("Location", kept["response_location"])
    response.set_header("Idempotent-Replayed", "true")
    response.status = kept["response_status"]
    response.content_type = "application/json"
    return kept["response_body"]


# ---------------------------------------------------------------------------------------------
# What comes in, checked against the OpenAPI document below (OPENAPI): the server refuses
# exactly what the document forbids, then the readers of orders.py and messages.py read the rest.

class JsonFields(dict):
    """The text of a JSON object's fields, read by Form as it reads request.forms."""

    def getunicode(self, name):
        return self.get(name)


DOCUMENT_URI = "urn:birzha:api"
# ECMA 262 (JSON Schema's regular expressions) ends the text at `$`; Python's re also before a
# final newline: the document's patterns are read as the document's other readers read them.
ECMA_END = re.compile(r"\$$")


def ecma_pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not re.search(ECMA_END.sub(r"\\Z", pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


DocumentValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": ecma_pattern})


@functools.cache
def document_registry():
    """The document as a schema registry, made at the first request (OPENAPI is complete by then)."""
    return Registry().with_resource(DOCUMENT_URI, Resource.from_contents(OPENAPI, DRAFT202012))


# A validator per schema of the document, made at its first use: making one (and the registry)
# for every request cost more than the rest of an API write's Python.
_checkers = {}


def document_errors(instance, key, schema):
    """What `schema` of the document, named `key` (the same schema every time), refuses in the
    JSON object `instance`: {field: (keyword, message)}."""
    found = {}
    checker = _checkers.get(key)
    if checker is None:
        if set(schema) == {"$ref"}:  # the schema it points to: no lookup of the reference per request
            target = document_registry().resolver().lookup(schema["$ref"]).contents
            if "$ref" not in json.dumps(target):  # its own references are relative to the document
                schema = target
        checker = _checkers[key] = DocumentValidator(schema, registry=document_registry(),
                                                     format_checker=DocumentValidator.FORMAT_CHECKER)
    for error in checker.iter_errors(instance):
        if error.path:
            found.setdefault(error.path[0], (error.validator, error_message(error)))
        elif error.validator == "required":
            for name in error.validator_value:
                if name not in instance:
                    found.setdefault(name, ("required", _("This field is required.")))
        elif error.validator == "additionalProperties":
            for name in set(instance) - set(error.schema["properties"]):
                found.setdefault(name, ("additionalProperties", _("There is no such field.")))
    return found


def error_message(error):
    """A field's message for what its schema refused (the readers say most of them first)."""
    kind, limit = error.validator, error.validator_value
    if kind == "type":
        return _("Enter a whole number.") if "integer" in limit else _("Enter the value as a JSON string.")
    if kind == "minimum":
        return _("The smallest allowed value is %(n)s.", n=limit)
    if kind == "maximum":
        return _("The largest allowed value is %(n)s.", n=limit)
    if kind == "maxLength":
        return _("At most %(n)s characters, please.", n=limit)
    if kind == "enum":
        return _("Choose one of the options.")
    if kind == "format":
        return _("Enter a date as YYYY-MM-DD.")
    if kind == "pattern" and any(ord(ch) < 32 for ch in error.instance):
        return _("The text contains control characters.")
    return _("This value does not have the form that the API document gives for it.")


def document_path():
    """The path of the document that this request's route serves."""
    return re.sub(r"<(\w+)[^>]*>", r"{\1}", request.route.rule)


def document_operation():
    return OPENAPI["paths"][document_path()][request.method.lower()]


def query_form():
    """The operation's query parameters as a Form, each given at most once and as its schema
    says (an integer written as one, an empty value only where a text may be empty); else 400."""
    schemas = {item["name"]: item["schema"] for item in document_operation()["parameters"] if item["in"] == "query"}
    values, errors = {}, {}
    for name, schema in schemas.items():
        given = request.query.getall(name)
        if len(given) > 1:
            errors[name] = _("Send this parameter once.")
        elif given and request.query.getunicode(name) is None:
            errors[name] = _("This text is not valid UTF-8.")
        elif given:
            values[name] = request.query.getunicode(name)
    typed = {name: int(text) if schemas[name].get("type") == "integer" and re.fullmatch(r"-?[0-9]{1,30}", text)
             else text for name, text in values.items()}
    refused = document_errors(typed, f"{request.method} {document_path()} query",
                              {"type": "object", "properties": schemas})
    errors.update({name: message for name, (_kind, message) in refused.items() if name not in errors})
    if errors:
        raise invalid(errors)
    return Form(JsonFields(values))


def json_body():
    """The request's JSON object; no body at all (whatever its Content-Type) is an empty one."""
    raw = request.body.read()
    if not raw.strip():
        return {}
    if request.content_type.split(";")[0].strip().lower() != "application/json":
        raise error_response(415, _("Send the request body as JSON (Content-Type: application/json)."))
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise error_response(400, _("The request body is not valid JSON."))
    if not isinstance(data, dict):
        raise error_response(400, _("The request body must be a JSON object."))
    return data


def read_json(reader=None, *, defaults=None, order_id=None, action=None, semantic=()):
    """The JSON body read by `reader` (a Form reader of orders.py: its fields), after the check
    against this operation's schema. A body the document refuses is a 400 with each field's
    message (the reader's where it has one). A body it allows can still break a rule that it only
    describes (a deadline in the past): the `semantic` fields, a 422. With `action`, bad input on
    an order whose state refuses the write anyway is the write's 404, 403 or 409.
    A field the body leaves out takes its text in `defaults` (an edit keeps it); null leaves it out."""
    data = json_body()
    pointer = f"#/paths/{document_path().replace('/', '~1')}/{request.method.lower()}/requestBody/content/" \
              "application~1json/schema"
    refused = document_errors(data, pointer, {"$ref": DOCUMENT_URI + pointer})  # resolved once, see there
    form = Form(JsonFields(defaults or {}))
    for name, value in data.items():
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 5.0 is the integer 5 in JSON
        if value is None:
            form.source.pop(name, None)
        elif isinstance(value, str) and not is_utf8(value):  # a lone surrogate escape such as "\\ud800"
            form.errors[name] = _("This text is not valid UTF-8.")
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            form.source[name] = str(value)
        if refused.get(name, ("",))[0] == "type":  # said before the reader reads the text of it
            form.errors[name] = refused[name][1]
    fields = reader(form) if reader else {}
    for name, (_kind, message) in refused.items():
        form.errors.setdefault(name, message)
    if form.errors:
        if action:
            orders.refuse_bad_input(order_id, action)
        raise invalid(form.errors, 422 if not refused and set(form.errors) <= set(semantic) else 400)
    return fields


def is_utf8(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid(errors, status=400):
    """400 (or 422) with each field's message in the `errors` member."""
    return error_response(status, _("Some fields are not valid."), problem={"errors": errors})


# ---------------------------------------------------------------------------------------------
# JSON out

def iso(value):
    return value.isoformat() if value is not None else None


def number(value):
    return float(value) if isinstance(value, decimal.Decimal) else value


def reply(data, status=200):
    response.status = status
    response.content_type = "application/json"
    return json.dumps(data, ensure_ascii=False)


def order_json(row):
    """An order row (order_page_read or api_orders_by_ids) as the API shows it."""
    return {
        "id": row["id"], "title": row["title"], "description": row["description"],
        "category": {"slug": row["category_slug"], "name_ru": row["category_name_ru"],
                     "name_en": row["category_name_en"]},
        "budget": row["budget"], "deadline": iso(row["deadline"]), "status": row["status"],
        "customer": {"id": row["customer_id"], "name": row["customer_name"]},
        "performer": {"id": row["performer_id"], "name": row["performer_name"]} if row["performer_id"] else None,
        "mode": row["mode"], "agreed_price": row["agreed_price"], "offers_active": row["offers_active"],
        "rating": row["rating"], "review": row["review"], "cancel_reason": row["cancel_reason"],
        **{key: iso(row[key]) for key in ("created_at", "taken_at", "delivered_at", "disputed_at",
                                          "completed_at", "cancelled_at", "rated_at")},
    }


def category_json(row):
    return {"slug": row["slug"], "name_ru": row["name_ru"], "name_en": row["name_en"]}


def performer_json(row):
    return {"id": row["id"], "name": row["name"], "rating_avg": number(row["rating_avg"]),
            "rating_count": row["rating_count"], "orders_completed": row["orders_completed"],
            "categories": [category_json(category) for category in row["categories"]]}


def order_reply(order_id, status=200):
    """The order as this viewer may see it now (after a transition: its new state)."""
    return reply(order_json(orders.load_order(order_id)), status)


def offer_json(row):
    """An active offer as the order's customer (and staff) see it (offers_of_order)."""
    return {"id": row["id"], "price": row["price"], "days": row["days"], "message": row["message"],
            "performer": {"id": row["performer_id"], "name": row["performer_name"],
                          "rating_avg": number(row["rating_avg"]), "rating_count": row["rating_count"],
                          "orders_completed": row["orders_completed"]},
            "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}


def my_offer_json(row):
    """A performer's own offer (offer_of_performer): the active one, else the latest."""
    return {"id": row["id"], "price": row["price"], "days": row["days"], "message": row["message"],
            "status": row["status"], "created_at": iso(row["created_at"]), "updated_at": iso(row["updated_at"])}


def my_offer_reply(order_id, user, status=200):
    return reply(my_offer_json(db_one("offer_of_performer", order_id=order_id, performer_id=user["id"])), status)


# ---------------------------------------------------------------------------------------------
# Orders

def require_role(role):
    """The signed-in user, if of this role (None: any); else 403, as the HTML routes answer."""
    user = current_user()
    if role and user["role"] != role:
        raise error_response(403, _("This action is not available for your account."))
    return user


# The fields that a request the document allows may still get wrong (its 422): an order's deadline
# in the past or a category not (or no longer) offered, a review without a rating; a feed cursor
# of another sort (or of no real day), a budget range upside down.
ORDER_RULES = ("deadline", "category")
TRANSITION_RULES = {"accept": ("rating",)}
FEED_RULES = ("after", "max_budget")


@routes.get("/api/v1/orders")
@authenticate(required=False)
def api_orders():
    """The feed of open orders with the filters and cursors of /orders; an unknown category is a
    404 (as in the catalogue), a cursor of another sort or a budget range upside down a 422."""
    by_slug = {category["slug"]: category for category in db_all("categories_list")}
    form = query_form()
    if form.source.get("category", "") not in {"", *by_slug}:
        raise not_found(_("There is no such category."))
    filters, sort, cursor = orders.read_feed_filters(form, by_slug)
    if not form.ok:
        raise invalid(form.errors, 422 if set(form.errors) <= set(FEED_RULES) else 400)
    rows, next_after, _counted = orders.feed_page(filters, sort, cursor)
    user = current_user()
    full = db_all("api_orders_by_ids", ids=[row["id"] for row in rows], staff=bool(user and user["is_staff"]))
    return reply({"items": [order_json(row) for row in full], "next": next_after})


@routes.get("/api/v1/orders/<order_id:id>")
@authenticate(required=False)
def api_order(order_id):
    return order_reply(order_id)


@routes.post("/api/v1/orders")
@authenticate(required=True)
@idempotent
def api_order_create():
    user = require_role("customer")
    options = orders.category_options()
    fields = read_json(lambda form: orders.read_new_order(form, options), semantic=ORDER_RULES)
    form = Form(JsonFields())
    order_id = orders.create_order(user, fields, form)
    if order_id is None:  # its category was hidden a moment ago
        raise invalid(form.errors, 422)
    response.set_header("Location", f"/api/v1/orders/{order_id}")
    return order_reply(order_id, 201)


@routes.post("/api/v1/orders/<order_id:id>/edit")
@authenticate(required=True)
@idempotent
def api_order_edit(order_id):
    """The customer edits an open order; the fields left out keep their values (null clears the
    deadline), and the mode changes only while no offer is active."""
    order = orders.order_to_edit(order_id)
    options = orders.edit_options(order)
    current = {"title": order["title"], "description": order["description"], "category": order["category_slug"],
               "budget": str(order["budget"]), "deadline": iso(order["deadline"]) or "", "mode": order["mode"]}
    fields = read_json(lambda form: orders.read_edit_fields(form, order, options), defaults=current,
                       semantic=ORDER_RULES)
    orders.update_order(order_id, current_user(), fields)
    return order_reply(order_id)


def api_transition(order_id, action):
    """One transition: the readers, transitions and roles are the HTML forms' (orders.py)."""
    reader, make, role, _message = orders.FORM_TRANSITIONS[action]
    user = require_role(role)
    make(order_id, user, **read_json(reader, order_id=order_id, action=action,
                                     semantic=TRANSITION_RULES.get(action, ())))
    return order_reply(order_id)


def transition_route(action, path=None):
    """POST /api/v1/orders/<id>/<action>: one transition of SPEC §4; answers the order."""
    @authenticate(required=True)
    @idempotent
    def route(order_id):
        return api_transition(order_id, action)
    routes.post(f"/api/v1/orders/<order_id:id>/{path or action}", callback=route,
                name=f"api_order_{path or action}")


for _action in orders.FORM_TRANSITIONS:
    transition_route(_action)
transition_route("deliver", path="complete")  # the first name of delivering, kept for old clients


@routes.get("/api/v1/orders/<order_id:id>/deliveries")
@authenticate(required=True)
def api_order_deliveries(order_id):
    """The work handed in, every round: for the order's two parties and staff."""
    order = orders.load_order(order_id)
    user = current_user()
    if not (user["is_staff"] or user["id"] in (order["customer_id"], order["performer_id"])):
        raise error_response(403, _("Only the customer and the performer of this order can see the work handed in."))
    return reply({"items": [{"id": row["id"], "message": row["message"], "created_at": iso(row["created_at"]),
                             "performer": {"id": row["performer_id"], "name": row["performer_name"]}}
                            for row in db_all("order_deliveries_list", order_id=order_id)]})


# ---------------------------------------------------------------------------------------------
# Offers

@routes.get("/api/v1/orders/<order_id:id>/offers")
@authenticate(required=False)
def api_order_offers(order_id):
    """As on the order page: the customer and staff see every active offer, a performer their
    own; everyone sees how many there are."""
    order = orders.load_order(order_id)
    seen = orders.order_offers(order, current_user())
    return reply({"count": order["offers_active"],
                  "items": None if seen["all"] is None else [offer_json(row) for row in seen["all"]],
                  "mine": my_offer_json(seen["mine"]) if seen["mine"] else None})


@routes.post("/api/v1/orders/<order_id:id>/offers")
@authenticate(required=True)
@idempotent
def api_offer_send(order_id):
    """Sends the performer's offer (201) or changes their active one (200)."""
    user = require_role("performer")
    fields = read_json(orders.read_offer_fields, order_id=order_id, action="offer")
    created = orders.send_offer(order_id, user, **fields)
    return my_offer_reply(order_id, user, 201 if created else 200)


@routes.post("/api/v1/orders/<order_id:id>/offers/withdraw")
@authenticate(required=True)
@idempotent
def api_offer_withdraw(order_id):
    user = require_role("performer")
    read_json()
    orders.withdraw_offer(order_id, user)
    return my_offer_reply(order_id, user)


@routes.post("/api/v1/orders/<order_id:id>/offers/<offer_id:id>/accept")
@authenticate(required=True)
@idempotent
def api_offer_accept(order_id, offer_id):
    user = require_role("customer")
    read_json()
    orders.accept_offer(order_id, offer_id, user)
    return order_reply(order_id)


# ---------------------------------------------------------------------------------------------
# People and categories

@routes.get("/api/v1/me")
@authenticate(required=True)
def api_me():
    user = current_user()
    profile = db_one("profile_read", user_id=user["id"])
    if user["role"] == "customer":
        counters = db_one("customer_stats_read", customer_id=user["id"])
    else:
        counters = db_one("performer_stats_read", performer_id=user["id"])
    return reply({**profile, "is_staff": user["is_staff"], "is_blocked": user["is_blocked"],
                  "counters": {key: number(value) for key, value in counters.items()}})


@routes.get("/api/v1/performers")
@authenticate(required=False)
def api_performers():
    """The catalogue of /performers: best rated first; `category` (slug) and `after` (an id)."""
    form = query_form()
    after = form.integer("after", required=False, min_value=1, max_value=10**17)
    slug = form.text("category", required=False, max_len=100)
    if not form.ok:
        raise invalid(form.errors)
    category = db_one("category_visible_by_slug", slug=slug) if slug else None
    if slug and category is None:
        raise not_found(_("There is no such category."))
    page, more, _categories = accounts.catalogue_page(after, category)
    return reply({"items": [performer_json(row) for row in page],
                  "next": str(page[-1]["id"]) if more else None})


@routes.get("/api/v1/performers/<performer_id:id>")
@authenticate(required=False)
def api_performer(performer_id):
    """A public profile with the latest reviews; contacts only for signed-in users, as on the page."""
    row = db_one("performer_public", performer_id=performer_id)
    if row is None:
        raise not_found(_("There is no such performer."))
    reviews = db_all("performer_reviews", performer_id=performer_id, after=None)[:CATALOGUE_PAGE]
    contacts = None
    if current_user():
        contacts = {"email": row["email"], "phone": row["phone"], "messenger": row["messenger"]}
    return reply({**performer_json(row), "bio": row["bio"], "experience_years": row["experience_years"],
                  "experience_text": row["experience_text"], "created_at": iso(row["created_at"]),
                  "contacts": contacts,
                  "reviews": [{"order_id": review["id"], "title": review["title"], "rating": review["rating"],
                               "review": review["review"], "rated_at": iso(review["rated_at"])}
                              for review in reviews]})


@routes.get("/api/v1/categories")
def api_categories():
    return reply({"items": [{**category_json(row), "open_orders": row["open_orders"]}
                            for row in db_all("categories_list")]})


@routes.get("/api/v1/openapi.json")
def api_openapi():
    return reply(OPENAPI)


# ---------------------------------------------------------------------------------------------
# The OpenAPI 3.1 document; tests/test_api.py checks every response against it

def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def closed(properties, optional=()):
    """An object schema with exactly these properties, all required but the optional ones."""
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": [name for name in properties if name not in optional]}


def nullable(schema):
    if isinstance(schema.get("type"), str):  # its other keywords (format, minimum) pass a null by
        return {**schema, "type": [schema["type"], "null"]}
    return {"oneOf": [schema, {"type": "null"}]}


# What str.strip() removes (str.isspace), spelled out: ECMA 262 and Python read \s differently.
SPACES = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def text_schema(max_len, *, min_len=0, multiline=False):
    """A text field as web.Form.text reads it, spelled as a schema: no control characters (on one
    line) or no NUL (multiline), and with min_len at least that many characters once the spaces
    around are trimmed. maxLength counts every character sent (the server trims before storing)."""
    control = r"\x00" if multiline else r"\x00-\x1f"
    pattern = f"^[^{control}]*$"
    if min_len:
        inner = f"[\\s\\S]{{{min_len - 2},}}[^{SPACES}]" if min_len > 1 else ""
        pattern = f"^(?![\\s\\S]*[{control}])[\\s\\S]*?[^{SPACES}]{inner}"
    return {"type": "string", "maxLength": max_len, "pattern": pattern}


TEXT, INTEGER, MOMENT = {"type": "string"}, {"type": "integer"}, {"type": "string", "format": "date-time"}
DATE = {"type": "string", "format": "date"}
ID = {"type": "integer", "minimum": 1, "maximum": 10**17}
PATH_ID = {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}  # web.id_filter: up to 18 digits
SLUG = {"type": "string", "maxLength": 50, "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"}
ID_TEXT = "[1-9][0-9]{0,17}"
DAY_TEXT = "(?!0000)[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"  # 02-30 passes: a 422
MOMENT_TEXT = f"{DAY_TEXT}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{{6}})?[+-]([01][0-9]|2[0-3]):[0-5][0-9]"
TIME_CURSOR = {"type": "string", "pattern": f"^{MOMENT_TEXT}_{ID_TEXT}$"}
FEED_CURSOR = {"type": "string", "pattern": f"^({MOMENT_TEXT}|[0-9]{{1,10}}|{DAY_TEXT}|infinity)_{ID_TEXT}$"}
PROBLEM = {"$ref": "#/components/responses/Problem"}
PROBLEM_CONTENT = {"application/problem+json": {"schema": ref("Problem")}}
UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}


def json_content(schema):
    return {"application/json": {"schema": schema}}


def operation(summary, status, schema, *, problems=(), secured=False, body=None, parameters=(), headers=None,
              also=None, rules=None, credentials=True, database=True):
    """One path/method: its success response (and `also` {status: description} answered with the
    same schema), the problems it may answer, its credentials. Any request may be answered 400 (a
    Content-Length that is not a number), 411 (a chunked body) or 413 (a body over 1 MB), and 503
    when the database is down; one with credentials 401; one with a body 409 (a collision) and 415;
    `rules` says what makes a 422: a request the schemas allow that breaks a rule they cannot state."""
    problems = {400, 411, 413, *problems, *([503] if database else []), *([401] if credentials else []),
                *([409, 415] if body is not None else [])}
    success = {"description": summary, "content": json_content(schema), **({"headers": headers} if headers else {})}
    others = {str(code): {"description": text, "content": json_content(schema)} for code, text in (also or {}).items()}
    if rules:
        others["422"] = {"description": rules, "content": PROBLEM_CONTENT}
    op = {"summary": summary, "parameters": list(parameters),
          "responses": {str(status): success, **others,
                        **{str(code): UNAUTHORIZED if code == 401 else PROBLEM for code in sorted(problems)},
                        "default": PROBLEM},
          "security": ([{"bearer": []}, {"cookie": []}] + ([] if secured else [{}])) if credentials else []}
    if body is not None:
        op["requestBody"] = {"required": bool(body.get("required")), "content": json_content(body)}
    return op


def parameter(name, where, schema, description=""):
    return {"name": name, "in": where, "required": where == "path", "schema": schema,
            "description": description}


ORDER_ID = parameter("order_id", "path", PATH_ID)
OFFER_ID = parameter("offer_id", "path", PATH_ID)
TRANSITION_PROBLEMS = (400, 401, 403, 404, 409, 415)
BUDGET_FILTER = {"type": "integer", "minimum": 0, "maximum": orders.BUDGET_MAX}
FEED_PARAMETERS = [
    parameter("q", "query", text_schema(200), "full-text search"),
    parameter("category", "query", SLUG, "category slug (an unknown one is a 404)"),
    parameter("min_budget", "query", BUDGET_FILTER), parameter("max_budget", "query", BUDGET_FILTER),
    parameter("sort", "query", {"type": "string", "enum": list(orders.FEED_SORTS)}),
    parameter("after", "query", FEED_CURSOR, "the `next` of the previous page (of the same sort)"),
]
CATEGORY = closed({"slug": TEXT, "name_ru": TEXT, "name_en": TEXT, "open_orders": INTEGER},
                  optional=("open_orders",))
PERSON = closed({"id": INTEGER, "name": TEXT})
PERFORMER = {"id": INTEGER, "name": TEXT, "rating_avg": nullable({"type": "number"}),
             "rating_count": INTEGER, "orders_completed": INTEGER,
             "categories": {"type": "array", "items": ref("Category")}}
PRICE = {"type": "integer", "minimum": 1, "maximum": orders.BUDGET_MAX}
RATING = {"type": "integer", "minimum": 1, "maximum": 10}
MODE = {"enum": list(orders.MODES)}
REASON = closed({"reason": text_schema(1000, min_len=1, multiline=True)})
REVIEW_TEXT = text_schema(5000, multiline=True)
ORDER_FIELDS_SCHEMA = {"title": text_schema(200, min_len=3),
                       "description": text_schema(10000, min_len=1, multiline=True),
                       "category": SLUG, "budget": PRICE, "deadline": nullable(DATE), "mode": MODE}
ORDER_RULES_TEXT = ("The deadline is today or later (an edit may keep the one the order has), and the category "
                    "is one of GET /api/v1/categories")
MESSAGE_TEXT = text_schema(5000, min_len=1, multiline=True)
REVIEW = closed({"order_id": INTEGER, "title": TEXT, "rating": {"type": "integer", "minimum": 1, "maximum": 10},
                 "review": nullable(TEXT), "rated_at": MOMENT})

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Birzha API", "version": "1",
             "description": "Orders, performers and categories of Birzha. Errors are RFC 9457 problems."},
    "paths": {
        "/api/v1/orders": {
            "get": operation("Open orders, filtered like /orders", 200, ref("OrderList"),
                             problems=(400, 401, 404), parameters=FEED_PARAMETERS,
                             rules="`after` is not a `next` of this sort (or names no moment or day), or "
                                   "`max_budget` is below `min_budget`"),
            "post": operation("Publish an order (customers)", 201, ref("Order"),
                              problems=(400, 401, 403, 415), secured=True,
                              body=closed(ORDER_FIELDS_SCHEMA, optional=("deadline", "mode")),
                              rules=ORDER_RULES_TEXT,
                              headers={"Location": {"description": "The new order's URL",
                                                    "schema": TEXT}}),
        },
        "/api/v1/orders/{order_id}": {
            "get": operation("An order", 200, ref("Order"), problems=(401, 404), parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/edit": {
            "post": operation("Edit an open order (its customer): the fields left out keep their values, a null "
                              "deadline clears it; the mode changes only while the order has no active offer",
                              200, ref("Order"), problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed(ORDER_FIELDS_SCHEMA, optional=list(ORDER_FIELDS_SCHEMA)),
                              rules=ORDER_RULES_TEXT, parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/take": {
            "post": operation("Take an open order in take mode (performers)", 200, ref("Order"),
                              problems=TRANSITION_PROBLEMS, secured=True, body=closed({}),
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/deliver": {
            "post": operation("Hand in the work of an order in progress (its performer): it becomes delivered",
                              200, ref("Order"), problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"message": MESSAGE_TEXT}), parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/complete": {
            "post": operation("The first name of /deliver, kept for old clients: the same body and answer", 200,
                              ref("Order"), problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"message": MESSAGE_TEXT}), parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/withdraw": {
            "post": operation("Give an order in progress back, with a reason (its performer): it is open again",
                              200, ref("Order"), problems=TRANSITION_PROBLEMS, secured=True, body=REASON,
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/accept": {
            "post": operation("Accept the delivered work (its customer), with an optional rating and review: done",
                              200, ref("Order"), problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"rating": nullable(RATING), "review": REVIEW_TEXT},
                                          optional=("rating", "review")),
                              rules="A review (not only spaces) without a rating",
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/revision": {
            "post": operation("Send the delivered work back with a reason (its customer): in progress again",
                              200, ref("Order"), problems=TRANSITION_PROBLEMS, secured=True, body=REASON,
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/dispute": {
            "post": operation("Open a dispute on an order in progress or delivered, with a reason (its customer "
                              "or performer); staff settle it", 200, ref("Order"), problems=TRANSITION_PROBLEMS,
                              secured=True, body=REASON, parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/cancel": {
            "post": operation("Cancel an order (its customer): an open one, or one in progress past its deadline; "
                              "staff use the admin area", 200,
                              ref("Order"), problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"reason": text_schema(1000, multiline=True)}, optional=("reason",)),
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/rate": {
            "post": operation("Rate a done order once (its customer)", 200, ref("Order"),
                              problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"rating": RATING, "review": REVIEW_TEXT}, optional=("review",)),
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/deliveries": {
            "get": operation("The work handed in, every round, oldest first (the order's customer and "
                             "performer, and staff)", 200, ref("DeliveryList"), problems=(401, 403, 404),
                             secured=True, parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/offers": {
            "get": operation("The offers as the viewer may see them: `items` every active offer for the "
                             "customer and staff (null for others), `mine` a performer's own offer, `count` "
                             "for everyone", 200, ref("OfferList"), problems=(401, 404), parameters=[ORDER_ID]),
            "post": operation("Send an offer on an open order in offers mode (performers): 201 for a new one, "
                              "200 when it changes your active one", 201, ref("MyOffer"),
                              also={200: "Your active offer is changed"}, problems=TRANSITION_PROBLEMS,
                              secured=True, body=closed({"price": PRICE,
                                                         "days": {"type": "integer", "minimum": 1, "maximum": 365},
                                                         "message": text_schema(2000, min_len=1, multiline=True)}),
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/offers/withdraw": {
            "post": operation("Withdraw your active offer while the order is open (performers)", 200,
                              ref("MyOffer"), problems=TRANSITION_PROBLEMS, secured=True, body=closed({}),
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/offers/{offer_id}/accept": {
            "post": operation("Accept an active offer (the order's customer): the order goes in progress to its "
                              "performer at its price, due today plus its days; the other offers are declined; "
                              "of two accepts at once the second gets 409", 200, ref("Order"),
                              problems=TRANSITION_PROBLEMS, secured=True, body=closed({}),
                              parameters=[ORDER_ID, OFFER_ID]),
        },
        "/api/v1/me": {"get": operation("The signed-in user", 200, ref("Me"), problems=(401,), secured=True)},
        "/api/v1/performers": {
            "get": operation("The performer catalogue: best rated first", 200, ref("PerformerList"),
                             problems=(400, 401, 404),
                             parameters=[parameter("category", "query", SLUG, "category slug"),
                                         parameter("after", "query", ID, "the `next` of the previous page")]),
        },
        "/api/v1/performers/{performer_id}": {
            "get": operation("A performer's public profile", 200, ref("PerformerProfile"), problems=(401, 404),
                             parameters=[parameter("performer_id", "path", PATH_ID)]),
        },
        "/api/v1/categories": {
            "get": operation("The visible categories", 200, ref("CategoryList"), credentials=False),
        },
        "/api/v1/openapi.json": {
            "get": operation("This document", 200, {"type": "object"}, credentials=False, database=False),
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "A personal token from the profile page (bz_…)."},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "birzha_session",
                       "description": "The browser session; POSTs also need the X-CSRF-Token header."},
        },
        "responses": {
            "Problem": {"description": "An error (RFC 9457)",
                        "content": {"application/problem+json": {"schema": ref("Problem")}}},
            "Unauthorized": {"description": "No credentials, or a token that is not valid (RFC 9457)",
                             "headers": {"WWW-Authenticate": {"schema": TEXT}},
                             "content": {"application/problem+json": {"schema": ref("Problem")}}},
        },
        "schemas": {
            "Problem": closed({"type": TEXT, "title": TEXT, "status": INTEGER, "detail": TEXT,
                               "errors": {"type": "object", "additionalProperties": TEXT}},
                              optional=("errors",)),
            "Category": CATEGORY,
            "CategoryList": closed({"items": {"type": "array", "items": ref("Category")}}),
            "Person": PERSON,
            "Order": closed({
                "id": INTEGER, "title": TEXT, "description": TEXT, "category": ref("Category"),
                "budget": {"type": "integer", "minimum": 1}, "deadline": nullable(DATE),
                "status": {"enum": ["open", "in_progress", "delivered", "disputed", "done", "cancelled"]},
                "mode": MODE, "agreed_price": nullable(PRICE), "offers_active": {"type": "integer", "minimum": 0},
                "customer": ref("Person"), "performer": nullable(ref("Person")),
                "rating": nullable(RATING),
                "review": nullable(TEXT), "cancel_reason": nullable(TEXT), "created_at": MOMENT,
                "taken_at": nullable(MOMENT), "delivered_at": nullable(MOMENT), "disputed_at": nullable(MOMENT),
                "completed_at": nullable(MOMENT), "cancelled_at": nullable(MOMENT), "rated_at": nullable(MOMENT)}),
            "OrderList": closed({"items": {"type": "array", "items": ref("Order")}, "next": nullable(TEXT)}),
            "Offer": closed({
                "id": INTEGER, "price": PRICE, "days": INTEGER, "message": TEXT,
                "performer": closed({"id": INTEGER, "name": TEXT, "rating_avg": nullable({"type": "number"}),
                                     "rating_count": INTEGER, "orders_completed": INTEGER}),
                "created_at": MOMENT, "updated_at": MOMENT}),
            "MyOffer": closed({
                "id": INTEGER, "price": PRICE, "days": INTEGER, "message": TEXT,
                "status": {"enum": ["active", "withdrawn", "accepted", "declined"]},
                "created_at": MOMENT, "updated_at": MOMENT}),
            "OfferList": closed({
                "count": {"type": "integer", "minimum": 0},
                "items": nullable({"type": "array", "items": ref("Offer")}),
                "mine": nullable(ref("MyOffer"))}),
            "Delivery": closed({"id": INTEGER, "message": TEXT, "created_at": MOMENT, "performer": ref("Person")}),
            "DeliveryList": closed({"items": {"type": "array", "items": ref("Delivery")}}),
            "Performer": closed(PERFORMER),
            "PerformerList": closed({"items": {"type": "array", "items": ref("Performer")},
                                     "next": nullable(TEXT)}),
            "PerformerProfile": closed({
                **PERFORMER, "bio": TEXT, "experience_years": INTEGER, "experience_text": TEXT,
                "created_at": MOMENT, "reviews": {"type": "array", "items": REVIEW},
                "contacts": nullable(closed({"email": TEXT, "phone": TEXT, "messenger": TEXT}))}),
            "Me": closed({
                "id": INTEGER, "role": {"enum": ["customer", "performer"]}, "email": TEXT, "name": TEXT,
                "phone": TEXT, "messenger": TEXT, "experience_years": INTEGER, "experience_text": TEXT,
                "bio": TEXT, "timezone": TEXT, "is_staff": {"type": "boolean"}, "is_blocked": {"type": "boolean"},
                "counters": {"oneOf": [
                    closed({"orders_placed": INTEGER, "orders_open": INTEGER, "orders_in_progress": INTEGER,
                            "orders_delivered": INTEGER, "orders_disputed": INTEGER,
                            "orders_done": INTEGER, "orders_cancelled": INTEGER}),
                    closed({"orders_completed": INTEGER, "orders_in_progress": INTEGER,
                            "orders_delivered": INTEGER, "orders_disputed": INTEGER,
                            "rating_avg": nullable({"type": "number"}), "rating_count": INTEGER})]}}),
        },
    },
}


# =============================================================================================
# Talking (issue 11): conversations, messages and notifications. Everything of it is in this
# block, routes first, then its part of the OpenAPI document merged into OPENAPI at the end, so
# that the rest of this module can change without touching it. The rules are those of the HTML
# pages (messages.py): the same view_of() decides who reads which conversation, and the same
# send_message() writes. Files are attached through the HTML form only (multipart); the API
# lists them and serves their bytes at /api/v1/files/{id}.
# =============================================================================================

import files as talk_files  # noqa: E402  (kept inside the block for the merge)
import messages as talk  # noqa: E402


def person_json(user_id, name):
    return {"id": user_id, "name": name}


def conversation_json(row, order_id, title):
    return {"id": row["id"], "order": {"id": order_id, "title": title},
            "customer": person_json(row["customer_id"], row["customer_name"]),
            "performer": person_json(row["performer_id"], row["performer_name"]),
            "message_count": row["message_count"], "last_message_at": iso(row["last_message_at"]),
            "unread": row["unread"], "open": row["goes_on"]}


def message_json(row):
    return {"id": row["id"], "seq": row["seq"], "sender": person_json(row["sender_id"], row["sender_name"]),
            "body": row["body"], "created_at": iso(row["created_at"]),
            "files": [{**described, "url": f"/api/v1/files/{described['id']}"} for described in row["files"]]}


def notification_json(row):
    return {"id": row["id"], "kind": row["kind"], "order_id": row["order_id"], "order_title": row["order_title"],
            "text": row["text"], "detail": row["detail"], "url": row["url"], "params": row["params"],
            "created_at": iso(row["created_at"]), "read_at": iso(row["read_at"])}


@routes.get("/api/v1/conversations")
@authenticate(required=True)
def api_conversations():
    """The caller's conversations, the latest first (as /messages); `after` is the last `next`."""
    user = current_user()
    after = query_form().source.get("after")
    cursor = orders.parse_time_cursor(after) if after else (orders.END_OF_TIME, orders.LAST_ID)
    if cursor is None:  # of the document's form, but no moment (a 31st of November)
        raise invalid({"after": _("This page link is broken. Start again from the first page.")}, 422)
    rows = db_all("conversations_inbox", user_id=user["id"], after_at=cursor[0], after_id=cursor[1],
                  limit=talk.INBOX_PAGE + 1)
    page = rows[:talk.INBOX_PAGE]
    return reply({"items": [conversation_json(row, row["order_id"], row["title"]) for row in page],
                  "next": orders.cursor_after(page[-1], "last_message_at") if len(rows) > talk.INBOX_PAGE else None})


def load_conversation(order_id, with_id):
    """The conversation of the order that the caller reads; its customer must say `with` whom (422)."""
    view = talk.load_view(order_id, with_id)
    if view.listing:
        raise error_response(422, _("Choose the performer to write to."),
                             problem={"errors": {"with": _("This field is required.")}})
    return view


@routes.get("/api/v1/orders/<order_id:id>/messages")
@authenticate(required=True)
def api_order_messages(order_id):
    """One conversation of an order: the performer's own, or the customer's `with` a performer
    (the customer's list is GET /api/v1/conversations). Reading it marks it read."""
    form = query_form()
    with_id = talk.read_id(form, "with")
    before = form.integer("before", required=False, min_value=1, max_value=talk.LAST_SEQ)
    if not form.ok:
        raise invalid(form.errors)
    view = load_conversation(order_id, with_id)
    page, earlier = talk.page_of_messages(view.conversation, before)
    if before is None:
        talk.mark_read(view)
    conversation = view.conversation
    return reply({
        "order_id": view.order["id"], "performer_id": view.performer_id,
        "conversation_id": conversation["id"] if conversation else None,
        "may_write": view.may_write, "messages": [message_json(row) for row in page],
        "earlier": str(earlier) if earlier else None})


@routes.post("/api/v1/orders/<order_id:id>/messages")
@authenticate(required=True)
@idempotent
def api_order_message_send(order_id):
    fields = read_json(lambda form: {"body": form.text("body", max_len=5000, multiline=True).strip(),
                                     "with": talk.read_id(form, "with")})
    body = fields["body"]
    view = load_conversation(order_id, fields["with"])
    if view.staff:
        raise error_response(403, _("Staff read a disputed order's conversation but do not write in it."))
    message = talk.send_message(view, body)
    row = {"id": message["id"], "seq": message["seq"], "sender_id": view.user["id"],
           "sender_name": view.user["name"], "body": body, "created_at": message["created_at"], "files": []}
    response.set_header("Location", f"/api/v1/orders/{order_id}/messages"
                        + (f"?with={view.performer_id}" if view.is_customer else ""))
    return reply(message_json(row), 201)


@routes.get("/api/v1/files/<file_id:id>")
@authenticate(required=True)
def api_file(file_id):
    """A file's bytes, to the same people as /files/{id}."""
    return talk.serve_file(file_id)


@routes.get("/api/v1/notifications")
@authenticate(required=True)
def api_notifications():
    """The caller's notifications, newest first; `after` is the last `next`."""
    user = current_user()
    page, next_after = talk.notifications_page(user, talk.read_id(query_form(), "after"))
    unread = db_one("user_unread_counts", user_id=user["id"])
    return reply({"items": [notification_json(row) for row in page],
                  "next": str(next_after) if next_after else None,
                  "unread": unread["unread_notifications"] if unread else 0})


@routes.post("/api/v1/notifications/read")
@authenticate(required=True)
@idempotent
def api_notifications_read():
    """Marks one notification read (`id`), or all of the caller's when no id is sent."""
    user = current_user()
    notification_id = read_json(lambda form: talk.read_id(form, "id"))
    if notification_id is None:
        db_run("notifications_read_all", user_id=user["id"])
    elif db_one("notification_read", id=notification_id, user_id=user["id"]) is None \
            and db_one("notification_exists", id=notification_id, user_id=user["id"]) is None:
        raise not_found(_("There is no such notification."))
    unread = db_one("user_unread_counts", user_id=user["id"])
    return reply({"unread": unread["unread_notifications"] if unread else 0})


TALK_PERSON = ref("Person")
CONVERSATION = closed({
    "id": INTEGER, "order": closed({"id": INTEGER, "title": TEXT}), "customer": TALK_PERSON,
    "performer": TALK_PERSON, "message_count": INTEGER, "last_message_at": MOMENT,
    "unread": {"type": "integer", "minimum": 0}, "open": {"type": "boolean"}})
MESSAGE_FILE = closed({"id": INTEGER, "name": TEXT, "size": INTEGER, "content_type": TEXT, "url": TEXT})
MESSAGE = closed({"id": INTEGER, "seq": INTEGER, "sender": TALK_PERSON,
                  "body": {"type": "string", "minLength": 1, "maxLength": 5000}, "created_at": MOMENT,
                  "files": {"type": "array", "items": ref("MessageFile"), "maxItems": talk_files.MAX_FILES}})
NOTIFICATION_KINDS = ["offer_received", "offer_accepted", "offer_declined", "order_taken", "order_delivered",
                      "revision_requested", "work_accepted", "work_auto_accepted", "order_rated",
                      "message_received", "dispute_opened", "dispute_resolved"]
NOTIFICATION = closed({
    "id": INTEGER, "kind": {"enum": NOTIFICATION_KINDS}, "order_id": INTEGER, "order_title": TEXT,
    "text": TEXT, "detail": TEXT, "url": TEXT, "params": {"type": "object"}, "created_at": MOMENT,
    "read_at": nullable(MOMENT)})
WITH = parameter("with", "query", ID, "the performer of the conversation: required for the order's customer")
WITH_RULE = "The order's customer did not say `with` which performer"
FILE_OPERATION = operation("A file's bytes, as a download, to the people of its message or delivery", 200,
                           {"type": "string"}, problems=(401, 404), secured=True,
                           parameters=[parameter("file_id", "path", PATH_ID)])
FILE_OPERATION["responses"]["200"] = {
    "description": "The file (Content-Disposition: attachment), as the type it was sent with if that is one of "
                   "these, else application/octet-stream",
    "content": {kind: {"schema": {"type": "string", "format": "binary"}}
                for kind in sorted({*talk_files.SAFE_TYPES, "application/octet-stream"})}}
TALK_PATHS = {
    "/api/v1/conversations": {
        "get": operation("Your conversations, the latest first", 200, ref("ConversationList"),
                         problems=(400, 401), secured=True,
                         rules="`after` is of the form of a `next` but names no moment",
                         parameters=[parameter("after", "query", TIME_CURSOR, "the `next` of the previous page")]),
    },
    "/api/v1/orders/{order_id}/messages": {
        "get": operation("A conversation of an order (read: marks it read). Staff read one only while the "
                         "order is disputed, and each read is logged", 200, ref("ConversationMessages"),
                         problems=(400, 401, 403, 404), secured=True, rules=WITH_RULE,
                         parameters=[ORDER_ID, WITH,
                                     parameter("before", "query", {"type": "integer", "minimum": 1,
                                                                   "maximum": talk.LAST_SEQ},
                                               "the `earlier` of the page shown: older messages")]),
        "post": operation("Write a message (JSON; files go through the HTML form at /orders/{id}/messages)",
                          201, ref("Message"), problems=(400, 401, 403, 404, 409, 415), secured=True,
                          body=closed({"body": MESSAGE_TEXT, "with": ID}, optional=("with",)),
                          rules=WITH_RULE, parameters=[ORDER_ID],
                          headers={"Location": {"description": "The conversation's URL", "schema": TEXT}}),
    },
    "/api/v1/files/{file_id}": {"get": FILE_OPERATION},
    "/api/v1/notifications": {
        "get": operation("Your notifications, newest first", 200, ref("NotificationList"), problems=(400, 401),
                         secured=True, parameters=[parameter("after", "query", ID, "the `next` of the previous page")]),
    },
    "/api/v1/notifications/read": {
        "post": operation("Mark one notification read (`id`), or all of them (no id)", 200,
                          closed({"unread": {"type": "integer", "minimum": 0}}),
                          problems=(400, 401, 403, 404, 415), secured=True,
                          body=closed({"id": ID}, optional=("id",))),
    },
}
TALK_SCHEMAS = {
    "Conversation": CONVERSATION,
    "ConversationList": closed({"items": {"type": "array", "items": ref("Conversation")}, "next": nullable(TEXT)}),
    "MessageFile": MESSAGE_FILE,
    "Message": MESSAGE,
    "ConversationMessages": closed({
        "order_id": INTEGER, "performer_id": INTEGER, "conversation_id": nullable(INTEGER),
        "may_write": {"type": "boolean"}, "messages": {"type": "array", "items": ref("Message")},
        "earlier": nullable(TEXT)}),
    "Notification": NOTIFICATION,
    "NotificationList": closed({"items": {"type": "array", "items": ref("Notification")}, "next": nullable(TEXT),
                                "unread": {"type": "integer", "minimum": 0}}),
}
OPENAPI["paths"].update(TALK_PATHS)
OPENAPI["components"]["schemas"].update(TALK_SCHEMAS)
OPENAPI["info"]["description"] += " Conversations, messages and notifications of orders too."


# Every POST of the document (both blocks above) takes an Idempotency-Key (see `idempotent`).
OPENAPI["components"]["parameters"] = {"IdempotencyKey": {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]+$"},
    "description": "Any key of yours (a UUID will do), new for each new request: a retry with the same key, "
                   "path and body within 24 hours gets the first successful answer again, with "
                   "`Idempotent-Replayed: true`, and changes nothing; the same key with another path or body "
                   "is a 422. Only successes are kept: a refused request may be sent again with its key. "
                   "Keys are per user; a bad one (empty, longer than 255, not printable ASCII) is a 400."}}
for _methods in OPENAPI["paths"].values():
    if "post" in _methods:
        _methods["post"]["parameters"].append({"$ref": "#/components/parameters/IdempotencyKey"})
        _methods["post"]["responses"]["422"] = PROBLEM
