"""The Dagster UI in a real headless Chromium, against the `dagster dev` of tests/support/dagster_dev_platform.py.

Needs the Debian packages `chromium` and `chromium-driver` (.ci/run installs them). Screenshots are
saved to $TEST_ARTIFACTS_DIR (default: a pytest temp dir, printed in the test output).
"""

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.dagster_dev_platform import DevPlatform

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ASSETS = {
    "raw_catalog",
    "raw_interactions",
    "curated_conversations",
    "base_model",
    "tokenized_shards",
    "trained_checkpoint",
    "eval_report",
    "preference_pairs",
    "preference_shards",
    "preference_checkpoint",
}
EDGES = {
    ("raw_catalog", "raw_interactions"),
    ("raw_catalog", "curated_conversations"),
    ("raw_interactions", "curated_conversations"),
    ("curated_conversations", "base_model"),
    ("curated_conversations", "tokenized_shards"),
    ("base_model", "tokenized_shards"),
    ("base_model", "trained_checkpoint"),
    ("tokenized_shards", "trained_checkpoint"),
    ("trained_checkpoint", "eval_report"),
    ("raw_catalog", "preference_pairs"),
    ("raw_interactions", "preference_pairs"),
    ("preference_pairs", "preference_shards"),
    ("base_model", "preference_shards"),
    ("preference_shards", "preference_checkpoint"),
    ("trained_checkpoint", "preference_checkpoint"),
    ("preference_checkpoint", "eval_report"),
}
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Asset nodes (name + box) and lineage edges (SVG paths with an arrow) of the rendered graph, in SVG coordinates.
GRAPH_JS = """
const nodes = [...document.querySelectorAll('foreignObject')].flatMap(fo => {
  const name = fo.querySelector('[class*="AssetNode_assetName"]');
  if (!name) return [];
  const tip = name.querySelector('[data-tooltip]');
  return [{name: tip ? tip.getAttribute('data-tooltip') : name.textContent.trim(),
           x: +fo.getAttribute('x'), y: +fo.getAttribute('y'),
           w: +fo.getAttribute('width'), h: +fo.getAttribute('height')}];
});
const edges = [...document.querySelectorAll('path[marker-end]')].map(p => p.getAttribute('d'));
return {nodes, edges};
"""


def _browser_binaries() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binaries = _browser_binaries()
    if binaries is None:
        message = "headless Chromium not found: apt-get install chromium chromium-driver (Debian), as .ci/run does"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = binaries[0]
    for flag in [*CHROME_FLAGS, f"--user-data-dir={profile}", "--window-size=2600,1300"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(binaries[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _dismiss_popups(driver) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):  # the community sign-up
        button.click()


def _screenshot(driver, platform: DevPlatform, name: str) -> Path:
    path = platform.artifacts_dir / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _asset_name(drawn: str) -> str:
    """The full asset name of a node label; a zoomed-out graph shortens long names to 'cur…_conversations'."""
    if "…" not in drawn:
        return drawn
    head, tail = drawn.split("…", 1)
    matches = [a for a in ASSETS if a.startswith(head) and a.endswith(tail) and len(a) > len(head) + len(tail)]
    return matches[0] if len(matches) == 1 else drawn


def _drawn_nodes(driver) -> list[dict[str, Any]]:
    return [{**n, "name": _asset_name(n["name"])} for n in driver.execute_script(GRAPH_JS)["nodes"]]


def _edge_endpoints(d: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """First and last point of an SVG path like 'M450,446.25C477.5,446.25,477.5,540,505,540'."""
    numbers = [float(n) for n in d.replace("M", " ").replace("C", " ").replace("L", " ").replace(",", " ").split()]
    return (numbers[0], numbers[1]), (numbers[-2], numbers[-1])


def _node_at(nodes: list[dict[str, Any]], x: float, y: float, side: str) -> str | None:
    """The node whose right (side='out') or left (side='in') border is at x, spanning y."""
    for node in nodes:
        border = node["x"] + node["w"] if side == "out" else node["x"]
        if abs(border - x) <= 12 and node["y"] <= y <= node["y"] + node["h"]:
            return node["name"]
    return None


def test_asset_graph_shows_every_asset_and_its_lineage(dev_platform, browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{dev_platform.url}/asset-groups")
    _wait("the asset graph", lambda: browser.find_elements("css selector", "foreignObject"))
    time.sleep(2)
    _dismiss_popups(browser)

    def all_assets_drawn() -> bool:
        return {n["name"] for n in _drawn_nodes(browser)} >= ASSETS

    if not all_assets_drawn():
        # Asset groups start collapsed; Alt+E is the graph's "Expand all groups".
        ActionChains(browser).key_down(Keys.ALT).send_keys("e").key_up(Keys.ALT).perform()
    try:
        _wait("every asset node", all_assets_drawn)
    except AssertionError:
        _screenshot(browser, dev_platform, "asset_graph_incomplete.png")
        drawn = sorted(n["name"] for n in _drawn_nodes(browser))
        raise AssertionError(f"asset nodes drawn: {drawn}; missing: {sorted(ASSETS - set(drawn))}") from None
    time.sleep(1)  # let the edges settle after the layout animation
    nodes = _drawn_nodes(browser)
    paths = browser.execute_script(GRAPH_JS)["edges"]
    _screenshot(browser, dev_platform, "asset_graph.png")

    assert {n["name"] for n in nodes} == ASSETS
    edges = set()
    for d in paths:
        (x1, y1), (x2, y2) = _edge_endpoints(d)
        edges.add((_node_at(nodes, x1, y1, "out"), _node_at(nodes, x2, y2, "in")))
    assert edges == EDGES


def test_latest_eval_report_materialization_page(dev_platform, browser) -> None:
    (training_run,) = dev_platform.facts["training_runs"]
    browser.set_window_size(1700, 1500)  # a narrower window reads better for a metadata table
    browser.get(f"{dev_platform.url}/assets/eval_report?view=events")
    _wait("the latest materialization", lambda: "Materialized in run" in browser.find_element("tag name", "body").text)
    time.sleep(1)
    _dismiss_popups(browser)
    body = browser.find_element("tag name", "body").text
    _screenshot(browser, dev_platform, "eval_report.png")

    assert f"Materialized in run {training_run['runId'][:8]}" in body
    checkpoint = sorted((dev_platform.home / "artifacts" / "trained_checkpoint").iterdir())[-1]
    assert str(checkpoint) in body  # the report names the checkpoint it evaluated
    for key in ("validation_loss", "test_loss", "base_model_validation_loss", "model/hit@5", "popularity/hit@5"):
        assert key in body, key
    assert "promoted" in body
