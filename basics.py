"""The routes every site has: static files, the health check, the language switch, the contact page."""
import bottle
import psycopg
import psycopg_pool
from bottle import request, response

from web import (LANGUAGES, ROOT, Routes, current_user, db_one, db_run, end_transaction, not_found, redirect,
                 render, safe_next, set_cookie)

routes = Routes()


@routes.get("/static/<filename:path>", skip=True)
def static(filename):
    return bottle.static_file(filename, root=str(ROOT / "static"))


@routes.get("/healthz")
def healthz():
    response.content_type = "text/plain"
    try:
        db_one("health_check")
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
        end_transaction(commit=False)
        response.status = 503
        return "database unavailable\n"
    return "ok\n"


@routes.get("/lang/<code>")
def switch_language(code):
    """Remembers the chosen language in a cookie and goes back where the visitor was."""
    if code not in LANGUAGES:
        raise not_found()
    set_cookie("lang", code, 365 * 86400)
    request.environ["birzha.lang"] = code
    if current_user():
        db_run("user_lang_set", user_id=current_user()["id"], lang=code)  # their mail speaks it too
    redirect(safe_next(request.query.getunicode("next") or "/"))


@routes.get("/contact")
def contact():
    """Where to write: the support address of the configuration (SUPPORT_EMAIL)."""
    return render("contact.html", support_email=request.app.config.get("support_email", ""))
