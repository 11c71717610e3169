"""Drive the web page in headless Chromium (Debian's chromium + chromium-driver, installed by `make test`)."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require_part

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module", autouse=True)
def _chromium():
    require_part(bool(CHROMIUM and DRIVER), "chromium/chromedriver")


@pytest.fixture(scope="module")
def server(own_index):
    import uvicorn

    from prvr.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(own_index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch a driver
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900",
                "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_search_page_end_to_end(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    box = browser.find_element(By.ID, "q")
    box.send_keys("someone cooking at the stove")
    browser.find_element(By.ID, "go").click()
    wait = WebDriverWait(browser, 20)
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "results"))
    hits = browser.find_elements(By.CSS_SELECTOR, "li.hit")
    assert len(hits) == 3
    assert {h.get_attribute("data-video-id") for h in hits} == {"red_ball", "blue_door", "kitchen"}
    assert "moment" in hits[0].find_element(By.CLASS_NAME, "moment").text
    playable = [h for h in hits if h.get_attribute("data-video-id") != "kitchen"]  # AVI/MPEG-4 part 2: not for browsers
    video = playable[0].find_element(By.TAG_NAME, "video")
    assert "#t=" in video.get_attribute("src")
    # the browser really loads the file and cues it to the moment
    wait.until(lambda d: d.execute_script("return arguments[0].readyState", video) >= 1)
    start = float(video.get_attribute("src").split("#t=")[1].split(",")[0])
    wait.until(lambda d: abs(d.execute_script("return arguments[0].currentTime", video) - start) < 0.6)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit .bar span")) == 3)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "search-page.png"))
    # a bad request shows its one-line message, not a crash
    box.clear()
    box.send_keys("   ")
    browser.find_element(By.ID, "go").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "empty query"))
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")


def test_api_docs_render_offline(server, browser):
    """/docs is Swagger UI from the server's own files, under its CSP: the browser renders the API, and every
    resource it loaded came from the server itself."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock"))
    assert "prvr" in browser.find_element(By.CSS_SELECTOR, ".swagger-ui .info .title").text
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/search", "/videos/{video_id}"} <= paths
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(u.startswith(server) for u in loaded), loaded
