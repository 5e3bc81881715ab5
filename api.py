"""The JSON API under /api/v1/ (SPEC §6): the same rules as the HTML routes, answered in JSON.

Credentials: a personal token (`Authorization: Bearer bz_…`, made on the profile page) or the
browser session, which must also send the form's CSRF token in `X-CSRF-Token` on every POST.
Errors are application/problem+json (error_page in app.py). The transitions and their
404/403/409 decisions are the ones of orders.py; this module only reads JSON and writes JSON.
Every POST takes an `Idempotency-Key` header (`idempotent`): a retry gets the first answer again.
"""
import decimal
import hashlib
import json
import re
from functools import wraps

from bottle import request, response

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
# JSON in

class JsonFields(dict):
    """The text of a JSON object's fields, read by Form as it reads request.forms."""

    def getunicode(self, name):
        return self.get(name)


def json_form(types, defaults=None):
    """The JSON body as a Form; `types` maps each field to str or int (null means absent).
    A field the body leaves out takes its text in `defaults`, if any (an edit keeps it)."""
    if request.content_type.split(";")[0].strip().lower() != "application/json":
        raise error_response(415, _("Send the request body as JSON (Content-Type: application/json)."))
    raw = request.body.read()
    try:
        data = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (ValueError, RecursionError):
        raise error_response(400, _("The request body is not valid JSON."))
    if not isinstance(data, dict):
        raise error_response(400, _("The request body must be a JSON object."))
    form = Form(JsonFields(defaults or {}))
    for name, kind in types.items():
        if name not in data:
            continue
        value = data[name]
        if value is None:
            form.source.pop(name, None)
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            form.errors[name] = _("Enter a whole number.")
        elif kind is str and not isinstance(value, str):
            form.errors[name] = _("Enter the value as a JSON string.")
        elif kind is str and not is_utf8(value):  # a lone surrogate escape such as "\\ud800"
            form.errors[name] = _("This text is not valid UTF-8.")
        else:
            form.source[name] = str(value)
    return form


def is_utf8(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def invalid(form):
    """400 with each field's message in the `errors` member."""
    return error_response(400, _("Some fields are not valid."), problem={"errors": form.errors})


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


ORDER_FIELDS = {"title": str, "description": str, "category": str, "budget": int, "deadline": str, "mode": str}


@routes.get("/api/v1/orders")
@authenticate(required=False)
def api_orders():
    """The feed of open orders with the filters and cursors of /orders."""
    by_slug = {category["slug"]: category for category in db_all("categories_list")}
    form = Form(request.query)
    filters, sort, cursor = orders.read_feed_filters(form, by_slug)
    if not form.ok:
        raise invalid(form)
    rows, next_after = orders.feed_page(filters, sort, cursor)
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
    form = json_form(ORDER_FIELDS)
    options = orders.category_options()
    fields = orders.read_new_order(form, options)
    order_id = orders.create_order(user, fields, form) if form.ok else None
    if order_id is None:
        raise invalid(form)
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
    form = json_form(ORDER_FIELDS, defaults=current)
    fields = orders.read_edit_fields(form, order, options)
    if not form.ok:
        raise invalid(form)
    orders.update_order(order_id, current_user(), fields)
    return order_reply(order_id)


def read_body(order_id, action, types, reader):
    """The body's fields for `action`. Bad input is answered as the HTML form's is: 404, 403 or
    409 when the write would be refused anyway, else 400 with each field's error."""
    form = json_form(types)
    fields = reader(form) if reader else {}
    if not form.ok:
        orders.refuse_bad_input(order_id, action)
        raise invalid(form)
    return fields


# The fields each transition's body takes; the readers, transitions and roles are the HTML forms'.
TRANSITION_BODIES = {
    "take": {}, "deliver": {"message": str}, "withdraw": {"reason": str}, "cancel": {"reason": str},
    "rate": {"rating": int, "review": str}, "accept": {"rating": int, "review": str},
    "revision": {"reason": str}, "dispute": {"reason": str},
}


def api_transition(order_id, action):
    reader, make, role, _message = orders.FORM_TRANSITIONS[action]
    user = require_role(role)
    make(order_id, user, **read_body(order_id, action, TRANSITION_BODIES[action], reader))
    return order_reply(order_id)


def transition_route(action, path=None):
    """POST /api/v1/orders/<id>/<action>: one transition of SPEC §4; answers the order."""
    @authenticate(required=True)
    @idempotent
    def route(order_id):
        return api_transition(order_id, action)
    routes.post(f"/api/v1/orders/<order_id:id>/{path or action}", callback=route,
                name=f"api_order_{path or action}")


for _action in TRANSITION_BODIES:
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
    fields = read_body(order_id, "offer", {"price": int, "days": int, "message": str}, orders.read_offer_fields)
    created = orders.send_offer(order_id, user, **fields)
    return my_offer_reply(order_id, user, 201 if created else 200)


@routes.post("/api/v1/orders/<order_id:id>/offers/withdraw")
@authenticate(required=True)
@idempotent
def api_offer_withdraw(order_id):
    user = require_role("performer")
    json_form({})
    orders.withdraw_offer(order_id, user)
    return my_offer_reply(order_id, user)


@routes.post("/api/v1/orders/<order_id:id>/offers/<offer_id:id>/accept")
@authenticate(required=True)
@idempotent
def api_offer_accept(order_id, offer_id):
    user = require_role("customer")
    json_form({})
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
    form = Form(request.query)
    after = form.integer("after", required=False, min_value=1, max_value=10**17)
    slug = form.text("category", required=False, max_len=100)
    if not form.ok:
        raise invalid(form)
    category = db_one("category_visible_by_slug", slug=slug) if slug else None
    if slug and category is None:
        raise not_found(_("There is no such category."))
    rows = db_all("performers_catalogue", after=after, limit=CATALOGUE_PAGE + 1,
                  category_id=category["id"] if category else None)
    page = rows[:CATALOGUE_PAGE]
    return reply({"items": [performer_json(row) for row in page],
                  "next": str(page[-1]["id"]) if len(rows) > CATALOGUE_PAGE else None})


@routes.get("/api/v1/performers/<performer_id:id>")
@authenticate(required=False)
def api_performer(performer_id):
    """A public profile with the latest reviews; contacts only for signed-in users, as on the page."""
    row = db_one("performer_public", performer_id=performer_id)
    if row is None:
        raise not_found(_("There is no such performer."))
    reviews = db_all("performer_reviews", performer_id=performer_id, after=None, limit=CATALOGUE_PAGE)
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
    return {"oneOf": [schema, {"type": "null"}]}


TEXT, INTEGER, MOMENT = {"type": "string"}, {"type": "integer"}, {"type": "string", "format": "date-time"}
DATE = {"type": "string", "format": "date"}
PROBLEM = {"$ref": "#/components/responses/Problem"}
UNAUTHORIZED = {"$ref": "#/components/responses/Unauthorized"}


def json_content(schema):
    return {"application/json": {"schema": schema}}


def operation(summary, status, schema, *, problems=(), secured=False, body=None, parameters=(), headers=None,
              also=None):
    """One path/method: its success response (and `also` {status: description} answered with the
    same schema), the problems it may answer, its credentials."""
    success = {"description": summary, "content": json_content(schema), **({"headers": headers} if headers else {})}
    others = {str(code): {"description": text, "content": json_content(schema)} for code, text in (also or {}).items()}
    op = {"summary": summary, "parameters": list(parameters),
          "responses": {str(status): success, **others,
                        **{str(code): UNAUTHORIZED if code == 401 else PROBLEM for code in problems},
                        "default": PROBLEM},
          "security": [{"bearer": []}, {"cookie": []}] + ([] if secured else [{}])}
    if body is not None:
        op["requestBody"] = {"required": False, "content": json_content(body)}
    return op


def parameter(name, where, schema, description=""):
    return {"name": name, "in": where, "required": where == "path", "schema": schema,
            "description": description}


ORDER_ID = parameter("order_id", "path", {"type": "integer", "minimum": 1})
OFFER_ID = parameter("offer_id", "path", {"type": "integer", "minimum": 1})
TRANSITION_PROBLEMS = (400, 401, 403, 404, 409, 415)
FEED_PARAMETERS = [
    parameter("q", "query", TEXT, "full-text search"),
    parameter("category", "query", TEXT, "category slug"),
    parameter("min_budget", "query", INTEGER), parameter("max_budget", "query", INTEGER),
    parameter("sort", "query", {"type": "string", "enum": list(orders.FEED_SORTS)}),
    parameter("after", "query", TEXT, "the `next` of the previous page"),
]
CATEGORY = closed({"slug": TEXT, "name_ru": TEXT, "name_en": TEXT, "open_orders": INTEGER},
                  optional=("open_orders",))
PERSON = closed({"id": INTEGER, "name": TEXT})
PERFORMER = {"id": INTEGER, "name": TEXT, "rating_avg": nullable({"type": "number"}),
             "rating_count": INTEGER, "orders_completed": INTEGER,
             "categories": {"type": "array", "items": ref("Category")}}
PRICE = {"type": "integer", "minimum": 1, "maximum": 100000000}
RATING = {"type": "integer", "minimum": 1, "maximum": 10}
MODE = {"enum": ["take", "offers"]}
REASON = closed({"reason": TEXT})
ORDER_FIELDS_SCHEMA = {"title": TEXT, "description": TEXT, "category": TEXT, "budget": INTEGER,
                       "deadline": nullable(DATE), "mode": MODE}
REVIEW = closed({"order_id": INTEGER, "title": TEXT, "rating": {"type": "integer", "minimum": 1, "maximum": 10},
                 "review": nullable(TEXT), "rated_at": MOMENT})

OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "Birzha API", "version": "1",
             "description": "Orders, performers and categories of Birzha. Errors are RFC 9457 problems."},
    "paths": {
        "/api/v1/orders": {
            "get": operation("Open orders, filtered like /orders", 200, ref("OrderList"),
                             problems=(400, 401), parameters=FEED_PARAMETERS),
            "post": operation("Publish an order (customers)", 201, ref("Order"),
                              problems=(400, 401, 403, 415), secured=True, body=ref("NewOrder"),
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
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/take": {
            "post": operation("Take an open order in take mode (performers)", 200, ref("Order"),
                              problems=TRANSITION_PROBLEMS, secured=True, body=closed({}),
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/deliver": {
            "post": operation("Hand in the work of an order in progress (its performer): it becomes delivered",
                              200, ref("Order"), problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"message": TEXT}), parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/complete": {
            "post": operation("The first name of /deliver, kept for old clients: the same body and answer", 200,
                              ref("Order"), problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"message": TEXT}), parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/withdraw": {
            "post": operation("Give an order in progress back, with a reason (its performer): it is open again",
                              200, ref("Order"), problems=TRANSITION_PROBLEMS, secured=True, body=REASON,
                              parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/accept": {
            "post": operation("Accept the delivered work (its customer), with an optional rating and review: done",
                              200, ref("Order"), problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"rating": nullable(RATING), "review": TEXT},
                                          optional=("rating", "review")),
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
                              body=closed({"reason": TEXT}, optional=("reason",)), parameters=[ORDER_ID]),
        },
        "/api/v1/orders/{order_id}/rate": {
            "post": operation("Rate a done order once (its customer)", 200, ref("Order"),
                              problems=TRANSITION_PROBLEMS, secured=True,
                              body=closed({"rating": RATING, "review": TEXT}, optional=("review",)),
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
                                                         "message": TEXT}),
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
                             parameters=[parameter("category", "query", TEXT, "category slug"),
                                         parameter("after", "query", TEXT, "the `next` of the previous page")]),
        },
        "/api/v1/performers/{performer_id}": {
            "get": operation("A performer's public profile", 200, ref("PerformerProfile"), problems=(401, 404),
                             parameters=[parameter("performer_id", "path", {"type": "integer", "minimum": 1})]),
        },
        "/api/v1/categories": {
            "get": operation("The visible categories", 200, ref("CategoryList")),
        },
        "/api/v1/openapi.json": {
            "get": operation("This document", 200, {"type": "object"}),
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
            "NewOrder": closed(ORDER_FIELDS_SCHEMA, optional=("deadline", "mode")),
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


def query_id(name):
    """A positive id from the query string, or None; a malformed one is a 400."""
    form = Form(request.query)
    value = talk.read_id(form, name)
    if not form.ok:
        raise invalid(form)
    return value


@routes.get("/api/v1/conversations")
@authenticate(required=True)
def api_conversations():
    """The caller's conversations, the latest first (as /messages); `after` is the last `next`."""
    user = current_user()
    form = Form(request.query)
    after = form.text("after", required=False, max_len=100)
    cursor = orders.parse_time_cursor(after) if after and form.ok else (talk.END_OF_TIME, talk.LAST_ID)
    if cursor is None:
        form.errors["after"] = _("This page link is broken. Start again from the first page.")
    if not form.ok:
        raise invalid(form)
    rows = db_all("conversations_inbox", user_id=user["id"], after_at=cursor[0], after_id=cursor[1],
                  limit=talk.INBOX_PAGE + 1)
    page = rows[:talk.INBOX_PAGE]
    return reply({"items": [conversation_json(row, row["order_id"], row["title"]) for row in page],
                  "next": orders.cursor_after(page[-1], "last_message_at") if len(rows) > talk.INBOX_PAGE else None})


@routes.get("/api/v1/orders/<order_id:id>/messages")
@authenticate(required=True)
def api_order_messages(order_id):
    """One conversation of an order: the performer's own, or the customer's `with` a performer
    (the customer's list is GET /api/v1/conversations). Reading it marks it read."""
    with_id = query_id("with")
    view = talk.load_view(order_id, with_id)
    if view.listing:
        raise error_response(400, _("Choose the performer to write to."),
                             problem={"errors": {"with": _("This field is required.")}})
    form = Form(request.query)
    before = form.integer("before", required=False, min_value=1, max_value=talk.LAST_SEQ)
    if not form.ok:
        raise invalid(form)
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
    form = json_form({"body": str, "with": int})
    body = form.text("body", max_len=5000, multiline=True).strip()
    with_id = talk.read_id(form, "with")
    if not form.ok:
        raise invalid(form)
    view = talk.load_view(order_id, with_id)
    if view.listing:
        raise error_response(400, _("Choose the performer to write to."),
                             problem={"errors": {"with": _("This field is required.")}})
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
    page, next_after = talk.notifications_page(user, query_id("after"))
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
    form = json_form({"id": int})
    notification_id = talk.read_id(form, "id")
    if not form.ok:
        raise invalid(form)
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
WITH = parameter("with", "query", {"type": "integer", "minimum": 1},
                 "the performer of the conversation: required for the order's customer")
TALK_PATHS = {
    "/api/v1/conversations": {
        "get": operation("Your conversations, the latest first", 200, ref("ConversationList"),
                         problems=(400, 401), secured=True,
                         parameters=[parameter("after", "query", TEXT, "the `next` of the previous page")]),
    },
    "/api/v1/orders/{order_id}/messages": {
        "get": operation("A conversation of an order (read: marks it read). Staff read one only while the "
                         "order is disputed, and each read is logged", 200, ref("ConversationMessages"),
                         problems=(400, 401, 403, 404), secured=True,
                         parameters=[ORDER_ID, WITH,
                                     parameter("before", "query", {"type": "integer", "minimum": 1},
                                               "the `earlier` of the page shown: older messages")]),
        "post": operation("Write a message (JSON; files go through the HTML form at /orders/{id}/messages)",
                          201, ref("Message"), problems=(400, 401, 403, 404, 409, 415), secured=True,
                          body=closed({"body": {"type": "string", "minLength": 1, "maxLength": 5000},
                                       "with": {"type": "integer", "minimum": 1}}, optional=("with",)),
                          parameters=[ORDER_ID],
                          headers={"Location": {"description": "The conversation's URL", "schema": TEXT}}),
    },
    "/api/v1/files/{file_id}": {
        "get": {**operation("A file's bytes, as a download, to the people of its message or delivery", 200,
                            {"type": "string"}, problems=(401, 404), secured=True,
                            parameters=[parameter("file_id", "path", {"type": "integer", "minimum": 1})]),
                "responses": {"200": {"description": "The file (Content-Disposition: attachment)",
                                      "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                           "format": "binary"}}}},
                              "401": UNAUTHORIZED, "404": PROBLEM, "default": PROBLEM}},
    },
    "/api/v1/notifications": {
        "get": operation("Your notifications, newest first", 200, ref("NotificationList"), problems=(400, 401),
                         secured=True, parameters=[parameter("after", "query", TEXT, "the `next` of the previous page")]),
    },
    "/api/v1/notifications/read": {
        "post": operation("Mark one notification read (`id`), or all of them (no id)", 200,
                          closed({"unread": {"type": "integer", "minimum": 0}}),
                          problems=(400, 401, 403, 404, 415), secured=True,
                          body=closed({"id": {"type": "integer", "minimum": 1}}, optional=("id",))),
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
