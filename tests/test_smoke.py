def test_home_and_feed_render_open_orders_from_the_database(client, make_user, make_order):
    anna = make_user("customer")
    make_order(anna, title="Logo for a coffee shop")
    assert "Logo for a coffee shop" in client.get("/").text
    assert "Logo for a coffee shop" in client.get("/orders").text
