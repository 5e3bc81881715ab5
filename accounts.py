"""Accounts: sign-up, sign-in, profiles and the performer catalogue (SPEC §3, §5, §8)."""
import math
import re
import secrets
import zoneinfo

from bottle import request, response

from web import (
    DEFAULT_TIMEZONE, SESSION_COOKIE, Form, Routes, category_name, check_password, client_address, commit,
    csrf_protect, current_lang, current_user, db_all, db_one, db_run, db_table, end_session, error_response,
    hash_password, login_required, ngettext, not_found, password_error, redirect, render, safe_next,
    start_session, token_hash, _,
)

routes = Routes()

ROLES = ("customer", "performer")
PROFILE_FIELDS = ("name", "phone", "messenger", "experience_years", "experience_text", "bio", "timezone")
# The time zones a profile offers: Moscow's neighbours first, then every other IANA name.
COMMON_TIMEZONES = ("Europe/Kaliningrad", "Europe/Moscow", "Europe/Samara", "Asia/Yekaterinburg",
                    "Asia/Omsk", "Asia/Novosibirsk", "Asia/Krasnoyarsk", "Asia/Irkutsk", "Asia/Yakutsk",
                    "Asia/Vladivostok", "Asia/Magadan", "Asia/Kamchatka", "UTC")
ALL_TIMEZONES = sorted(zoneinfo.available_timezones())
PHONE = re.compile(r"[0-9+()\- ]*")
CATALOGUE_PAGE = 20  # performers_catalogue says LIMIT 21: a page and one more
REVIEWS_PAGE = 20  # performer_reviews says LIMIT 21: a page and one more


# ---------------------------------------------------------------------------------------------
# Helpers

def read_password(form, name, *, new=False):
    """A password as typed: never stripped, never echoed back; a new one must suit bcrypt."""
    password = form.raw(name)
    if name in form.errors:
        return ""
    if not password:
        form.errors[name] = _("This field is required.")
    elif "\x00" in password:  # bcrypt would stop reading at the NUL byte
        form.errors[name] = _("The text contains control characters.")
    elif new and password_error(password):
        form.errors[name] = password_error(password)
    return password


def throttle_message(wait_seconds):
    """How many minutes to wait, in words."""
    minutes = max(1, math.ceil(wait_seconds / 60))
    return ngettext("Too many failed sign-in attempts. Try again in %(num)s minute.",
                    "Too many failed sign-in attempts. Try again in %(num)s minutes.", minutes)


def admit_attempt(email):
    """Asks the throttle whether a password for `email` may be checked from this address: 0 means
    the attempt is recorded and committed, so it counts even if the check never finishes, and
    parallel attempts cannot all slip under the limit; otherwise the seconds to wait (nothing
    recorded). No connection is held after it: the bcrypt check that follows is slow."""
    wait = db_one("login_attempt_admit", email=email, address=client_address())["wait_seconds"]
    commit()
    return wait


def sign_in_as(user):
    """Ends the visitor's previous session, if any, and opens a new one of `user` (a fresh token)."""
    old_token = request.get_cookie(SESSION_COOKIE)
    if old_token and len(old_token) < 100:
        db_run("session_delete", token_hash=token_hash(old_token))
    start_session(user)


def render_login(status=200, values=None, errors=None, error=None, status_blocked=False):
    """The login form, keeping a local `next` from the form or the query string."""
    next_url = safe_next(request.forms.getunicode("next") or request.query.getunicode("next") or "", "")
    return render("accounts_login.html", status=status, values=values or {}, errors=errors or {},
                  error=error, next_url=next_url, status_blocked=status_blocked)


# ---------------------------------------------------------------------------------------------
# Sign-up, sign-in, sign-out

@routes.get("/signup")
def signup_form():
    if current_user():
        redirect("/cabinet")
    role = request.query.getunicode("role") or ""
    return render("accounts_signup.html", values={"role": role if role in ROLES else ""}, errors={})


@routes.post("/signup")
@csrf_protect
def signup():
    if current_user():
        redirect("/cabinet")
    form = Form()
    role = form.choice("role", ROLES)
    name = form.text("name", max_len=100)
    email = form.email("email")
    password = read_password(form, "password", new=True)
    if form.ok:
        user = db_one("user_create", role=role, email=email, name=name,
                      password_hash=hash_password(password))
        if user is None:
            form.errors["email"] = _("An account with this email already exists. Log in instead.")
    if not form.ok:
        return render("accounts_signup.html", status=400, values=form.values, errors=form.errors)
    db_run("user_lang_set", user_id=user["id"], lang=current_lang())  # their mail speaks it
    sign_in_as(user)
    redirect("/cabinet", _("Welcome to Birzha, %(name)s! Your account is ready.", name=user["name"]))


@routes.get("/login")
def login_form():
    if current_user():
        redirect(safe_next(request.query.getunicode("next") or "", "/cabinet"))
    return render_login()


@routes.post("/login")
@csrf_protect
def login():
    form = Form()
    email = form.text("email", max_len=254).lower()
    password = read_password(form, "password")
    if not form.ok:
        return render_login(400, form.values, form.errors)
    user = db_one("user_by_email", email=email)
    wait = admit_attempt(email)
    if wait > 0:
        response.set_header("Retry-After", str(wait))
        return render_login(429, form.values, error=throttle_message(wait))
    # An unknown email costs a bcrypt check too, so timing does not tell which emails exist.
    if not check_password(password, user["password_hash"] if user else None):
        return render_login(400, form.values, error=_("Wrong email or password."))
    db_run("login_attempts_clear", email=email, address=client_address())
    if user["is_blocked"]:
        blocked = _("This account is blocked. Contact Birzha support if you think this is a mistake.")
        return render_login(403, form.values, error=blocked, status_blocked=True)
    sign_in_as(user)
    target = safe_next(request.forms.getunicode("next") or "", "/cabinet")
    redirect(target, _("Welcome back, %(name)s!", name=user["name"]))


@routes.post("/logout")
@csrf_protect
def logout():
    end_session()
    redirect("/", _("You have logged out."))


# ---------------------------------------------------------------------------------------------
# Profile

def render_profile(status=200, values=None, errors=None, chosen=None, password_errors=None,
                   new_token=None, token_values=None, token_errors=None):
    """The profile page: the profile form (values/errors), the password form and the API tokens."""
    me = current_user()
    profile = db_one("profile_read", user_id=me["id"])
    if values is None:
        values = {name: str(profile[name]) for name in PROFILE_FIELDS}
    categories = db_all("profile_categories", user_id=me["id"]) if me["role"] == "performer" else []
    if chosen is None:
        chosen = {row["slug"] for row in categories if row["chosen"]}
    return render("accounts_profile.html", status=status, profile=profile, values=values,
                  timezones=[(name, name.replace("_", " ")) for name in COMMON_TIMEZONES]
                  + [(name, name.replace("_", " ")) for name in ALL_TIMEZONES if name not in COMMON_TIMEZONES],
                  errors=errors or {}, categories=categories, chosen=chosen,
                  password_errors=password_errors or {},
                  tokens=db_all("api_tokens_of_user", user_id=me["id"]), new_token=new_token,
                  token_values=token_values or {}, token_errors=token_errors or {},
                  mail=db_one("user_mail_settings", user_id=me["id"]))


def read_categories(form, visible_slugs):
    """The chosen category slugs; anything not offered is an error."""
    chosen = form.source.getall("categories")
    if any(slug not in visible_slugs for slug in chosen):
        form.errors["categories"] = _("Choose one of the options.")
    return sorted(set(chosen) & visible_slugs)


@routes.get("/profile")
@login_required
def profile():
    return render_profile()


@routes.post("/profile")
@csrf_protect
@login_required
def profile_save():
    me = current_user()
    form = Form()
    name = form.text("name", max_len=100)
    phone = form.text("phone", required=False, max_len=40)
    if "phone" not in form.errors and not PHONE.fullmatch(phone):
        form.errors["phone"] = _("A phone number has digits, spaces and + ( ) - only.")
    messenger = form.text("messenger", required=False, max_len=100)
    years = form.integer("experience_years", required=False, min_value=0, max_value=80)
    experience_text = form.text("experience_text", required=False, max_len=2000, multiline=True)
    bio = form.text("bio", required=False, max_len=2000, multiline=True)
    timezone = form.choice("timezone", ALL_TIMEZONES, required=False) or DEFAULT_TIMEZONE
    if me["role"] != "performer":  # a customer's form has no experience: keep what is stored
        stored = db_one("profile_read", user_id=me["id"])
        years, experience_text = stored["experience_years"], stored["experience_text"]
    slugs = []
    if me["role"] == "performer":
        slugs = read_categories(form, {row["slug"] for row in db_all("categories_list")})
    if not form.ok:
        return render_profile(400, form.values, form.errors, chosen=set(slugs))
    db_one("profile_update", user_id=me["id"], name=name, phone=phone, messenger=messenger,
           experience_years=years or 0, experience_text=experience_text, bio=bio, timezone=timezone)
    db_run("user_lang_set", user_id=me["id"], lang=current_lang())
    # Both statements are conditioned on the user being a performer; for a customer they do nothing.
    db_run("performer_categories_drop_unchosen", user_id=me["id"], slugs=slugs)
    db_run("performer_categories_add_chosen", user_id=me["id"], slugs=slugs)
    redirect("/profile", _("Your profile is saved."))


@routes.post("/profile/password")
@csrf_protect
@login_required
def password_change():
    me = current_user()
    form = Form()
    current = read_password(form, "current_password")
    new = read_password(form, "new_password", new=True)
    account = db_one("user_password_hash", user_id=me["id"])
    if "current_password" not in form.errors:
        # Guessing the current password counts against the same limits as guessing at the login form.
        wait = admit_attempt(account["email"])
        if wait > 0:
            response.set_header("Retry-After", str(wait))
            form.errors["current_password"] = throttle_message(wait)
            return render_profile(429, password_errors=form.errors)
        if check_password(current, account["password_hash"]):
            db_run("login_attempts_clear", email=account["email"], address=client_address())
        else:
            form.errors["current_password"] = _("The current password is wrong.")
    if not form.ok:
        return render_profile(400, password_errors=form.errors)
    changed = db_one("user_password_change", user_id=me["id"], old_hash=account["password_hash"],
                     new_hash=hash_password(new))
    if changed is None:
        raise error_response(409, _("The password was changed elsewhere at the same moment. Log in again."))
    # The trigger has ended every session of this user; the person who changed it stays signed in.
    start_session(me)
    redirect("/profile", _("Your password is changed. Every other session is logged out."))


@routes.post("/profile/email")
@csrf_protect
@login_required
def email_settings_save():
    """Notification mail on or off (a checkbox: absent means off)."""
    on = bool(request.forms.getunicode("email_notifications"))
    db_run("user_email_notifications_set", user_id=current_user()["id"], on=on)
    redirect("/profile", _("Notification e-mails are on.") if on else _("Notification e-mails are off."))


# ---------------------------------------------------------------------------------------------
# Password reset by e-mail (SPEC §11): the same answer whether the address is known or not,
# throttled per email and per address, a link valid one hour and once, stored hashed.

RESET_TOKEN = r"[A-Za-z0-9_-]{20,100}"


def reset_page(token, valid, status=200, errors=None):
    """The page behind a reset link; it is never kept in a cache (Referrer-Policy: same-origin, as
    everywhere, keeps the link from other sites)."""
    response.set_header("Cache-Control", "no-store")
    return render("accounts_reset.html", status=status, token=token, valid=valid, errors=errors or {})


def reset_link_valid(token):
    """Whether a token is well formed and names a reset link still unused and in its hour."""
    return bool(re.fullmatch(RESET_TOKEN, token)) and db_one("password_reset_valid", token_hash=token_hash(token)) is not None


@routes.get("/password/forgot")
def password_forgot_form():
    return render("accounts_forgot.html", values={}, errors={}, error=None)


@routes.post("/password/forgot")
@csrf_protect
def password_forgot():
    """Records the request and, when the address is an account's, queues the mail with a link;
    the tick sends it. The answer is the same for an address that has no account."""
    form = Form()
    email = form.email("email")
    if not form.ok:
        return render("accounts_forgot.html", status=400, values=form.values, errors=form.errors, error=None)
    token = secrets.token_urlsafe(32)
    wait = db_one("password_reset_request", email=email, address=client_address(), token=token)["wait_seconds"]
    if wait > 0:
        response.set_header("Retry-After", str(wait))
        minutes = max(1, math.ceil(wait / 60))
        error = ngettext("Too many requests for a new password. Try again in %(num)s minute.",
                         "Too many requests for a new password. Try again in %(num)s minutes.", minutes)
        return render("accounts_forgot.html", status=429, values=form.values, errors={}, error=error)
    redirect("/login", _("If an account uses this address, a link to choose a new password is on its way. "
                         "It works once, for one hour."))


@routes.get("/password/reset/<token>")
def password_reset_form(token):
    valid = reset_link_valid(token)
    return reset_page(token, valid, status=200 if valid else 400)


@routes.post("/password/reset/<token>")
@csrf_protect
def password_reset(token):
    """Sets the new password once (the link is used up in the same statement) and ends every
    session of the account, the visitor's own included: they log in with the new password."""
    form = Form()
    new = read_password(form, "new_password", new=True)
    if not reset_link_valid(token):
        return reset_page(token, False, status=400)
    if not form.ok:
        return reset_page(token, True, status=400, errors=form.errors)
    commit()  # no connection held while bcrypt works
    changed = db_one("password_reset_use", token_hash=token_hash(token), password_hash=hash_password(new))
    if changed is None:
        return reset_page(token, False, status=400)
    db_run("login_attempts_clear", email=changed["email"], address=client_address())
    end_session()
    redirect("/login", _("Your password is changed and every session is logged out. Log in with the new password."))


# ---------------------------------------------------------------------------------------------
# Personal API tokens (SPEC §6): shown once, stored as a SHA-256, revoked one by one.
# A password change leaves them alive: each is a separate credential that its owner revokes here.

API_TOKEN_PREFIX = "bz_"
MAX_API_TOKENS = 10


@routes.post("/profile/tokens")
@csrf_protect
@login_required
def api_token_create():
    me = current_user()
    form = Form()
    label = form.text("label", max_len=60)
    if not form.ok:
        return render_profile(400, token_values=form.values, token_errors=form.errors)
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    if db_one("api_token_create", user_id=me["id"], token_hash=token_hash(token), label=label,
              max_tokens=MAX_API_TOKENS) is None:
        form.errors["label"] = _("You already have the most tokens allowed (%(n)s). Revoke one first.",
                                       n=MAX_API_TOKENS)
        return render_profile(409, token_values=form.values, token_errors=form.errors)
    response.set_header("Cache-Control", "no-store")  # the page shows the token this once
    return render_profile(201, new_token=token)


@routes.post("/profile/tokens/<token_id:id>/revoke")
@csrf_protect
@login_required
def api_token_revoke(token_id):
    if db_one("api_token_revoke", token_id=token_id, user_id=current_user()["id"]) is None:
        raise not_found(_("There is no such token."))
    redirect("/profile", _("The token is revoked. It no longer works."))


# ---------------------------------------------------------------------------------------------
# The performer catalogue and public profiles

def cursor_from_query():
    """The keyset cursor `after` (an id) from the query string; a malformed one is a 400."""
    form = Form(request.query)
    after = form.integer("after", required=False, min_value=1, max_value=10**17)
    if not form.ok:
        raise error_response(400, _("This page link is broken. Start from the first page."))
    return after


@routes.get("/performers", read_only=True)
def performers():
    after = cursor_from_query()
    slug = (request.query.getunicode("category") or "").strip()
    category = None
    if slug:
        category = db_one("category_visible_by_slug", slug=slug)
        if category is None:
            raise not_found(_("There is no such category."))
    performers_page, more, categories = catalogue_page(after, category)
    base = "/performers?" + (f"category={category['slug']}&" if category else "")
    next_url = base + f"after={performers_page[-1]['id']}" if more else None
    # a card's categories as (slug, name) pairs: a row kept rendered (web.kept) is made of values
    cards = [dict(row, categories=tuple((c["slug"], category_name(c)) for c in row["categories"]))
             for row in performers_page]
    return render("accounts_performers.html", performers=cards, category=category,
                  categories=categories, next_url=next_url, first_url=base.rstrip("?&") if after else None)


def catalogue_page(after, category):
    """A page of the catalogue after the performer `after` (of one category, or all): (performers,
    whether more follow, the visible categories). Each performer's `categories` are the visible
    ones of theirs, named from that list."""
    if category is None:
        rows = db_all("performers_catalogue", after=after)
    else:
        rows = db_all("performers_catalogue_in_category", after=after, category_id=category["id"])
    categories = db_all("categories_list")
    by_id = {row["id"]: row for row in categories}
    for row in rows:
        row["categories"] = [by_id[n] for n in row.pop("category_ids") if n in by_id]
    return rows[:CATALOGUE_PAGE], len(rows) > CATALOGUE_PAGE, categories


@routes.get("/performers/<performer_id:id>", read_only=True)
def performer_page(performer_id):
    performer = db_one("performer_public", performer_id=performer_id)
    if performer is None:
        raise not_found(_("There is no such performer."))
    after = cursor_from_query()
    columns, reviews = db_table("performer_reviews", performer_id=performer_id, after=after)  # a page and one more
    base = f"/performers/{performer_id}"
    last_id = reviews[REVIEWS_PAGE - 1][columns.index("id")] if len(reviews) > REVIEWS_PAGE else None
    next_url = f"{base}?after={last_id}" if last_id else None
    return render("accounts_performer.html", performer=performer, columns=columns, reviews=reviews[:REVIEWS_PAGE],
                  next_url=next_url, first_url=base if after else None)
