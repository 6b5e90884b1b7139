"""The demo page at `/` in headless Chromium: classify, translate with an attention heatmap, tag entities, suggest
next words and stream a generation, show errors."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.deploy.conftest import tool

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--no-first-run",
                  "--disable-sync", "--window-size=1280,1400"]
SCREENSHOT_COPY = os.environ.get("SEQSERVE_DEMO_SCREENSHOT")  # set to keep the screenshot for a look


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = tool("chromium")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=ChromeService(executable_path=tool("chromedriver")))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def fill(driver: WebDriver, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def wait_text(driver: WebDriver, element_id: str, timeout: float = 30) -> str:
    """The element's text once it is visible and not empty."""
    def ready(d: WebDriver) -> str | bool:
        element = d.find_element(By.ID, element_id)
        return element.is_displayed() and element.text.strip()

    return str(WebDriverWait(driver, timeout).until(ready))


# What the tagging panel shows: its text as a reader sees it (the entities' label badges left out), and each
# highlighted entity as (text, data-label, the badge's text).
RENDERED_TAGS = """
const box = arguments[0];
const text = (node) => node.nodeType === Node.TEXT_NODE ? node.data
  : node.classList.contains("label") ? "" : Array.from(node.childNodes, text).join("");
return {text: text(box), markup: Array.from(box.querySelectorAll("*"), (e) => e.tagName.toLowerCase()),
        entities: Array.from(box.querySelectorAll("mark.entity"),
                             (m) => [text(m), m.dataset.label, m.querySelector(".label").textContent])};
"""


def tag_in_page(driver: WebDriver, text: str, set_value: bool = False) -> dict[str, Any]:
    """Submit `text` on the tagging form and wait for the result (or the error) to show."""
    field = driver.find_element(By.ID, "tag-text")
    if set_value:  # a long text: typing it key by key is slow
        driver.execute_script("arguments[0].value = arguments[1];", field, text)
    else:
        fill(driver, "tag-text", text)
    driver.execute_script("document.getElementById('tag-status').textContent = '';")
    driver.find_element(By.ID, "tag-submit").click()
    WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.ID, "tag-status").text.startswith(("Done", "4", "5")))
    return dict(driver.execute_script(RENDERED_TAGS, driver.find_element(By.ID, "tag-output")))


def test_demo_page_classifies_translates_and_draws_attention(make_server: Any, browser: WebDriver,
                                                              tmp_path: Path) -> None:
    server = make_server()
    page = httpx.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/" not in httpx.get(f"{server.url}/openapi.json", timeout=10).json()["paths"], "the page is not API"
    assert httpx.get(f"{server.url}/static/demo.js", timeout=10).headers["content-type"].startswith("text/javascript")
    for outside in ("app.py", "..%2Fapp.py", "%2E%2E%2F%2E%2E%2Fpyproject.toml"):
        assert httpx.get(f"{server.url}/static/{outside}", timeout=10).status_code == 404

    browser.get(f"{server.url}/")
    assert browser.title == "seqserve demo"
    assert browser.find_element(By.ID, "classify-model").get_attribute("value") == "sentiment"
    assert browser.find_element(By.ID, "translate-model").get_attribute("value") == "en-de"

    fill(browser, "classify-model", "reviews")
    fill(browser, "classify-text", "a superb and moving film")
    browser.find_element(By.ID, "classify-submit").click()
    label = wait_text(browser, "classify-label")
    expected = httpx.post(f"{server.url}/v1/classify", json={"model": "reviews", "texts": ["a superb and moving film"]},
                          timeout=30).json()["results"][0]
    assert label == expected["label"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#classify-probabilities tbody tr")
    assert len(rows) == len(expected["probabilities"])

    fill(browser, "translate-model", "numbers")
    fill(browser, "translate-text", "two five nine")
    fill(browser, "translate-beam", "1")
    browser.find_element(By.ID, "translate-submit").click()
    translation = wait_text(browser, "translate-output")
    expected = httpx.post(f"{server.url}/v1/translate", timeout=30, json={
        "model": "numbers", "texts": ["two five nine"], "beam_size": 1, "return_attention": True}).json()["results"][0]
    assert translation == expected["translation"]
    header = browser.find_elements(By.CSS_SELECTOR, "#attention-heatmap thead th")
    body_rows = browser.find_elements(By.CSS_SELECTOR, "#attention-heatmap tbody tr")
    assert len(header) == len(expected["source_tokens"]) + 1
    assert len(body_rows) == len(expected["target_tokens"]) == len(expected["attention"])
    cells = body_rows[0].find_elements(By.TAG_NAME, "td")
    assert len(cells) == len(expected["source_tokens"])
    # the heatmap's blue at the weight's alpha; a weight of 1 serializes as rgb(), without the alpha
    assert all(re.search(r"background: rgba?\(39, 84, 197[,)]", c.get_attribute("style") or "") for c in cells)
    assert "error" not in (browser.find_element(By.ID, "translate-status").get_attribute("class") or "")

    fill(browser, "translate-text", "two five. nine one!")  # two sentences: a heatmap each
    browser.find_element(By.ID, "translate-submit").click()
    paragraph = httpx.post(f"{server.url}/v1/translate", timeout=30, json={
        "model": "numbers", "texts": ["two five. nine one!"], "beam_size": 1,
        "return_attention": True}).json()["results"][0]
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "translate-output").text == paragraph["translation"])
    tables = browser.find_elements(By.CSS_SELECTOR, "#attention-heatmap, table.sentence-heatmap")
    assert len(tables) == len(paragraph["sentences"]) == 2
    for table, sentence in zip(tables, paragraph["sentences"], strict=True):
        assert len(table.find_elements(By.CSS_SELECTOR, "tbody tr")) == len(sentence["target_tokens"])

    screenshot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    if SCREENSHOT_COPY:
        shutil.copy(screenshot, SCREENSHOT_COPY)

    fill(browser, "classify-model", "no-such-model")
    browser.find_element(By.ID, "classify-submit").click()
    message = WebDriverWait(browser, 30).until(
        lambda d: "error" in (d.find_element(By.ID, "classify-status").get_attribute("class") or "")
        and d.find_element(By.ID, "classify-status").text)
    assert str(message).startswith("404")
    assert not browser.find_element(By.ID, "classify-result").is_displayed()


def test_demo_page_highlights_entities_and_the_intent(make_server: Any, browser: WebDriver,
                                                      tagger_version: Path) -> None:
    server = make_server()
    browser.get(f"{server.url}/")
    assert browser.find_element(By.ID, "tag-model").get_attribute("value") == ""  # the server's only tagger

    text = "show me flights from boston to new york on monday 👍"
    shown = tag_in_page(browser, text)
    assert shown["text"] == text, "the rendered text is the input, emoji and spaces intact"
    expected = httpx.post(f"{server.url}/v1/tag", json={"texts": [text]}, timeout=30).json()
    highlighted = [(t, label) for t, label, _ in shown["entities"]]
    assert highlighted == [(e["text"], e["label"]) for e in expected["results"][0]["entities"]]
    # the toy tagger never saw an emoji, and may call the unknown word after "monday" a place: that is the
    # model's, and the page shows it as it is; the words it was trained on are what this checks
    assert [(t, label) for t, label in highlighted if t != "👍"] == [
        ("boston", "fromloc"), ("new york", "toloc"), ("monday", "depart_date.day_name")]
    assert all(label == badge for _, label, badge in shown["entities"])
    marks = browser.find_elements(By.CSS_SELECTOR, "#tag-output mark.entity")
    assert [m.get_attribute("title") for m in marks] == [
        f"{e['label']} {e['score']:.2f}" for e in expected["results"][0]["entities"]]
    assert wait_text(browser, "tag-intent") == "flight"
    assert browser.find_element(By.ID, "tag-intent-score").text.endswith("%)")
    assert browser.find_element(By.ID, "tag-source").text == "(flights v1)"
    assert not browser.find_element(By.ID, "tag-truncated").is_displayed()
    assert "error" not in (browser.find_element(By.ID, "tag-status").get_attribute("class") or "")
    words = browser.find_elements(By.CSS_SELECTOR, "#tag-tokens tbody tr")
    assert len(words) == len(expected["results"][0]["tokens"])

    # astral characters before an entity: offsets count code points, not UTF-16 units
    text = "𠀀𠀁 👍🏽 flights from boston to denver"
    shown = tag_in_page(browser, text)
    assert shown["text"] == text
    assert ("boston", "fromloc") in [(t, label) for t, label, _ in shown["entities"]]

    # user text is text, never markup
    text = "flights from <b>x</b> to <img src=x onerror=alert(1)> boston"
    shown = tag_in_page(browser, text)
    assert shown["text"] == text
    assert set(shown["markup"]) <= {"mark", "span"}
    assert not browser.find_elements(By.CSS_SELECTOR, "#tag-output b, #tag-output img")

    # a text past the model's max length: a note says where it was cut, and the rest is still shown
    max_length = json.loads((tagger_version / "config.json").read_text())["max_length"]
    text = " ".join(["boston"] * (max_length + 20))
    shown = tag_in_page(browser, text, set_value=True)
    assert shown["text"] == text
    cut = httpx.post(f"{server.url}/v1/tag", json={"texts": [text]}, timeout=30).json()["results"][0]["truncated_at"]
    note = wait_text(browser, "tag-truncated")
    assert f"first {cut} characters" in note
    assert browser.find_element(By.CSS_SELECTOR, "#tag-output .untagged").text.split() == text[cut:].split()

    # errors show in the status line, as on the other forms
    fill(browser, "tag-model", "reviews")  # a classifier, not a tagger
    tag_in_page(browser, "show me flights")
    status = browser.find_element(By.ID, "tag-status")
    assert "error" in (status.get_attribute("class") or "") and status.text[:1] == "4" and "tagger" in status.text
    assert not browser.find_element(By.ID, "tag-result").is_displayed()


# The next-word chips: the text they were asked for (the page keeps it on the box) and their words.
SUGGESTIONS = """
const box = document.getElementById("complete-suggestions");
return {text: box.dataset.text ?? null, words: Array.from(box.querySelectorAll("button.chip"), (c) => c.dataset.word)};
"""
# Hold the answer for one text until window.releaseHeld(); it is delivered even though the page aborted the request
# (as one already on its way would be), and window.lateHandled turns true once the page has read it.
HOLD_COMPLETION = """
const realFetch = window.fetch;
let held = arguments[0], release;
const gate = new Promise((resolve) => { release = resolve; });
Object.assign(window, {heldRequest: false, lateHandled: false, releaseHeld: release});
window.fetch = async (url, init) => {
  if (url !== "/v1/complete" || JSON.parse(init.body).texts[0] !== held) return realFetch(url, init);
  held = null;
  window.heldRequest = true;
  const response = await realFetch(url, {...init, signal: undefined});
  await gate;
  const json = response.json.bind(response);
  response.json = async () => {
    const data = await json();
    setTimeout(() => { window.lateHandled = true; });  // after the page's own continuation (microtasks)
    return data;
  };
  return response;
};
"""
# Every text the generation's output shows, in order (each token's append replaces the text node).
RECORD_OUTPUT = """
window.seen = [];
new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((n) => window.seen.push(n.data))))
  .observe(document.getElementById("generate-output"), {childList: true});
"""


def type_in(driver: WebDriver, element_id: str, text: str) -> None:
    """Set the field's text at once and fire one input event, as one keystroke would."""
    driver.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));",
                          driver.find_element(By.ID, element_id), text)


def suggestions_for(driver: WebDriver, text: str) -> list[str]:
    """The suggested words once the chips shown are those for `text`."""
    def shown(d: WebDriver) -> list[str] | bool:
        chips = d.execute_script(SUGGESTIONS)
        return list(chips["words"]) if chips["text"] == text and chips["words"] else False

    return list(WebDriverWait(driver, 30).until(shown))


def completions(url: str, text: str) -> list[str]:
    answer = httpx.post(f"{url}/v1/complete", json={"texts": [text], "k": 5}, timeout=30).json()
    return [s["word"] for s in answer["results"][0]["suggestions"]]


def wait_error(driver: WebDriver, element_id: str) -> str:
    return str(WebDriverWait(driver, 30).until(
        lambda d: "error" in (d.find_element(By.ID, element_id).get_attribute("class") or "")
        and d.find_element(By.ID, element_id).text))


def test_demo_page_suggests_next_words_and_streams_a_generation(make_server: Any, browser: WebDriver) -> None:
    server = make_server()
    browser.get(f"{server.url}/")
    assert browser.find_element(By.ID, "complete-model").get_attribute("value") == ""  # the server's only LM

    fill(browser, "complete-text", "the eleph")
    assert "elephant" in suggestions_for(browser, "the eleph")
    chip = browser.find_element(By.CSS_SELECTOR, '#complete-suggestions button.chip[data-word="elephant"]')
    assert chip.text.startswith("elephant") and chip.text.endswith("%")
    chip.click()
    assert browser.find_element(By.ID, "complete-text").get_attribute("value") == "the elephant "
    assert suggestions_for(browser, "the elephant ") == completions(server.url, "the elephant ")
    assert "error" not in (browser.find_element(By.ID, "complete-status").get_attribute("class") or "")

    # an answer that arrives after the answer for a newer text is dropped
    browser.execute_script(HOLD_COMPLETION, "the cat ")
    type_in(browser, "complete-text", "the cat ")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return window.heldRequest"))
    type_in(browser, "complete-text", "the cat jumps over the ")
    latest = suggestions_for(browser, "the cat jumps over the ")
    browser.execute_script("window.releaseHeld()")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return window.lateHandled"))
    assert browser.execute_script(SUGGESTIONS) == {"text": "the cat jumps over the ", "words": latest}

    # the generation streams into the output, token by token, and ends with the whole result
    fill(browser, "complete-text", "the cat")
    fill(browser, "generate-max-tokens", "12")
    fill(browser, "generate-temperature", "0.8")
    fill(browser, "generate-seed", "3")
    browser.execute_script(RECORD_OUTPUT)
    browser.find_element(By.ID, "generate-submit").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "generate-status").text.startswith(("Done", "4", "5")))
    assert "error" not in (browser.find_element(By.ID, "generate-status").get_attribute("class") or "")
    expected = httpx.post(f"{server.url}/v1/generate", timeout=30, json={
        "texts": ["the cat"], "max_tokens": 12, "temperature": 0.8, "seed": 3}).json()["results"][0]
    assert browser.find_element(By.ID, "generate-prompt").get_attribute("textContent") == "the cat"
    assert browser.find_element(By.ID, "generate-output").get_attribute("textContent") == expected["text"]
    seen = browser.execute_script("return window.seen")
    assert len(set(seen)) > 2 and all(expected["text"].startswith(text) for text in seen), seen
    assert browser.find_element(By.ID, "generate-info").text == (
        f"{len(expected['token_ids'])} tokens, {expected['finish_reason']}, seed 3 (animals v1)")

    # errors show in the status lines, as on the other forms
    fill(browser, "complete-model", "reviews")  # a classifier, not a language model
    browser.find_element(By.ID, "generate-submit").click()
    assert wait_error(browser, "generate-status").startswith("404")
    assert not browser.find_element(By.ID, "generate-result").is_displayed()
    browser.find_element(By.ID, "complete-text").send_keys(" ")
    assert wait_error(browser, "complete-status").startswith("404")
    assert browser.execute_script(SUGGESTIONS) == {"text": None, "words": []}
