"""How fast the explorer answers on this CPU with the embedded model: the time from sending a run to
its first step event, and to the end of a 20-step run with every view (guidance on, so its four
views too), as an HTTP client sees them; with --browser, also as the page shows them in headless
Chromium (from the click to the first step shown, and to "done"). Measure on a quiet machine.

    python tests/scripts/explore_timing.py [--runs 5] [--browser]
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import time

import httpx

import minisd
from minisd.explore.server import make_app, running

PROMPT = "a red circle on a white background"


def cpu_name():
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    return f"{names[0] if names else platform.processor()}, {os.cpu_count()} logical cores"


def client_timing(address, seed):
    """(seconds to the first step event, seconds to "done") for one 20-step run."""
    started = time.perf_counter()
    first = None
    body = {"prompt": PROMPT, "seed": seed, "steps": 20}
    with httpx.stream("POST", f"{address}/api/run", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "step" and first is None:
                first = time.perf_counter() - started
                assert "guidance" in event and event["attention"]["tokens"], "a step without every view"
            if event["type"] == "done":
                return first, time.perf_counter() - started
    raise RuntimeError("the run did not finish")


def browser_timings(address, runs):
    """[(first step, done)] in seconds as the page measures them, from the click on Run."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        browser.get(address)
        WebDriverWait(browser, 20).until(lambda b: b.find_element(By.CSS_SELECTOR, "#run-a select[name=scheduler]"))
        status = browser.find_element(By.CSS_SELECTOR, "#run-a .status")
        times = []
        for seed in range(runs + 1):
            seed_field = browser.find_element(By.CSS_SELECTOR, "#run-a input[name=seed]")
            seed_field.clear()
            seed_field.send_keys(str(seed))
            browser.find_element(By.CSS_SELECTOR, "#run-a .run").click()
            WebDriverWait(browser, 60).until(lambda b: status.text.startswith("done"))
            done, first = map(float, re.findall(r"[\d.]+(?= s)", status.text))
            times.append((first, done))
        return times[1:]  # the first run warms up
    finally:
        browser.quit()


def report(name, times):
    firsts, dones = zip(*times)
    print(
        f"{name}: first step {statistics.median(firsts):.3f} s median, {max(firsts):.3f} s max; "
        f"20 steps with every view {statistics.median(dones):.3f} s median, {max(dones):.3f} s max "
        f"({len(times)} runs)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--browser", action="store_true", help="also measure in headless Chromium")
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}; minisd {minisd.__version__}, the embedded model")
    with running(make_app(minisd.load(minisd.default_model_folder()))) as address:
        client_timing(address, seed=99)  # warm-up
        report("HTTP client", [client_timing(address, seed) for seed in range(args.runs)])
        if args.browser:
            report("page in Chromium", browser_timings(address, args.runs))


if __name__ == "__main__":
    main()
