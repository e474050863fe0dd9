"""The dashboard at /ui in a real headless browser (Debian's chromium through chromium-driver and selenium), against
a real gateway on loopback serving the demo pool over the replay backend: requests sent through the openai client
show up as numbers, the charts are drawn (pixels, not only elements), a registered router version is promoted from
its button, and the session cookie is HttpOnly, SameSite=Strict and holds no key. Screenshots go to
``POOLGATE_UI_SCREENSHOT_DIR`` when it is set (else the test's temporary folder)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from gateway.pools import DEMO_POOL_PATH
from gateway.replay.data import ReplayStore
from gateway.replay.server import create_replay_app
from gateway.ui.session import COOKIE
from tests.servers import ServerThread
from tests.test_loop_report import png_pixels

MASTER = "mk-dashboard-test-0123456789"
SENT = 14  # requests the module sends through the gateway, all with one key


def _driver_or_skip(tmp: Path) -> Any:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("chromium and chromium-driver are not installed (.ci/system-deps installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extras)")
    from selenium.common.exceptions import WebDriverException

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1360,2400", f"--user-data-dir={tmp / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP violations and script errors
    try:
        return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    except WebDriverException as exc:
        pytest.skip(f"chromium cannot run here: {exc.msg}")


async def _register_version(db_url: str, artifacts_dir: Path) -> str:
    """A best-single router version of the demo pool, registered as ``poolgate train`` would (a candidate)."""
    from gateway.routing.artifacts import ArtifactStore
    from gateway.store import make_engine
    from routers.base import ModelCard
    from routers.baselines import BestSingleRouter
    from routers.dataset import RoutingDataset

    names = ["mixtral-8x7b", "gpt-4-1106"]
    quality, zeros = np.asarray([[1.0, 0.0], [1.0, 0.0]]), np.zeros((2, 2))
    ds = RoutingDataset("t", ["a", "b"], names, quality, np.ones(2), zeros, zeros, [ModelCard(n) for n in names])
    engine = make_engine(db_url)
    try:
        record = await ArtifactStore(engine, artifacts_dir).register(
            "auto", BestSingleRouter().fit(ds), metrics={}, n_rows=2, note="from the dashboard test")
    finally:
        await engine.dispose()
    return record.version


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from gateway.app import create_app
    from gateway.settings import Settings
    from gateway.store import upgrade

    folder = tmp_path_factory.mktemp("ui")
    # the demo pool, with two shadow routers so the dashboard has shadow comparisons to show
    pool_text = DEMO_POOL_PATH.read_text().replace("    fallback: true", "    fallback: true\n"
                                                    "    shadow_routers: [strongest, cheapest]")
    assert "shadow_routers" in pool_text
    (folder / "pool.yaml").write_text(pool_text)
    shutil.copy(DEMO_POOL_PATH.parent / "auto-knn.router", folder / "auto-knn.router")
    with ServerThread(create_replay_app(ReplayStore.load())) as replay, pytest.MonkeyPatch.context() as mp:
        mp.setenv("POOLGATE_REPLAY_PORT", str(replay.port))
        settings = Settings(database_url=f"sqlite+aiosqlite:///{folder}/gw.db", spool_dir=folder / "spool",
                            artifacts_dir=folder / "artifacts", pool_file=folder / "pool.yaml",
                            log_flush_interval_s=0.05, auth_enabled=True,
                            master_key=MASTER, router_reload_interval_s=600)
        upgrade(settings.database_url)
        with ServerThread(create_app(settings)) as gw:
            admin = httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER}"})
            made = admin.post("/admin/keys", json={"name": "team-a", "budget_usd": 0.05})
            assert made.status_code == 201, made.text
            client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=made.json()["secret"], max_retries=0)
            recorded = ReplayStore.load().records
            for record in recorded[:SENT]:
                client.chat.completions.create(model="auto", messages=[{"role": "user", "content": record.prompt}])
            version = asyncio.run(_register_version(settings.database_url, settings.artifacts_dir))
            yield {"url": gw.url, "version": version, "key_id": made.json()["id"], "folder": folder, "client": client,
                   "prompts": [r.prompt for r in recorded[SENT:SENT + 3]]}


@pytest.fixture(scope="module")
def browser(gateway: dict[str, Any]) -> Iterator[Any]:
    driver = _driver_or_skip(gateway["folder"])
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _login(browser: Any, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/ui/login")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "login-submit").click()


def test_ui_without_a_session_redirects_to_the_login_form_and_panels_refuse(gateway: dict[str, Any]) -> None:
    with httpx.Client(base_url=gateway["url"]) as http:
        page = http.get("/ui")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login"
        assert http.get("/ui/panels").status_code == 401
        forged = http.get("/ui", cookies={COOKIE: "9999999999.nonce.0000"})
        assert forged.status_code == 303
        login = http.get("/ui/login")
        assert login.status_code == 200 and 'name="key"' in login.text
        assert "script-src 'self'" in login.headers["content-security-policy"]
        assert http.post("/ui/routers/promote", data={"pool": "auto", "version": "v1"}).status_code == 303


def test_a_wrong_key_shows_an_error_and_sets_no_session(browser: Any, gateway: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    _login(browser, gateway["url"], "not-the-master-key")
    assert "not the master key" in browser.find_element(By.ID, "login-error").text
    assert browser.get_cookie(COOKIE) is None
    browser.get(f"{gateway['url']}/ui")
    assert browser.current_url.endswith("/ui/login")


def _chart_ink(element: Any, folder: Path) -> tuple[float, int]:
    """(share of non-white pixels, count of strongly colored pixels) in a screenshot of ``element``."""
    path = folder / "element.png"
    path.write_bytes(element.screenshot_as_png)
    pixels = png_pixels(path)[..., :3].astype(int)
    ink = (pixels < 200).any(axis=-1).mean()
    colored = int((np.ptp(pixels, axis=-1) > 80).sum())
    return float(ink), colored


def test_login_shows_the_requests_just_sent_charts_render_and_a_version_is_promoted(
    browser: Any, gateway: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, version = gateway["url"], gateway["version"]
    browser.delete_all_cookies()
    browser.get_log("browser")  # drop what earlier tests logged (a wrong key's 401)
    _login(browser, url, MASTER)
    assert browser.current_url.rstrip("/").endswith("/ui"), browser.current_url

    cookie = browser.get_cookie(COOKIE)
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert MASTER not in cookie["value"] and cookie["path"] == "/ui"
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: scripts cannot read it

    assert browser.find_element(By.ID, "stat-requests").text == str(SENT)
    assert browser.find_element(By.ID, "stat-errors").text == "0"
    assert browser.find_element(By.CSS_SELECTOR, '[data-pool-requests="auto"]').text == str(SENT)
    keys = browser.find_element(By.ID, "keys").text
    assert "team-a" in keys and "$0.05" in keys
    assert "estimate" in browser.find_element(By.ID, "overview").text.lower()
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # the strict CSP blocked nothing, every asset loaded from poolgate

    shots = Path(os.environ.get("POOLGATE_UI_SCREENSHOT_DIR") or gateway["folder"])  # set it to keep them
    shots.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shots / "dashboard.png"))
    for selector in ("#cost-chart svg.chart", ".mix-chart svg.chart", ".latency-chart svg.chart",
                     ".budget-chart svg.chart", ".shadow-chart svg.chart"):
        chart = browser.find_element(By.CSS_SELECTOR, selector)
        assert chart.size["width"] > 300 and chart.size["height"] > 25, (selector, chart.size)  # one bar: ~34 px
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
        ink, colored = _chart_ink(chart, gateway["folder"])
        assert ink > 0.01 and colored > 150, (selector, ink, colored)
    assert browser.find_elements(By.CSS_SELECTOR, ".mix-chart rect.bar")
    shadows = browser.find_element(By.ID, "shadows").text
    assert "strongest" in shadows and "cheapest" in shadows

    serving = browser.find_element(By.CSS_SELECTOR, '[data-serving="auto"]').text
    assert serving.startswith("knn"), serving
    browser.find_element(By.ID, f"promote-auto-{version}").click()
    WebDriverWait(browser, 10).until(ec.alert_is_present()).accept()  # the button asks first
    flash = WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.ID, "flash")))
    assert f"promoted auto {version} (best-single)" in flash.text, flash.text
    assert "could not load" not in flash.text
    assert browser.find_element(By.CSS_SELECTOR, '[data-serving="auto"]').text == f"best-single {version}"
    assert browser.find_element(By.ID, "rollback-auto").is_displayed()
    browser.save_screenshot(str(shots / "dashboard-promoted.png"))
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {MASTER}"}) as admin:
        assert admin.get("/admin/routers").json()["data"][0]["router"] == "best-single"

    # live: the page fetches its panels again (every 10 s) and shows requests sent after it loaded
    for prompt in gateway["prompts"]:
        gateway["client"].chat.completions.create(model="auto", messages=[{"role": "user", "content": prompt}])
    after = str(SENT + len(gateway["prompts"]))
    WebDriverWait(browser, 40).until(ec.text_to_be_present_in_element((By.ID, "stat-requests"), after))
    assert browser.find_element(By.CSS_SELECTOR, '[data-serving="auto"]').text == f"best-single {version}"

    browser.find_element(By.ID, "logout").click()
    WebDriverWait(browser, 10).until(ec.url_contains("/ui/login"))
    assert browser.get_cookie(COOKIE) is None
    browser.get(f"{url}/ui")
    assert browser.current_url.endswith("/ui/login")


@contextlib.contextmanager
def _signed_in_client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url) as http:
        done = http.post("/ui/login", data={"key": MASTER})
        assert done.status_code == 303 and done.headers["location"] == "/ui"
        yield http


def test_login_sets_an_httponly_strict_session_cookie_for_ui_only(gateway: dict[str, Any]) -> None:
    with httpx.Client(base_url=gateway["url"]) as http:
        done = http.post("/ui/login", data={"key": MASTER})
    header = done.headers["set-cookie"].lower()
    assert header.startswith(f"{COOKIE}=") and MASTER.lower() not in header
    assert "httponly" in header and "samesite=strict" in header and "path=/ui" in header
    assert "secure" not in header  # plain HTTP on loopback; set over HTTPS


@pytest.mark.parametrize("body, headers, status", [
    (b'{"key": "x"}', {"content-type": "application/json"}, 400),
    (b"key=" + b"a" * 5000, {"content-type": "application/x-www-form-urlencoded"}, 400),
    (b"key=\xff\xfe", {"content-type": "application/x-www-form-urlencoded"}, 400),
    (b"key=wrong", {"content-type": "application/x-www-form-urlencoded"}, 401),
    (f"key={MASTER}".encode(), {"content-type": "application/x-www-form-urlencoded",
                                "origin": "https://evil.example"}, 400),
])
def test_bad_login_posts_get_the_login_page_with_a_4xx_and_no_cookie(
    gateway: dict[str, Any], body: bytes, headers: dict[str, str], status: int
) -> None:
    with httpx.Client(base_url=gateway["url"]) as http:
        answer = http.post("/ui/login", content=body, headers=headers)
    assert answer.status_code == status
    assert 'id="login-error"' in answer.text and "set-cookie" not in answer.headers


def test_promoting_an_unknown_version_shows_the_error_and_changes_nothing(gateway: dict[str, Any]) -> None:
    with _signed_in_client(gateway["url"]) as http:
        done = http.post("/ui/routers/promote", data={"pool": "auto", "version": "v99"})
        assert done.status_code == 303
        page = http.get("/ui", params={"window": "not-a-window"})
        assert page.status_code == 200
        assert "has no router version &#39;v99&#39;" in page.text
        assert http.post("/ui/routers/rollback", data={"pool": "nope"}).status_code == 303
        assert "has no live router version" in http.get("/ui").text
        assert http.get("/ui/panels").status_code == 200


def test_without_a_master_key_the_dashboard_is_disabled(tmp_path: Path) -> None:
    from gateway.app import create_app
    from gateway.pools import parse_pool_file
    from gateway.settings import Settings
    from gateway.store import upgrade

    pool = parse_pool_file("backends:\n  - {name: b, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
                           "pools:\n  - {name: p, members: [b], router: cheapest}\n")
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/gw.db", spool_dir=tmp_path / "spool")
    upgrade(settings.database_url)
    with ServerThread(create_app(settings, pool)) as gw, httpx.Client(base_url=gw.url) as http:
        assert http.get("/ui/login").status_code == 403
        answer = http.post("/ui/login", data={"key": ""})
        assert answer.status_code == 403 and "POOLGATE_MASTER_KEY" in answer.text
        assert http.get("/ui").status_code == 303


def test_a_cross_site_promote_is_refused_even_with_a_session(gateway: dict[str, Any]) -> None:
    with _signed_in_client(gateway["url"]) as http:
        done = http.post("/ui/routers/rollback", data={"pool": "auto"}, headers={"origin": "http://evil.example"})
        assert done.status_code == 303 and done.headers["location"] == "/ui/login"
        assert "flash" not in done.headers.get("set-cookie", "")
