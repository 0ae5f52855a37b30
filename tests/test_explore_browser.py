"""The explorer in a real browser: headless Chromium (Debian's chromium and chromium-driver, which
.ci/run installs) opens the page, types a prompt, runs it, scrubs the steps, and sees the step
pictures, x̂₀ and the attention maps appear and change; then two runs side by side, a cancel and
a refused input. Without Chromium this test fails: it is part of CI, not optional.

MINISD_EXPLORER_SCREENSHOT=docs/explorer.png pytest tests/test_explore_browser.py  writes the
README's screenshot.
"""

import os
import shutil

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

import minisd
from minisd.explore.server import make_app, running

PROMPT = "a yellow triangle on a black background"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "the browser test needs Chromium: apt-get install -y chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,2000"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def page(browser):
    with running(make_app(minisd.load(minisd.default_model_folder()))) as address:
        browser.get(address)
        WebDriverWait(browser, 20).until(lambda b: "minisd-shapes" in b.find_element(By.ID, "model").text)
        yield browser


def find(browser, selector):
    return browser.find_element(By.CSS_SELECTOR, selector)


def status(browser, panel):
    return find(browser, f"#run-{panel} .status").text


def wait_for_status(browser, panel, start, timeout=90):
    WebDriverWait(browser, timeout).until(lambda b: status(b, panel).startswith(start))


def type_into(element, text):
    element.clear()
    element.send_keys(text)


def shown(browser, panel):
    """What panel's step views show now: the label, the picture sources, the attention maps (loaded)."""
    root = f"#run-{panel}"
    loaded = browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].every(img => img.complete && img.naturalWidth > 0)",
        f"{root} .box img",
    )
    return {
        "label": find(browser, f"{root} .step-label").text,
        "latents": find(browser, f"{root} .view-latents").get_attribute("src"),
        "x0": find(browser, f"{root} .view-x0").get_attribute("src"),
        "attention": [
            img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, f"{root} .attention img.map")
        ],
        "loaded": loaded,
    }


def test_type_run_and_scrub(page):
    type_into(find(page, "#run-a textarea[name=prompt]"), PROMPT)
    type_into(find(page, "#run-a input[name=steps]"), "10")
    find(page, "#run-a .run").click()
    wait_for_status(page, "a", "done")
    pieces = [piece.text for piece in page.find_elements(By.CSS_SELECTOR, "#run-a .tokens .piece")]
    assert pieces == [
        "<start>",
        "a</w>",
        "yellow</w>",
        "triangle</w>",
        "on</w>",
        "a</w>",
        "black</w>",
        "background</w>",
        "<end>",
    ]
    assert find(page, "#run-a .embeddings").get_attribute("src").startswith("data:image/png")

    scrub = find(page, "#run-a .scrub")
    scrub.send_keys(Keys.HOME)
    first = shown(page, "a")
    scrub.send_keys(Keys.END)
    last = shown(page, "a")
    assert first["label"].startswith("1 of 10") and last["label"].startswith("10 of 10")
    assert first["loaded"] and last["loaded"]
    assert first["latents"] != last["latents"] and first["x0"] != last["x0"]
    assert len(first["attention"]) == len(pieces) and first["attention"] != last["attention"]
    scrub.send_keys(Keys.LEFT)
    assert shown(page, "a")["label"].startswith("9 of 10")
    assert find(page, "#run-a .final").get_attribute("src") == last["latents"]

    screenshot = os.environ.get("MINISD_EXPLORER_SCREENSHOT")
    if screenshot:
        scrub.send_keys(Keys.END)
        # the status's seconds depend on the machine's load at the time: the timing script measures them
        page.execute_script("document.querySelector('#run-a .status').textContent = 'done'")
        page.save_screenshot(screenshot)


def test_two_runs_side_by_side(page):
    find(page, "#compare").click()
    assert find(page, "#run-b").is_displayed()
    assert find(page, "#run-b textarea[name=prompt]").get_attribute("value") == PROMPT  # settings copied from A
    type_into(find(page, "#run-b input[name=seed]"), "5")
    find(page, "#run-both").click()
    wait_for_status(page, "a", "done")
    wait_for_status(page, "b", "done")
    a, b = shown(page, "a"), shown(page, "b")
    assert a["loaded"] and b["loaded"] and a["latents"] != b["latents"]  # another seed, another picture
    find(page, "#run-a .scrub").send_keys(Keys.HOME)
    assert shown(page, "b")["label"].startswith("1 of 10")  # the scrubbers move together
    find(page, "#compare").click()


def test_image_to_image_from_an_uploaded_picture(page, tmp_path):
    Image.new("RGB", (80, 80), (30, 60, 220)).save(tmp_path / "blue.png")
    type_into(find(page, "#run-a input[name=steps]"), "10")
    type_into(find(page, "#run-a input[name=strength]"), "0.5")
    find(page, "#run-a input[name=image]").send_keys(str(tmp_path / "blue.png"))
    find(page, "#run-a .run").click()
    wait_for_status(page, "a", "done")
    assert shown(page, "a")["label"].startswith("5 of 5")  # strength 0.5 runs the last half of 10 steps
    page.execute_script("document.querySelector('#run-a input[name=image]').value = ''")


def test_cancel_and_a_refused_input(page):
    type_into(find(page, "#run-a input[name=steps]"), "100")
    find(page, "#run-a .run").click()
    WebDriverWait(page, 60).until(lambda b: status(b, "a").startswith("step"))
    find(page, "#run-a .cancel").click()
    wait_for_status(page, "a", "cancelled", timeout=10)
    type_into(find(page, "#run-a input[name=steps]"), "0")
    find(page, "#run-a .run").click()
    wait_for_status(page, "a", "refused: steps must be an integer from 1 to 100")
    errors = [entry for entry in page.get_log("browser") if entry["source"] != "network"]  # 4xx are logged too
    assert not errors, errors
