"""Orders: the home page, the feed, order pages, transitions and the cabinets (SPEC §4–5)."""
from app import app, db_all, render


@app.get("/")
def home():
    return render("home.html", latest=db_all("orders_latest_open", limit=10))


@app.get("/orders")
def feed():
    return render("orders_feed.html", orders=db_all("orders_latest_open", limit=20),
                  categories=db_all("categories_list"))
