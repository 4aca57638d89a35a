"""A screenshot of the page at "/" with every panel filled, from a finished pipeline run.

    python -m bench.page_shot --storage runs/demo --out docs/page.png [--user 196] [--k 6]
        [--width 1400 --height 1000]

The storage's two-tower and UserKNN services are loaded in this process (no Ray) and served by
uvicorn on 127.0.0.1 and a free port, as ``python -m serving --no-ray`` would. Debian's headless
Chromium (``chromium`` and ``chromedriver`` on the PATH), driven by Selenium as in
``tests/integration/test_browser.py``, opens the page for ``--user``, shows their recent history
beside both models' top-k, clicks the first two-tower item so that "Similar items" is filled,
and asks for a new user's answer (``--liked`` item ids, ``--age``, ``--occupation``). The
screenshot is of that state: the window is ``--width`` by ``--height`` and grows taller if the
page does not fit, so the whole page is in it. The PNG is written with a 256-colour palette
(text on a flat background loses nothing visible) to keep it small. docs/page.png is:

    python -m bench.page_shot --storage <a MovieLens-100K run> --out docs/page.png
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

# The pieces of a run the page needs: the two-tower export, its index, UserKNN and the catalog.
ARTIFACTS = ("data", "model", "index", "knn")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.page_shot",
        description=(
            "Serve a run's models locally (no Ray), fill every panel of the page at / in "
            "headless Chromium and save a screenshot."
        ),
    )
    parser.add_argument("--storage", required=True, help="storage root of a finished run")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--user", default="196", help="the known user shown (default 196)")
    parser.add_argument("--k", type=int, default=6, help="items per list (default 6)")
    parser.add_argument("--width", type=int, default=1400, help="window width (default 1400)")
    parser.add_argument(
        "--height",
        type=int,
        default=1000,
        help="window height (default 1000); grown to the page's height if that is taller",
    )
    parser.add_argument(
        "--liked", default="50, 181", help="the new user's liked item ids (default '50, 181')"
    )
    parser.add_argument("--age", default="30", help="the new user's age (default 30)")
    parser.add_argument(
        "--occupation", default="engineer", help="the new user's occupation (default engineer)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.k <= 50:
        parser.error("--k must be between 1 and 50 (the page's range)")
    if args.width < 400 or args.height < 300:
        parser.error("--width must be at least 400 and --height at least 300")
    return args


def check_storage(uri: str) -> None:
    """Exits with a message unless ``uri`` holds the published artifacts the page serves."""
    if "://" in uri:
        from towers.storage.root import Storage

        storage = Storage(uri)
        missing = [a for a in ARTIFACTS if not storage.exists(a, "manifest.json")]
    else:  # a local path is only looked at (Storage() would create it)
        root = Path(uri).expanduser()
        if not root.is_dir():
            raise SystemExit(f"page_shot: storage {uri} does not exist")
        missing = [a for a in ARTIFACTS if not (root / a / "manifest.json").is_file()]
    if missing:
        raise SystemExit(
            f"page_shot: storage {uri} has no published {', '.join(f'{a}/' for a in missing)} "
            "(run the pipeline first: no model to serve)"
        )


def browser_binaries() -> tuple[str, str]:
    """Debian's ``chromium`` and ``chromedriver``, or an exit with a message."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        missing = [n for n, p in (("chromium", chromium), ("chromedriver", chromedriver)) if not p]
        raise SystemExit(
            f"page_shot: {' and '.join(missing)} not found on the PATH "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    return chromium, chromedriver


@contextmanager
def served(services: dict[str, Any]) -> Iterator[str]:
    """The app over ``services``, served by uvicorn in a thread on a free loopback port."""
    import uvicorn

    from serving.http import LocalBackend, create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(LocalBackend(services))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="page-shot-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not server.started:
            raise SystemExit("page_shot: uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def headless_chromium(width: int, height: int) -> Iterator[Any]:
    chromium, chromedriver = browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # the system binary: no browser download
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def wait_for(browser: Any, condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # A list re-rendered while the condition reads it leaves stale elements: look again.
    wait = WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return wait.until(lambda _: condition())
    except TimeoutException:
        raise SystemExit(f"page_shot: {what} did not appear within {timeout:.0f} s") from None


def titles(browser: Any, list_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, f"#{list_id} li .title")]


def error_text(browser: Any, element_id: str) -> str | None:
    """The page's error message in ``element_id``, if it shows one."""
    from selenium.webdriver.common.by import By

    element = browser.find_element(By.ID, element_id)
    return element.text if element.get_attribute("class") == "error" else None


def filled(browser: Any, list_id: str, k: int, status_id: str) -> bool:
    """``list_id`` holds ``k`` items; an error shown in ``status_id`` ends the run."""
    message = error_text(browser, status_id)
    if message:
        raise SystemExit(f"page_shot: the page answered an error: {message}")
    return len(titles(browser, list_id)) == k


def fill_page(browser: Any, base_url: str, args: argparse.Namespace) -> None:
    """Every panel: the user's lists, an item's similar items and a new user's answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    k = args.k
    browser.get(f"{base_url}/?user={args.user}")
    body = browser.find_element(By.TAG_NAME, "body")
    wait_for(browser, lambda: body.get_attribute("data-ready"), "the page's first answers")
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys(str(k))
    browser.find_element(By.ID, "show-user").click()
    for list_id in ("two_tower", "user_knn", "history"):
        wait_for(browser, partial(filled, browser, list_id, k, "user-status"), f"#{list_id}")

    first = browser.find_element(By.CSS_SELECTOR, "#two_tower li .title")
    first.click()
    wait_for(browser, lambda: len(titles(browser, "similar")) == k, "the similar items")
    heading = browser.find_element(By.ID, "similar-title").text
    if not heading.startswith("Similar to"):
        raise SystemExit(f"page_shot: the similar items answered an error: {heading}")

    browser.find_element(By.ID, "liked").send_keys(args.liked)
    ages = browser.find_elements(By.ID, "f-age")
    if ages and args.age:
        ages[0].send_keys(args.age)
    occupations = browser.find_elements(By.ID, "f-occupation")
    if occupations and args.occupation:
        choices = [o.get_attribute("value") for o in Select(occupations[0]).options]
        if args.occupation not in choices:
            raise SystemExit(
                f"page_shot: occupation {args.occupation!r} is not one of the model's: "
                f"{', '.join(c for c in choices if c)}"
            )
        Select(occupations[0]).select_by_value(args.occupation)
    browser.find_element(By.ID, "cold-start").click()
    wait_for(browser, lambda: filled(browser, "cold", k, "cold-status"), "the cold-start answer")


def screenshot(browser: Any, width: int, height: int) -> bytes:
    """The window's PNG, the window first grown to the page's height if it is taller."""
    page_height = browser.execute_script("return document.documentElement.scrollHeight")
    inner = browser.execute_script("return window.innerHeight")
    if page_height > inner:
        browser.set_window_size(width, height + page_height - inner)
    browser.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.2)  # one frame for the resize to paint
    return browser.get_screenshot_as_png()


def small_png(png: bytes) -> bytes:
    """``png`` with a 256-colour palette (no visible loss for text), if Pillow is there."""
    try:
        from PIL import Image
    except ImportError:
        return png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_storage(args.storage)
    browser_binaries()  # before loading the models: a missing browser is the quicker answer

    from serving.artifacts import ArtifactLoadError, load_services

    try:
        services = load_services(args.storage)
    except ArtifactLoadError as err:
        raise SystemExit(f"page_shot: {err}") from err
    with served(services) as base_url, headless_chromium(args.width, args.height) as browser:
        fill_page(browser, base_url, args)
        png = small_png(screenshot(browser, args.width, args.height))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"{args.out}: {len(png):,} bytes, the page for user {args.user} at {args.width} wide")


if __name__ == "__main__":
    main()
