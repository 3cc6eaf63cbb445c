"""Debian's Chromium driven by Selenium (chromium-driver), for the dashboard's browser tests.

    with chromium() as b:
        b.login(login_url)              # the URL `pyinspect serve` prints (sets the cookie)
        b.open(base + "containers")
        b.wait_text("#containers", "web")
        b.screenshot("containers")      # tests/artifacts/screenshots/containers.png

Headless, with a fresh profile (user-data-dir) removed on exit, no sandbox (root), no
GPU and none of Chromium's own network traffic (updates, sync, first-run). Downloads go
to `b.downloads` (a temp dir): `b.wait_download(".pcapng")` returns the finished file.
"""

import base64
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--disable-quic",
)


def available() -> str | None:
    """None when Chromium, chromedriver and Selenium are all there, else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    return ", ".join(missing) or None


class Browser:
    """One headless Chromium session (`driver` is the Selenium WebDriver)."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="pi-chromium-"))
        self.downloads = self.profile / "downloads"
        self.downloads.mkdir()
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={self.profile / 'profile'}")
        opts.add_argument(f"--window-size={width},{height}")
        opts.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(self.downloads),
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            },
        )
        try:
            self.driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(self.downloads)},
        )

    # -- navigation ------------------------------------------------------------------
    def login(self, login_url: str) -> str:
        """Visit the login URL `pyinspect serve` printed; returns the clean URL it
        redirected to (the token is in an HttpOnly cookie from then on)."""
        self.driver.get(login_url)
        return self.driver.current_url

    def open(self, url: str) -> None:
        self.driver.get(url)

    def text(self, css: str) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css).text

    def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, css).click()

    def fill(self, css: str, value: str) -> None:
        from selenium.webdriver.common.by import By

        el = self.driver.find_element(By.CSS_SELECTOR, css)
        el.clear()
        el.send_keys(value)

    def count(self, css: str) -> int:
        from selenium.webdriver.common.by import By

        return len(self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait(self, predicate, timeout: float = 20, what: str = "condition"):
        """Poll `predicate(browser)` until it returns something true; AssertionError
        naming `what` (and the page's URL) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                value = predicate(self)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(f"browser: {what} not seen in {timeout}s at {self.url}")
            time.sleep(0.2)

    def wait_text(self, css: str, text: str, timeout: float = 20) -> str:
        """Wait until the element `css` contains `text`; its whole text."""
        return self.wait(
            lambda b: text in b.text(css) and b.text(css), timeout, f"{text!r} in {css}"
        )

    def wait_count(self, css: str, at_least: int, timeout: float = 20) -> int:
        return self.wait(
            lambda b: b.count(css) >= at_least and b.count(css), timeout, f"{at_least}x {css}"
        )

    @property
    def url(self) -> str:
        return self.driver.current_url

    # -- evidence ----------------------------------------------------------------------
    def screenshot(self, name: str, directory: Path = SCREENSHOTS) -> Path:
        """A full-page PNG of the current page as `<directory>/<name>.png`."""
        directory.mkdir(parents=True, exist_ok=True)
        metrics = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": max(1, size["width"]),
                    "height": max(1, min(size["height"], 16000)),
                    "scale": 1,
                },
            },
        )
        path = directory / f"{name}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def wait_download(self, suffix: str, timeout: float = 30) -> Path:
        """The first finished download whose name ends with `suffix`."""

        def done(_):
            return next(
                (p for p in self.downloads.iterdir() if p.name.endswith(suffix)),
                None,
            )

        return self.wait(done, timeout, f"a download *{suffix}")

    def console_errors(self) -> list[str]:
        """SEVERE entries of the page's console log (JS errors)."""
        with contextlib.suppress(Exception):
            return [
                e["message"] for e in self.driver.get_log("browser") if e.get("level") == "SEVERE"
            ]
        return []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Browser]:
    """A Browser for the `with` block; quit and its profile removed after."""
    b = Browser(width, height)
    try:
        yield b
    finally:
        b.close()
