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


def _serve(index):
    import uvicorn

    from prvr.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    return f"http://127.0.0.1:{port}", srv, thread


@pytest.fixture(scope="module")
def server(own_index):
    url, srv, thread = _serve(own_index)
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def ingested_server(ingested):
    url, srv, thread = _serve(ingested[0])
    yield url
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
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit .bar[data-ready]")) == 3)
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


def test_thumbnails_and_playing_a_moment(ingested_server, browser):
    """An index made by `prvr ingest`: every hit shows its best frame's thumbnail (a static JPEG), its moments on a
    timeline and as buttons; a moment's button plays the video from the moment's start and stops at its end."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(ingested_server + "/")
    browser.find_element(By.ID, "q").send_keys("red ball")
    browser.find_element(By.ID, "go").click()
    wait = WebDriverWait(browser, 20)
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "results"))
    hits = browser.find_elements(By.CSS_SELECTOR, "li.hit")
    assert {h.get_attribute("data-video-id") for h in hits} == {"red_ball.mp4", "blue_door.mp4", "kitchen.avi"}
    thumbs = browser.find_elements(By.CSS_SELECTOR, "li.hit img.thumb")
    assert len(thumbs) == 3 and all("/thumbs/" in t.get_attribute("src") for t in thumbs)
    wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", t) > 0
                             for t in thumbs))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit .bar[data-ready]")) == 3)
    hit = next(h for h in hits if h.get_attribute("data-video-id") == "blue_door.mp4")  # 5.2 s, H.264
    buttons = hit.find_elements(By.CSS_SELECTOR, ".moments button.play")
    assert 1 <= len(buttons) <= 3 and len(hit.find_elements(By.CSS_SELECTOR, ".bar span")) == len(buttons)
    button = buttons[-1]
    start, end = float(button.get_attribute("data-start")), float(button.get_attribute("data-end"))
    assert end > start
    video = hit.find_element(By.TAG_NAME, "video")
    button.click()
    wait.until(lambda d: d.execute_script("return arguments[0].readyState", video) >= 2)
    seen = []
    deadline = time.time() + 10
    while time.time() < deadline:  # sampled while it plays and after it stopped
        seen.append(browser.execute_script("return arguments[0].currentTime", video))
        if browser.execute_script("return arguments[0].paused", video) and seen[-1] > start:
            break
        time.sleep(0.05)
    assert seen and all(start - 0.05 <= t <= end + 0.15 for t in seen[1:]), (start, end, seen)
    assert browser.execute_script("return arguments[0].paused", video)  # it stopped at the moment's end
    assert abs(seen[-1] - end) < 0.15
    browser.save_screenshot(str(ARTIFACTS / "search-page-moments.png"))
    # the path filter
    box = browser.find_element(By.ID, "path")
    box.send_keys("blue")
    browser.find_element(By.ID, "go").click()
    wait.until(lambda d: [h.get_attribute("data-video-id") for h in d.find_elements(By.CSS_SELECTOR, "li.hit")]
               == ["blue_door.mp4"])
