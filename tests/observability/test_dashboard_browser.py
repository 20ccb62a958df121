"""A real browser (Debian's chromium, headless, driven by Selenium through chromedriver)
loads the dashboard during a service run: one row per replica; a replica killed with -9
turns unhealthy and then healthy again; the screenshot is kept as an artifact."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from obs_actors import SlowStart

pytestmark = pytest.mark.timeout(120)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = os.environ.get("FORGE_TEST_ARTIFACTS") or os.path.join(
    os.path.dirname(__file__), "..", "..", "test-artifacts")


def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(scripts/setup.sh installs them as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def rows(driver) -> dict[str, str]:
    """Replica name -> state, as the page shows them now (read in one go: the page redraws
    its tables twice a second, so element handles go stale)."""
    return dict(driver.execute_script(
        "return [...document.querySelectorAll('tr.replica')]"
        ".map(r => [r.dataset.name, r.dataset.state])"))


def wait_for(what, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_dashboard_shows_a_killed_replica_go_unhealthy_and_come_back():
    import asyncio

    from forge_core.observe import record_metric, serve_dashboard

    service = await SlowStart.options(num_replicas=2, probe_interval=0.2).as_service()
    for i in range(20):
        await service.echo.route(i)
        record_metric("reward", i / 20, reduce="mean")
    server = serve_dashboard(0)
    assert server.server_address[0] == "127.0.0.1"  # loopback unless told otherwise
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    driver = await asyncio.to_thread(browser)
    try:
        driver.get(url)
        states = await asyncio.to_thread(
            wait_for, "two healthy rows", lambda: (lambda r: r if len(r) == 2 and set(
                r.values()) == {"healthy"} else None)(rows(driver)))
        assert sorted(states) == ["SlowStart.r0", "SlowStart.r1"]
        victim = next(r for r in service._view.replicas if r.name == "SlowStart.r0")
        pid = await victim.mesh.pid.call_one()
        os.kill(pid, signal.SIGKILL)
        await asyncio.to_thread(wait_for, "SlowStart.r0 not healthy",
                                lambda: rows(driver).get("SlowStart.r0") not in (None, "healthy"))
        assert rows(driver)["SlowStart.r1"] == "healthy"
        await asyncio.to_thread(wait_for, "SlowStart.r0 healthy again",
                                lambda: rows(driver).get("SlowStart.r0") == "healthy")
        assert await service.echo.route(5) == 5
        page = driver.page_source
        assert 'data-name="reward"' in page  # the run's own metric is plotted
        os.makedirs(ARTIFACTS, exist_ok=True)
        shot = os.path.abspath(os.path.join(ARTIFACTS, "dashboard.png"))
        assert driver.save_screenshot(shot)
        print(f"dashboard screenshot: {shot}")
        assert os.path.getsize(shot) > 1000
    finally:
        driver.quit()
        server.shutdown()
        await service.shutdown()
