"""The page at "/" in a real browser: headless Chromium (Debian's) driven by Selenium.

The app runs over real HTTP (uvicorn on 127.0.0.1, the two-tower and UserKNN services of the
seeded synthetic run); the browser picks a user, sees their history beside both models' top-k,
clicks an item for its similar items and asks for a cold-start answer. A screenshot is saved to
``runs/browser/page.png`` (docs/page.png is one taken the same way on MovieLens-100K).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from serving.artifacts import load_services
from serving.http import LocalBackend, create_app
from serving.recommenders import ServingError
from towers.artifacts import publish_small_run
from towers.storage.root import Storage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
K = 6


@pytest.fixture(scope="module")
def services(tiny_storage, tmp_path_factory):
    storage = Storage(tmp_path_factory.mktemp("browser-run"))
    for artifact in ("data",):
        shutil.copytree(tiny_storage.path(artifact), storage.path(artifact))
    publish_small_run(storage, epochs=1, embedding_dim=16, seed=0)
    return load_services(storage.uri)


@pytest.fixture(scope="module")
def base_url(services):
    """The app served by uvicorn in a thread, on a free loopback port."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(LocalBackend(services)), host="127.0.0.1", port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver not installed (.ci/run installs Debian's)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # the system binary: no browser download
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def titles(browser, list_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, f"#{list_id} li .title")]


def wait_for(browser, condition, what: str, timeout: float = 20.0):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A list re-rendered while the condition reads it leaves stale elements: look again.
    wait = WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda _: condition(), message=what)


def test_the_page_answers_a_user_an_item_and_a_new_user(browser, base_url, services):
    from selenium.webdriver.common.by import By

    catalog = services["two_tower"].catalog
    user = int(sorted(catalog.user_ids)[3])
    browser.get(f"{base_url}/?user={user}")
    wait_for(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
             "the page never finished its first answers")  # fmt: skip
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys(str(K))
    browser.find_element(By.ID, "show-user").click()
    wait_for(browser, lambda: len(titles(browser, "two_tower")) == K, "two-tower list of k")

    # What the browser shows is what the API answers, in order.
    expected = services["two_tower"].recommend(user, K)["items"]
    assert titles(browser, "two_tower") == [i["title"] for i in expected]
    expected_knn = services["user_knn"].recommend(user, K)["items"]
    assert titles(browser, "user_knn") == [i["title"] for i in expected_knn]
    history = services["two_tower"].history(user, K)["items"]
    assert titles(browser, "history") == [i["title"] for i in history]
    assert "training interactions" in browser.find_element(By.ID, "user-status").text

    # Clicking a recommended item shows its nearest items.
    first = browser.find_element(By.CSS_SELECTOR, "#two_tower li .title")
    item_title = first.text
    first.click()
    wait_for(browser, lambda: len(titles(browser, "similar")) == K, "similar items")
    assert browser.find_element(By.ID, "similar-title").text == f"Similar to {item_title}"
    assert item_title not in titles(browser, "similar")

    # A new user: two liked items and features; the answer excludes what they liked.
    liked = [int(catalog.item_ids[0]), int(catalog.item_ids[1])]
    browser.find_element(By.ID, "liked").send_keys(", ".join(map(str, liked)))
    browser.find_element(By.ID, "f-age").send_keys("30")
    occupations = browser.find_elements(By.CSS_SELECTOR, "#f-occupation option")
    assert len(occupations) > 1  # filled from /openapi.json's enum
    occupations[1].click()
    browser.find_element(By.ID, "cold-start").click()
    wait_for(browser, lambda: len(titles(browser, "cold")) == K, "cold-start answer")
    shown = browser.find_elements(By.CSS_SELECTOR, "#cold li")
    assert not {int(li.get_attribute("data-item-id")) for li in shown} & set(liked)

    # A bad user id: a readable error, no stale lists.
    browser.find_element(By.ID, "user-id").clear()
    browser.find_element(By.ID, "user-id").send_keys("99999999")
    browser.find_element(By.ID, "show-user").click()
    status = browser.find_element(By.ID, "user-status")
    wait_for(browser, lambda: status.get_attribute("class") == "error", "an unknown user's error")
    with pytest.raises(ServingError) as err:
        services["two_tower"].recommend(99999999, K)
    assert status.text == err.value.message  # the page shows the API's own message
    assert titles(browser, "two_tower") == []

    out = ROOT / "runs" / "browser"
    out.mkdir(parents=True, exist_ok=True)
    browser.get(f"{base_url}/?user={user}")
    wait_for(browser, lambda: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready"),
             "the page never finished its first answers")  # fmt: skip
    assert browser.save_screenshot(str(out / "page.png"))
    assert (out / "page.png").stat().st_size > 10_000
