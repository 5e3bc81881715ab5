"""Demo data for `make run`: people of every kind and orders in every state.

Everything goes through the same named queries the app uses, so the triggers see the usual path.
"""
import datetime

from db import Q
from web import hash_password

DEMO_PASSWORD = "demo-pass-2026"

PEOPLE = [
    # (key, role, email, name, categories)
    ("anna", "customer", "anna@demo.birzha", "Анна Смирнова", []),
    ("boris", "customer", "boris@demo.birzha", "Boris Kuznetsov", []),
    ("vera", "performer", "vera@demo.birzha", "Вера Дизайнер", ["design", "marketing"]),
    ("gleb", "performer", "gleb@demo.birzha", "Глеб Разработчик", ["development", "seo"]),
    ("dina", "performer", "dina@demo.birzha", "Dina Writer", ["texts", "marketing"]),
]
STAFF = ("admin@demo.birzha", "Админ Биржи")

# (customer, category, title, description, budget, days to deadline, fate, performer, rating, review)
ORDERS = [
    ("anna", "design", "Логотип для кофейни", "Нужен логотип для небольшой кофейни в Казани: тёплые цвета, узнаваемый знак.", 5000, 14, "open", None, None, None),
    ("anna", "development", "Landing page for a bakery", "A one-page site with a menu, a map and a contact form. Static HTML is fine.", 25000, 30, "open", None, None, None),
    ("boris", "texts", "Перевод инструкции на английский", "Инструкция к кофемашине, 6 страниц, технический перевод.", 4000, 7, "open", None, None, None),
    ("boris", "seo", "SEO audit of an online shop", "Audit of 200 product pages, a list of fixes ranked by impact.", 15000, None, "open", None, None, None),
    ("anna", "marketing", "Контент-план для соцсетей на месяц", "30 постов для ВКонтакте и Telegram, тема: домашняя выпечка.", 8000, 20, "in_progress", "dina", None, None),
    ("boris", "development", "Telegram bot for table bookings", "Bot in Python: pick a date, a time and a table; notify the manager.", 30000, 21, "in_progress", "gleb", None, None),
    ("anna", "design", "Баннер для распродажи", "Три баннера разных размеров для сайта и соцсетей.", 3000, None, "done", "vera", None, None),
    ("boris", "design", "Business cards", "Two-sided business cards for three employees.", 2500, None, "done", "vera", 9, "Fast and careful, thank you!"),
    ("anna", "texts", "Тексты для карточек товаров", "20 описаний товаров для маркетплейса, по 500 знаков.", 6000, None, "done", "dina", 10, "Отличные тексты, всё в срок."),
    ("boris", "development", "Fix a bug in a Django form", "The signup form loses the phone number on validation errors.", 7000, None, "done", "gleb", 7, "Fixed, but took a day longer than agreed."),
    ("anna", "audio-video", "Монтаж ролика для YouTube", "Ролик 10 минут, простой монтаж и титры.", 5000, None, "cancelled", None, None, None),
    ("boris", "marketing", "Ad campaign setup", "Set up search ads for a furniture shop.", 12000, None, "cancelled", "gleb", None, None),
]


def seed(connection, only_if_empty=False):
    """Loads the demo data; with only_if_empty, does nothing when any account exists."""
    if only_if_empty and connection.execute(Q["user_count"]).fetchone()["n"] > 0:
        print("Demo data: already there.")
        print_logins()
        return 0
    password_hash = hash_password(DEMO_PASSWORD)
    ids = {}
    for key, role, email, name, categories in PEOPLE:
        row = connection.execute(Q["user_create"], {"role": role, "email": email, "name": name,
                                                    "password_hash": password_hash}).fetchone()
        if row is None:
            print(f"Demo data: {email} exists, nothing loaded.")
            return 1
        ids[key] = row["id"]
        if categories:
            connection.execute(Q["performer_categories_add"], {"performer_id": row["id"], "slugs": categories})
    staff = connection.execute(Q["user_create"], {"role": "customer", "email": STAFF[0], "name": STAFF[1],
                                                  "password_hash": password_hash}).fetchone()
    connection.execute(Q["user_make_staff"], {"email": STAFF[0], "password_hash": password_hash})
    today = datetime.date.today()
    for customer, category, title, description, budget, days, fate, performer, rating, review in ORDERS:
        connection.execute(Q["actor_set"], {"actor_id": str(ids[customer]), "note": ""})
        order_id = connection.execute(Q["order_create"], {
            "customer_id": ids[customer], "category": category, "title": title, "description": description,
            "budget": budget, "deadline": today + datetime.timedelta(days=days) if days else None,
        }).fetchone()["id"]
        if performer:
            connection.execute(Q["actor_set"], {"actor_id": str(ids[performer]), "note": ""})
            connection.execute(Q["order_take"], {"order_id": order_id, "performer_id": ids[performer]})
        if fate == "done":
            connection.execute(Q["order_complete"], {"order_id": order_id, "performer_id": ids[performer]})
            if rating:
                connection.execute(Q["actor_set"], {"actor_id": str(ids[customer]), "note": ""})
                connection.execute(Q["order_rate"], {"order_id": order_id, "customer_id": ids[customer],
                                                     "rating": rating, "review": review})
        elif fate == "cancelled":
            connection.execute(Q["actor_set"], {"actor_id": str(ids[customer]), "note": ""})
            connection.execute(Q["order_cancel"], {"order_id": order_id, "actor_id": ids[customer],
                                                   "reason": "Передумал" if performer is None else "Plans changed"})
    connection.commit()
    print(f"Demo data loaded: {len(PEOPLE) + 1} accounts, {len(ORDERS)} orders (staff id {staff['id']}).")
    print_logins()
    return 0


def print_logins():
    print(f"Demo logins (password for all: {DEMO_PASSWORD}):")
    for _key, role, email, _name, _cats in PEOPLE:
        print(f"  {role:<10} {email}")
    print(f"  {'staff':<10} {STAFF[0]}")
