"""A shopper's walk through the storefront in headless Chromium, driven over WebDriver.

Run by ops/stack-tests/tests/storefront.rs against a gateway in front of the real services:

    walk.py --base http://127.0.0.1:PORT --admin-token TOKEN --shots DIR

browse -> search -> product -> "Add to cart" -> "Cart" -> "Checkout" -> "Place order" ->
confirmation -> "Your orders"; an add of a product whose stock an operator set to 0; the same
pages in a 390 px wide window; a cart changed in another tab (412) and a failing cart service
(503) shown as messages. With --sign-in, against a gateway with edge auth and DEV_TOKEN_ROUTE on:
the sign-in with a development token, then the cart. Every step leaves a screenshot in DIR. On success the last line
on stdout is a JSON object (the order id, the shopper, what was checked); any failed check exits
non-zero with the reason on stderr.
"""

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT_SECONDS = 15
SEARCH = "headphones"
PRODUCT = "Aurora Wireless Headphones"
SOLD_OUT = "prod-112"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Failed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failed(message)


class Walk:
    def __init__(self, base, admin_token, shots):
        self.base = base.rstrip("/")
        self.origin = urllib.parse.urlsplit(self.base)
        self.admin_token = admin_token
        self.shots = shots
        self.step = 0
        self.requests = []  # every request the browser sent: (url, headers)
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--window-size=1280,900",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        self.driver.set_page_load_timeout(WAIT_SECONDS)

    # --- helpers ------------------------------------------------------------------------------

    def wait(self, condition, what):
        try:
            # The page re-renders views: an element found a moment ago may be gone; look again.
            return WebDriverWait(
                self.driver, WAIT_SECONDS, ignored_exceptions=[StaleElementReferenceException]
            ).until(condition)
        except TimeoutException:
            self.driver.save_screenshot(f"{self.shots}/failed.png")
            main = self.driver.find_element(By.ID, "main").text
            raise Failed(f"timed out waiting for {what}; the page shows:\n{main}") from None

    def shot(self, name):
        main = self.driver.find_element(By.ID, "main").text
        leaked = re.search(r"\b(null|undefined|NaN)\b|\[object |\{\"", main)
        check(not leaked, f"{name}: the page shows {leaked.group(0) if leaked else ''!r}:\n{main}")
        self.step += 1
        path = f"{self.shots}/{self.step:02d}-{name}.png"
        self.driver.save_screenshot(path)

    def heading(self, text):
        return self.wait(
            EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main h1"), text), f"heading {text!r}"
        )

    def control(self, tag, name):
        """The visible control whose text is exactly `name`, as a shopper would find it."""
        xpath = f"//{tag}[normalize-space()='{name}']"
        return self.wait(EC.element_to_be_clickable((By.XPATH, xpath)), f"{tag} {name!r}")

    def notice(self, pattern):
        def shown(driver):
            for element in driver.find_elements(By.CSS_SELECTOR, "main .notice"):
                if element.is_displayed() and re.search(pattern, element.text, re.I):
                    return element
            return False

        return self.wait(shown, f"a message matching {pattern!r}")

    def drain_network(self):
        """Requests the browser sent since the last call (Chromium's network log)."""
        sent = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                request = message["params"]["request"]
                headers = {name.lower(): value for name, value in request.get("headers", {}).items()}
                sent.append((request["url"], headers))
        self.requests.extend(sent)
        return sent

    def api_calls(self, sent):
        calls = []
        for url, headers in sent:
            path = urllib.parse.urlsplit(url).path
            if path.startswith(("/catalog", "/v1/cart", "/api/")):
                calls.append((url, headers))
        return calls

    def api(self, method, path, body, token=None):
        headers = {"content-type": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as answer:
            return json.load(answer)

    def admin(self, method, path, body):
        return self.api(method, path, body, self.admin_token)

    def no_horizontal_scroll(self, where):
        width = self.driver.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth, window.innerWidth]"
        )
        check(width[0] <= width[1], f"{where}: horizontal scroll at {width[2]} px (content {width[0]} px wide)")

    # --- the walk -----------------------------------------------------------------------------

    def run(self):
        driver = self.driver
        driver.get(self.base + "/")
        self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "main .grid .card")), "the product grid")
        self.heading("Products")
        categories = [link.text for link in driver.find_elements(By.CSS_SELECTOR, "nav.categories a")]
        check({"All", "Electronics", "Home", "Apparel"} <= set(categories), f"categories shown: {categories}")
        for image in driver.find_elements(By.CSS_SELECTOR, "main img"):
            check(image.get_attribute("alt"), "a product picture without alt text")
        shopper = driver.find_element(By.ID, "shopper-id").text
        check(re.match(r"^shopper-[0-9a-f]{12}$", shopper), f"shopper id {shopper!r}")
        self.shot("products")

        # Search, with the keyboard only.
        search = driver.find_element(By.CSS_SELECTOR, "input[type=search]")
        search.send_keys(SEARCH, Keys.ENTER)
        self.heading(f"Results for “{SEARCH}”")
        product_link = self.wait(
            EC.element_to_be_clickable((By.XPATH, f"//main//a[.//h2[normalize-space()='{PRODUCT}']]")),
            f"{PRODUCT} among the results",
        )
        self.shot("search")

        product_link.click()
        self.heading(PRODUCT)
        check(re.search(r"\$\d+\.\d\d", driver.find_element(By.CSS_SELECTOR, "main .price").text), "a price")
        check("in stock" in driver.find_element(By.ID, "product-stock").text, "the stock")
        self.shot("product")

        self.drain_network()
        self.control("button", "Add to cart").click()
        self.notice(f"Added 1 × {PRODUCT}")
        self.shot("added-to-cart")

        # One trace per click: the add and the stock read after it share the click's trace id.
        time.sleep(0.2)
        calls = self.api_calls(self.drain_network())
        check(len(calls) >= 2, f"Add to cart made {len(calls)} API calls: {calls}")
        trace_ids = set()
        for url, headers in calls:
            parent = TRACEPARENT.match(headers.get("traceparent", ""))
            check(parent, f"{url} carries no sampled W3C traceparent: {headers.get('traceparent')!r}")
            trace_ids.add(parent.group(1))
        check(len(trace_ids) == 1, f"one click, several traces: {trace_ids}")

        self.control("a", "Cart").click()
        self.heading("Cart")
        self.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main .lines"), PRODUCT), "the cart line")
        quantity = driver.find_element(By.XPATH, f"//label[normalize-space()='Quantity of {PRODUCT}']")
        field = driver.find_element(By.ID, quantity.get_attribute("for"))
        field.clear()
        field.send_keys("2", Keys.ENTER)
        self.notice("quantity set to 2")
        total = driver.find_element(By.ID, "cart-total").text
        check(total == "$159.98", f"cart total {total!r} for 2 × $79.99")
        self.shot("cart")

        self.control("button", "Checkout").click()
        self.heading("Checkout")
        label = self.wait(
            EC.presence_of_element_located((By.XPATH, "//label[normalize-space()='Shipping address']")),
            "the Shipping address field",
        )
        address = driver.find_element(By.ID, label.get_attribute("for"))
        address.send_keys("1 Browser Lane, Testville")
        self.shot("checkout")

        self.control("button", "Place order").click()
        self.heading("Thank you for your order")
        order_id = driver.find_element(By.ID, "order-id").text
        check(UUID.match(order_id), f"order id {order_id!r}")
        self.shot("confirmation")

        self.control("a", "Your orders").click()
        self.heading("Your orders")
        row = self.wait(
            EC.presence_of_element_located((By.XPATH, f"//main//li[.//code[normalize-space()='{order_id}']]")),
            "the order in Your orders",
        )
        check(re.search(r"pending|confirmed", row.text, re.I), f"the order's status: {row.text!r}")
        check("Page 1 of 1" in driver.find_element(By.CSS_SELECTOR, "main .pager").text, "the orders' pages")
        self.shot("your-orders")

        # Out of stock: an operator sets the stock to 0, then the shopper tries to add it.
        self.admin("PUT", f"/admin/stock/{SOLD_OUT}", {"stock": 0})
        driver.get(f"{self.base}/#/product/{SOLD_OUT}")
        self.wait(EC.text_to_be_present_in_element((By.ID, "product-stock"), "Out of stock"), "Out of stock")
        self.control("button", "Add to cart").click()
        message = self.notice("out of stock").text
        check("{" not in message, f"raw JSON shown: {message}")
        self.shot("out-of-stock")

        # A cart changed elsewhere (another tab, here the API): the stale write is a 412, which
        # the page explains, then it shows the cart as it now is.
        driver.get(f"{self.base}/#/product/prod-110")
        self.heading(PRODUCT)
        self.control("button", "Add to cart").click()
        self.notice(f"Added 1 × {PRODUCT}")
        self.control("a", "Cart").click()
        self.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main .lines"), PRODUCT), "the cart line")
        shopper_path = urllib.parse.quote(shopper)
        self.api("POST", f"/v1/cart/{shopper_path}/items", {"product_id": "prod-111", "quantity": 1})
        field = driver.find_element(By.CSS_SELECTOR, "main .lines input[type=number]")
        field.clear()
        field.send_keys("3", Keys.ENTER)
        self.notice("changed in another tab")
        self.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main .lines"), "Pulse Earbuds Pro"), "the reloaded cart")
        self.shot("cart-changed-elsewhere")

        # The cart service failing: a readable 503, and the button usable again afterwards.
        self.admin("PUT", "/admin/cart/simulation", {
            "enabled": True, "applies_to": "writes", "failure_rate": 1.0, "failure_status": 503,
            "latency_min_ms": 0, "latency_max_ms": 0,
        })
        try:
            driver.find_element(By.XPATH, "//main//button[normalize-space()='Remove']").click()
            message = self.notice("The cart is unavailable right now").text
            check("{" not in message, f"raw JSON shown: {message}")
            self.control("button", "Remove")
            self.shot("cart-unavailable")
        finally:
            self.admin("PUT", "/admin/cart/simulation", {"enabled": False, "failure_rate": 0.0})

        # A phone: 390 px wide, no horizontal scroll on any page.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        for name, fragment, ready in (
            ("phone-products", "#/", "main .grid .card"),
            ("phone-product", "#/product/prod-110", "main form.add"),
            ("phone-cart", "#/cart", "main h1"),
            ("phone-your-orders", "#/orders", "main .orders"),
            ("phone-order", f"#/order/{order_id}", "#order-id"),
        ):
            driver.get(f"{self.base}/{fragment}")
            self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, ready)), name)
            time.sleep(0.1)
            self.no_horizontal_scroll(name)
            self.shot(name)
        # And a real 390 px window (its scroll bar takes part of the width), not only emulation.
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        driver.set_window_size(390, 844)
        for fragment in ("#/", "#/cart", f"#/order/{order_id}"):
            driver.get(f"{self.base}/{fragment}")
            self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "main h1")), fragment)
            time.sleep(0.1)
            self.no_horizontal_scroll(f"a 390 px window at {fragment}")

        # Nothing from another host, and nothing the CSP had to block.
        self.drain_network()
        foreign = [url for url, _ in self.requests if not self.same_origin(url)]
        check(not foreign, f"requests to another origin: {foreign}")
        blocked = [
            entry["message"]
            for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
        ]
        check(not blocked, f"the CSP blocked something: {blocked}")
        return {
            "order_id": order_id,
            "shopper": shopper,
            "requests": len(self.requests),
            "screenshots": self.step,
        }

    def sign_in(self):
        """With edge auth on: the cart asks for a sign-in, a development token signs in, and the
        shopper's cart works with it."""
        driver = self.driver
        driver.get(self.base + "/")
        self.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "main .grid .card")), "the product grid")
        self.wait(EC.visibility_of_element_located((By.ID, "nav-sign-in")), "Sign in in the header")
        self.control("a", "Cart").click()
        self.notice("Please sign in")
        self.shot("auth-cart-needs-sign-in")
        driver.find_element(By.ID, "nav-sign-in").click()
        self.heading("Sign in")
        self.control("button", "Get a development token").click()
        message = self.notice("Signed in as").text
        shopper = driver.find_element(By.ID, "shopper-id").text
        check(shopper in message, f"signed in as {message!r}, the page shops as {shopper!r}")
        self.shot("auth-signed-in")
        driver.get(f"{self.base}/#/product/prod-110")
        self.heading(PRODUCT)
        self.control("button", "Add to cart").click()
        self.notice(f"Added 1 × {PRODUCT}")
        self.control("a", "Cart").click()
        self.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "main .lines"), PRODUCT), "the cart line")
        self.shot("auth-cart")
        return {"shopper": shopper, "screenshots": self.step}

    def same_origin(self, url):
        parts = urllib.parse.urlsplit(url)
        return (parts.scheme, parts.netloc) == (self.origin.scheme, self.origin.netloc)

    def close(self):
        self.driver.quit()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument("--sign-in", action="store_true", help="the walk of a gateway with edge auth and DEV_TOKEN_ROUTE on")
    args = parser.parse_args()
    walk = Walk(args.base, args.admin_token, args.shots)
    try:
        result = walk.sign_in() if args.sign_in else walk.run()
    except Failed as failure:
        print(f"storefront walk failed: {failure}", file=sys.stderr)
        return 1
    finally:
        walk.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
