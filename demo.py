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

# (customer, category, title, description, budget, days to deadline, mode, fate, performer, rating, review)
ORDERS = [
    ("anna", "design", "Логотип для кофейни", "Нужен логотип для небольшой кофейни в Казани: тёплые цвета, узнаваемый знак.", 5000, 14, "offers", "open", None, None, None),
    ("anna", "development", "Landing page for a bakery", "A one-page site with a menu, a map and a contact form. Static HTML is fine.", 25000, 30, "take", "open", None, None, None),
    ("boris", "texts", "Перевод инструкции на английский", "Инструкция к кофемашине, 6 страниц, технический перевод.", 4000, 7, "take", "open", None, None, None),
    ("boris", "seo", "SEO audit of an online shop", "Audit of 200 product pages, a list of fixes ranked by impact.", 15000, None, "offers", "open", None, None, None),
    ("anna", "marketing", "Контент-план для соцсетей на месяц", "30 постов для ВКонтакте и Telegram, тема: домашняя выпечка.", 8000, 20, "take", "in_progress", "dina", None, None),
    ("boris", "development", "Telegram bot for table bookings", "Bot in Python: pick a date, a time and a table; notify the manager.", 30000, 21, "offers", "delivered", "gleb", None, None),
    ("anna", "design", "Баннер для распродажи", "Три баннера разных размеров для сайта и соцсетей.", 3000, None, "take", "done", "vera", None, None),
    ("boris", "design", "Business cards", "Two-sided business cards for three employees.", 2500, None, "take", "done", "vera", 9, "Fast and careful, thank you!"),
    ("anna", "texts", "Тексты для карточек товаров", "20 описаний товаров для маркетплейса, по 500 знаков.", 6000, None, "take", "done", "dina", 10, "Отличные тексты, всё в срок."),
    ("boris", "development", "Fix a bug in a Django form", "The signup form loses the phone number on validation errors.", 7000, None, "take", "done", "gleb", 7, "Fixed, but took a day longer than agreed."),
    ("anna", "audio-video", "Монтаж ролика для YouTube", "Ролик 10 минут, простой монтаж и титры.", 5000, None, "take", "cancelled", None, None, None),
    ("boris", "marketing", "Ad campaign setup", "Set up search ads for a furniture shop.", 12000, None, "take", "disputed", "gleb", None, None),
]
# Conversations: (order title, performer, [(sender, body), …])
CONVERSATIONS = [
    ("Логотип для кофейни", "vera", [("vera", "Здравствуйте! Есть ли у кофейни фирменные цвета или начинаем с нуля?"),
                                      ("anna", "С нуля. Хочется тёплых оттенков, как у свежей выпечки.")]),
    ("Контент-план для соцсетей на месяц", "dina", [("dina", "Hi! Could you share the photos of your pastries?"),
                                                    ("anna", "Пришлю сегодня вечером.")]),
]
# Offers on the open orders in offers mode: (order title, performer, price, days, message)
OFFERS = [
    ("Логотип для кофейни", "vera", 4500, 5, "Сделаю три варианта знака и фирменные цвета, правки без ограничений."),
    ("Логотип для кофейни", "dina", 6000, 7, "Logo plus a short brand guide for the menu and the signboard."),
    ("SEO audit of an online shop", "gleb", 14000, 10, "Audit with a crawl report and a ranked list of fixes."),
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

    def act(who, query, note="", **params):
        """One step of the story, as the app makes it: the actor named, then the statement."""
        connection.execute(Q["actor_set"], {"actor_id": str(who), "note": note, "staff": False})
        return connection.execute(Q[query], params).fetchone()

    today = datetime.date.today()
    titles = {}
    for customer, category, title, description, budget, days, mode, fate, performer, rating, review in ORDERS:
        buyer = ids[customer]
        order_id = act(buyer, "order_create", customer_id=buyer, category=category, title=title,
                       description=description, budget=budget, mode=mode,
                       deadline=today + datetime.timedelta(days=days) if days else None)["id"]
        titles[title] = order_id
        if performer and mode == "offers":
            offer = act(ids[performer], "offer_submit", order_id=order_id, performer_id=ids[performer],
                        price=budget - 1000, days=10, message="Готов начать сегодня. / Ready to start today.")
            act(buyer, "offer_accept", order_id=order_id, offer_id=offer["id"], customer_id=buyer)
        elif performer:
            act(ids[performer], "order_take", order_id=order_id, performer_id=ids[performer])
        if fate in ("delivered", "done"):
            act(ids[performer], "order_deliver", order_id=order_id, performer_id=ids[performer],
                message="Готово, файлы по ссылке в сообщении. / Done, the files are linked in the message.")
        if fate == "done":
            act(buyer, "order_accept", order_id=order_id, customer_id=buyer, rating=rating, review=review or "")
        elif fate == "disputed":
            act(buyer, "order_dispute", "The ads stopped after two days and nobody answers.",
                order_id=order_id, user_id=buyer)
        elif fate == "cancelled":
            act(buyer, "order_cancel", "Передумал", order_id=order_id, actor_id=buyer, reason="Передумал")
    for title, performer, price, days, message in OFFERS:
        act(ids[performer], "offer_submit", order_id=titles[title], performer_id=ids[performer],
            price=price, days=days, message=message)
    for title, performer, lines in CONVERSATIONS:
        for sender, body in lines:
            conversation = act(ids[sender], "conversation_open", order_id=titles[title],
                               performer_id=ids[performer], sender_id=ids[sender])
            act(ids[sender], "message_send", conversation_id=conversation["id"], sender_id=ids[sender], body=body)
    # The demo people are not real: the mail of the story above goes nowhere (what happens
    # afterwards, under `make run`, is mailed to the log by the tick).
    connection.execute(Q["mail_outbox_settle_all"])
    connection.commit()
    print(f"Demo data loaded: {len(PEOPLE) + 1} accounts, {len(ORDERS)} orders (staff id {staff['id']}).")
    print_logins()
    return 0


def print_logins():
    print(f"Demo logins (password for all: {DEMO_PASSWORD}):")
    for _key, role, email, _name, _cats in PEOPLE:
        print(f"  {role:<10} {email}")
    print(f"  {'staff':<10} {STAFF[0]}")
