"""The Dagster UI, checked in a real browser: the webserver on loopback serving opengrok_dagster.definitions,
Debian's headless Chromium driven by ChromeDriver (no browser downloads), and the webserver's GraphQL API
for the assets and their lineage."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance, materialize
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from assets.collection import prompts, raw_responses
from devtools.loopback import LoopbackConfig, LoopbackTeacher
from opengrok_dagster.partitions import collection_partition_key, topic_partitions
from opengrok_dagster.settings import CONFIG_DIR
from resources import OpenGrokPaths, ParquetIOManager, TeacherResource
from tests.conftest import GENERATIVE_ONLY, REPO_ROOT


pytestmark = pytest.mark.integration

# The six artifacts between stages (DEVELOPERS.md), and the upstream asset each is built from.
ARTIFACT_UPSTREAM = {
    "prompts": set(),
    "raw_responses": {"prompts"},
    "filtered_responses": {"raw_responses"},
    "mask_tables": {"filtered_responses"},
    "lora_checkpoint": {"mask_tables"},
    "eval_report": {"lora_checkpoint"},
}
ROUND = "2026-11-24"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# As root in a container, with no network beyond loopback: no sandbox, no background connections.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1600,1000",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Webserver:
    """`dagster-webserver` for the project's code location on loopback, with its own DAGSTER_HOME."""

    def __init__(self, root: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dagster_home = root / "dagster_home"
        self.dagster_home.mkdir()
        (self.dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.opengrok_home = root / "home"
        # PYTHONWARNINGS=default prints each warning once, deprecations included, so the log shows ours
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            "OPENGROK_HOME": str(self.opengrok_home),
            "PYTHONWARNINGS": "default",
        }
        self.log = root / "webserver.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 240) -> "Webserver":
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster_webserver",
                "-w",
                "workspace.yaml",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"dagster-webserver exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                entries = self.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
                if entries and all(entry["loadStatus"] == "LOADED" for entry in entries):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the code location did not load in {timeout_s}s:\n{self.log.read_text()[-3000:]}")

    def graphql(self, query: str) -> dict:
        response = httpx.post(f"{self.url}/graphql", json={"query": query}, timeout=60)
        response.raise_for_status()
        payload = response.json()
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


LOCATIONS = """{ workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus
  locationOrLoadError { __typename ... on PythonError { message } }
} } } }"""

ASSET_LINEAGE = """{ assetNodes {
  assetKey { path } groupName
  dependencyKeys { path }
  dependedByKeys { path }
} }"""


@pytest.fixture(scope="module")
def loopback():
    with LoopbackTeacher(LoopbackConfig()) as server:
        yield server


@pytest.fixture(scope="module")
def webserver(tmp_path_factory, loopback):
    """The webserver on an instance where one partition has been collected, so pages show real events."""
    server = Webserver(tmp_path_factory.mktemp("ui"))
    with DagsterInstance.from_config(str(server.dagster_home)) as instance:
        instance.add_dynamic_partitions(topic_partitions.name, ["climate"])
        collected = materialize(
            [prompts, raw_responses],
            instance=instance,
            partition_key=collection_partition_key("climate", ROUND),
            resources={
                "io_manager": ParquetIOManager(base_dir=str(server.opengrok_home / "assets")),
                "paths": OpenGrokPaths(
                    home=str(server.opengrok_home), topic_catalogue=str(CONFIG_DIR / "topics.yaml")
                ),
                "teacher": TeacherResource(mode="remote", base_url=loopback.base_url, model="grok-test"),
            },
            run_config=GENERATIVE_ONLY,
        )
        assert collected.success
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lineage(webserver) -> dict[str, dict]:
    nodes = webserver.graphql(ASSET_LINEAGE)["assetNodes"]
    return {
        "/".join(node["assetKey"]["path"]): {
            "group": node["groupName"],
            "upstream": {"/".join(key["path"]) for key in node["dependencyKeys"]},
            "downstream": {"/".join(key["path"]) for key in node["dependedByKeys"]},
        }
        for node in nodes
    }


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            pytest.fail(f"{path} is missing: `make system-packages` installs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _page_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''")


def _open_until(driver, url: str, expected: list[str], timeout_s: float = 120) -> str:
    """Open `url` and wait until the rendered page shows every string in `expected` (the UI renders
    client-side). A fresh profile gets Dagster's one-time "Join the community" dialog: skip it, as a person would."""
    driver.get(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            button.click()
        text = _page_text(driver)
        if all(item in text for item in expected) and not driver.find_elements(
            By.XPATH, "//button[normalize-space()='Skip']"
        ):
            return text
        time.sleep(1)
    missing = [item for item in expected if item not in _page_text(driver)]
    raise AssertionError(f"{url} never showed {missing}; it shows:\n{_page_text(driver)[:2000]}")


def _screenshot(driver, path: Path) -> Path:
    time.sleep(2)  # let the graph layout and its animation settle before the picture
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    return path


def test_code_location_loads_without_errors_or_warnings_of_ours(webserver):
    [entry] = webserver.graphql(LOCATIONS)["workspaceOrError"]["locationEntries"]
    assert entry["loadStatus"] == "LOADED" and entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
    ours = ("opengrok_dagster", f"{os.sep}assets{os.sep}", f"{os.sep}resources{os.sep}")
    warnings = [
        line
        for line in webserver.log.read_text().splitlines()
        if ("Warning" in line or "Error" in line) and any(part in line for part in ours)
    ]
    assert not warnings, "\n".join(warnings)


@pytest.mark.parametrize("artifact", list(ARTIFACT_UPSTREAM))
def test_graphql_lists_the_artifact_with_its_lineage(lineage, artifact):
    assert artifact in lineage, f"asset {artifact!r} is not in the code location; it has {sorted(lineage)}"
    node = lineage[artifact]
    assert ARTIFACT_UPSTREAM[artifact] <= node["upstream"], f"{artifact} upstream: {node['upstream']}"
    for upstream in ARTIFACT_UPSTREAM[artifact]:
        assert artifact in lineage[upstream]["downstream"]


def test_global_asset_graph_shows_the_group_of_every_stage(webserver, browser, lineage, tmp_path):
    groups = sorted({lineage[artifact]["group"] for artifact in ARTIFACT_UPSTREAM if artifact in lineage})
    _open_until(browser, f"{webserver.url}/asset-groups", groups)
    _screenshot(browser, tmp_path / "global-asset-lineage.png")


def test_lineage_view_shows_the_chain_of_all_six_artifacts(webserver, browser, lineage, tmp_path):
    """The eval report's upstream lineage in the UI: the whole chain from prompts to the report."""
    last = next(artifact for artifact in reversed(ARTIFACT_UPSTREAM) if artifact in lineage)
    present = [artifact for artifact in ARTIFACT_UPSTREAM if artifact in lineage]
    text = _open_until(
        browser, f"{webserver.url}/assets/{last}?view=lineage&lineageScope=upstream&lineageDepth=10", present
    )
    screenshot = _screenshot(browser, tmp_path / "ui-asset-graph.png")
    if os.environ.get("OPENGROK_SAVE_UI_SCREENSHOT"):  # refresh the picture in docs/ on request only
        shutil.copy(screenshot, REPO_ROOT / "docs" / "ui-asset-graph.png")
    missing = [artifact for artifact in ARTIFACT_UPSTREAM if artifact not in text]
    assert not missing, f"the lineage view does not show {missing}"


def test_asset_page_shows_the_collected_partition(webserver, browser, tmp_path):
    _open_until(browser, f"{webserver.url}/assets/raw_responses?view=partitions", ["raw_responses", "climate", ROUND])
    _screenshot(browser, tmp_path / "raw_responses.png")
