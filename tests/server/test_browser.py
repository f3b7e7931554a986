"""The web client in a real browser: Debian's chromium, headless, talking to a real ``kame serve``.

The fake microphone plays real speech (Piper) on a loop; the test holds the space bar for one loop
and checks that the user's transcript, an oracle, the assistant's words (the shipped tiny front-end's;
``tests/runtime`` checks that they follow the oracle) and the reply audio (decoded and played by the
page) arrive, and that nothing leaks through while the talk button is up. The page's Ogg muxer/demuxer and
resampler are also checked against sphn (what the server uses) inside the same browser.

Set ``KAME_SCREENSHOT=docs/web-client.png`` to keep the mid-conversation screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import sphn

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SENTENCE = "What is the capital of France?"
CONTENT_WORDS = ("capital", "france", "paris")  # a word cut by the talk gate still leaves another
TOKEN = "browser-test-token-7f3a"  # the server needs it: the page must carry it, and only in memory

webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the dev extra)")
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip("needs Debian's chromium and chromium-driver (scripts/setup.sh)", allow_module_level=True)

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        return json.load(response)


def _words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """``kame serve`` with the shipped tiny front-end and the default embedded back-end (Whisper +
    SmolLM2), offering the cascade (the same Whisper and SmolLM2, Piper's voice) beside KAME, the default."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_TORCH_COMPILE": "1"}
    command = [
        sys.executable, "-m", "kame", "serve", "--frontend", "tiny",
        "--max-sessions", "2", "--port", str(port), "--seed", "0", "--auth-token", TOKEN,
        "--pipeline", "kame,cascade",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"kame serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                if _health(url)["status"] == "ok":
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"kame serve did not answer /healthz in 180 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> tuple[str, float]:
    """Real speech for the fake microphone: the sentence in Piper's voice, then 1 s of silence (chromium
    loops it). Piper, not espeak-ng: Whisper tiny misheard espeak's "capital of France" as "carpet" and
    "happy to love friends" in CI, which said nothing about the page."""
    from kame.audio.tts import create_tts

    folder = tmp_path_factory.mktemp("speech")
    speech = create_tts("piper").synthesize(SENTENCE)
    audio, rate = speech.audio.astype(np.float32), speech.sample_rate
    audio = np.concatenate([audio, np.zeros(rate, np.float32)])
    path = folder / "question.wav"
    sf.write(path, audio, rate, subtype="PCM_16")
    return str(path), len(audio) / rate


@contextlib.contextmanager
def chromium(*, fake_audio: str | None = None, hide: tuple[str, ...] = ()) -> Iterator[Any]:
    """Headless chromium through Debian's chromedriver; ``hide`` deletes globals before any page script."""
    profile = tempfile.mkdtemp(prefix="kame-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1440,1100",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    ):  # fmt: skip
        options.add_argument(arg)
    if fake_audio:
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_audio}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        # Screenshots at the CSS size the layout is designed for, whatever the window decorations take.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1440, "height": 960, "deviceScaleFactor": 1, "mobile": False},
        )
        if hide:
            source = "".join(f"delete window.{name};" for name in hide)
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One plain chromium for the tests that need no fake microphone."""
    with chromium() as driver:
        yield driver


def open_page(driver: Any, url: str, *, token: str | None = TOKEN) -> None:
    """Open the page as the link ``kame serve`` prints (``/?token=...``), or without a token."""
    driver.get(f"{url}/?token={token}" if token else f"{url}/")
    ready = "return Boolean(window.kame && window.kame.ready)"
    wait_for(driver, lambda: driver.execute_script(ready), 15, "the page to load")
    if token:  # the token left the address bar and the history at once
        assert "token" not in driver.current_url, driver.current_url
        assert driver.execute_script("return window.kame.snapshot().hasToken")


def snapshot(driver: Any) -> dict[str, Any]:
    return driver.execute_script("return window.kame.snapshot()")


def console(driver: Any) -> str:
    return "\n".join(str(entry.get("message")) for entry in driver.get_log("browser"))


def wait_for(driver: Any, condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            state = driver.execute_script("return window.kame ? window.kame.snapshot() : null")
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; page state: {state}")
        time.sleep(0.2)


def _run_module(driver: Any, body: str, *args: Any) -> Any:
    """Run ``body`` (async JS with ``ogg``, ``resampler`` and ``args`` in scope) in the page."""
    script = f"""
        const done = arguments[arguments.length - 1];
        const args = Array.from(arguments).slice(0, -1);
        (async () => {{
          const ogg = await import('/static/ogg.js');
          const resampler = await import('/static/resampler.js');
          const b64 = {{
            decode: (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0)),
            encode: (bytes) => btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join('')),
          }};
          {body}
        }})().then(done, (err) => done({{error: String(err && err.stack || err)}}));
    """
    result = driver.execute_async_script(script, *args)
    if isinstance(result, dict) and "error" in result:
        raise AssertionError(f"page script failed: {result['error']}")
    return result


def test_ogg_framing_and_resampler_agree_with_sphn(server, browser):
    """The page's Ogg demuxer reads sphn's pages, its muxer writes pages sphn decodes identically."""
    t = np.arange(24000) / 24000
    pcm = (0.4 * np.sin(2 * np.pi * (200 + 1800 * t) * t)).astype(np.float32)  # a 1 s chirp
    writer = sphn.OpusStreamWriter(24000)
    ogg = b"".join(writer.append_pcm(pcm[i : i + 1920]) for i in range(0, len(pcm), 1920))
    reference = sphn.OpusStreamReader(24000).append_bytes(ogg)
    audio_pages = ogg.count(b"OggS") - 2  # sphn writes one packet per page after OpusHead and OpusTags

    open_page(browser, server)
    result = _run_module(
        browser,
        """
        const bytes = b64.decode(args[0]);
        const demux = new ogg.OggOpusDemuxer();
        const packets = [];
        for (let i = 0; i < bytes.length; i += 37) packets.push(...demux.push(bytes.subarray(i, i + 37)));
        const muxer = new ogg.OggOpusMuxer({ serial: 7, inputSampleRate: 24000 });
        const remuxed = ogg.concatBytes(packets.map((p) => muxer.push(p.packet)));
        const again = new ogg.OggOpusDemuxer().push(remuxed);
        const hex = (p) => Array.from(p.packet, (b) => b.toString(16).padStart(2, '0')).join('');
        const same = again.length === packets.length && again.every((p, i) => hex(p) === hex(packets[i]));
        const corrupted = bytes.slice();
        const text = Array.from(corrupted, (b) => String.fromCharCode(b)).join('');
        let at = -1;
        for (let page = 0; page < 5; page++) at = text.indexOf('OggS', at + 1);
        corrupted[at + 40] ^= 0xff;  // a byte inside the 5th page
        const bad = new ogg.OggOpusDemuxer();
        const badPackets = bad.push(corrupted);
        return {
          packets: packets.length, head: demux.head, crcErrors: demux.crcErrors,
          samples48k: packets.reduce((n, p) => n + ogg.opusPacketSamples(p.packet), 0),
          lastGranule: packets[packets.length - 1].granule, remuxed: b64.encode(remuxed), same,
          corruptedCrcErrors: bad.crcErrors, corruptedPackets: badPackets.length,
        };
        """,
        base64.b64encode(ogg).decode(),
    )
    assert result["crcErrors"] == 0
    assert result["packets"] == audio_pages
    assert result["head"]["channels"] == 1
    assert result["samples48k"] == result["lastGranule"] == 2 * len(pcm)  # TOC parsing matches granules
    assert result["same"], "the page's demuxer does not read back its own muxer's pages"
    assert result["corruptedCrcErrors"] == 1 and result["corruptedPackets"] == audio_pages - 1
    remuxed = base64.b64decode(result["remuxed"])
    decoded = sphn.OpusStreamReader(24000).append_bytes(remuxed)
    np.testing.assert_array_equal(decoded, reference)

    out = _run_module(
        browser,
        """
        const run = (from, to, hz, block) => {
          const r = new resampler.Resampler(from, to);
          const w = 2 * Math.PI * hz / from;
          const input = Float32Array.from({ length: from }, (_, i) => 0.5 * Math.sin(w * i));
          const parts = [];
          for (let i = 0; i < from; i += block) parts.push(...r.process(input.subarray(i, i + block)));
          return parts;
        };
        return {
          down1k: run(44100, 24000, 1000, 882), down1kOneShot: run(44100, 24000, 1000, 44100),
          down15k: run(44100, 24000, 15000, 882), up1k: run(48000, 44100, 1000, 960),
        };
        """,
    )
    down = np.array(out["down1k"])
    np.testing.assert_allclose(down, np.array(out["down1kOneShot"]), atol=1e-6)  # block size does not matter
    assert abs(len(down) - 24000) <= 40
    steady = down[200:-200]
    assert abs(np.sqrt(2 * np.mean(steady**2)) - 0.5) < 0.005
    spectrum = np.abs(np.fft.rfft(steady * np.hanning(len(steady))))
    assert abs(np.argmax(spectrum) * 24000 / len(steady) - 1000) < 3
    aliased = np.array(out["down15k"])[200:-200]  # above the new Nyquist frequency: filtered, not folded
    assert np.sqrt(np.mean(aliased**2)) < 0.5 / 100
    up = np.array(out["up1k"])[200:-200]
    assert abs(np.sqrt(2 * np.mean(up**2)) - 0.5) < 0.005


def test_conversation_in_the_browser(server, speech_wav, tmp_path):
    """Press to talk with a fake microphone: transcript, oracle and reply audio reach the page."""
    wav, period = speech_wav
    started = time.monotonic()
    with chromium(fake_audio=wav) as driver:
        open_page(driver, server)
        assert driver.execute_script("return window.kame.missing") is None, console(driver)
        driver.find_element(By.ID, "connect").click()
        wait_for(driver, lambda: snapshot(driver)["connection"] == "live", 30, "the session to go live")
        session = snapshot(driver)["session"]
        assert session, "no session event"

        # The fake microphone is playing speech, but the talk button is up: only silence may go out.
        time.sleep(period + 0.5)
        before = snapshot(driver)
        assert before["stats"]["sentPackets"] > 50, before["stats"]
        assert not before["finals"] and not before["partial"], f"speech leaked through the gate: {before}"

        # Hold the space bar for one loop of the recording: every word passes the gate once.
        ActionChains(driver).key_down(Keys.SPACE).perform()
        wait_for(driver, lambda: snapshot(driver)["talking"], 2, "the space bar to open the microphone")
        assert driver.find_element(By.ID, "talk").get_attribute("aria-pressed") == "true"
        time.sleep(period + 0.3)
        ActionChains(driver).key_up(Keys.SPACE).perform()
        assert not snapshot(driver)["talking"]

        def heard() -> bool:
            s = snapshot(driver)
            text = " ".join([*s["finals"], s["partial"]]).lower()
            return any(word in text for word in CONTENT_WORDS)

        wait_for(driver, heard, 30, f"the transcript of {SENTENCE!r}")
        oracle = wait_for(
            driver,
            lambda: next((o for o in snapshot(driver)["oracles"] if o["text"].strip()), None),
            40,
            "an oracle with text",
        )

        def says_an_oracle_word() -> bool:
            s = snapshot(driver)
            oracle_words = {w for o in s["oracles"] for w in _words(o["text"]) if len(w) >= 4}
            return bool(oracle_words & {w for word in s["words"] for w in _words(word)})

        keep = os.environ.get("KAME_SCREENSHOT")
        if keep:  # for the picture, give it time to say an oracle's word (the tiny model follows loosely)
            deadline = time.monotonic() + 30
            while not says_an_oracle_word() and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(2.0)
        shot = tmp_path / "web-client.png"
        driver.save_screenshot(str(shot))
        if keep:
            shutil.copyfile(shot, keep)

        s = snapshot(driver)
        stats = s["stats"]
        # The reply audio went all the way: Ogg pages -> Opus packets -> decoded -> played by the worklet.
        rate = stats["sampleRate"]
        assert stats["crcErrors"] == 0
        assert stats["receivedPackets"] > 0
        assert stats["decodedSamples"] > 2 * rate, stats
        assert stats["playedSamples"] > 2 * rate, stats
        assert stats["replyPeak"] > 0.01, "the reply audio is all silence"
        assert s["events"].get("metrics", 0) >= 1 and s["metrics"]["frames"] > 0
        assert s["events"].get("oracle_reset", 0) >= 1
        shown, latest = driver.execute_script(  # read together: the oracle may still be streaming
            "const o = window.kame.snapshot().oracles;"
            "return [document.getElementById('oracle-text').textContent, o[o.length - 1].text];"
        )
        assert shown.strip() == latest.strip()
        assert s["words"], "no assistant words"
        text_of = "return document.getElementById(arguments[0]).textContent"
        assert s["words"][-1] in driver.execute_script(text_of, "assistant")
        transcript_panel = driver.execute_script(text_of, "user-scroll").lower()
        assert any(word in transcript_panel for word in CONTENT_WORDS), transcript_panel

        driver.find_element(By.ID, "hangup").click()
        wait_for(driver, lambda: snapshot(driver)["connection"] == "closed", 5, "the page to hang up")
    deadline = time.monotonic() + 10
    while _health(server)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(server)["sessions"] == 0, "the session outlived the page's hang-up"
    print(f"browser conversation took {time.monotonic() - started:.1f} s; oracle: {oracle['text']!r}")


def test_cascade_conversation_in_the_browser(server, speech_wav):
    """The page offers both pipelines; on the cascade a question gets a spoken answer after the turn."""
    wav, period = speech_wav
    with chromium(fake_audio=wav) as driver:
        open_page(driver, server)
        options = driver.execute_script(
            "return Array.from(document.querySelectorAll('#pipeline option'), (o) => o.value)"
        )
        assert options == ["kame", "cascade"]
        assert driver.find_element(By.ID, "pipeline-choice").is_displayed()
        driver.execute_script(
            "const s = document.getElementById('pipeline'); s.value = 'cascade';"
            "s.dispatchEvent(new Event('change'));"
        )
        driver.find_element(By.ID, "connect").click()
        wait_for(driver, lambda: snapshot(driver)["connection"] == "live", 30, "the session to go live")
        assert snapshot(driver)["pipeline"] == "cascade"
        assert "Cascade" in driver.find_element(By.ID, "pipeline-badge").text
        assert driver.find_element(By.ID, "oracle-name").text == "Reply"

        ActionChains(driver).key_down(Keys.SPACE).perform()
        time.sleep(period + 0.3)
        ActionChains(driver).key_up(Keys.SPACE).perform()

        def answered() -> bool:
            # The fake microphone loops, so the hold may catch the sentence split around its 1 s pause:
            # two turns, the second barging in on the first reply. The last reply then runs to its end.
            oracles = snapshot(driver)["oracles"]
            return bool(oracles) and oracles[-1]["status"] == "complete"

        wait_for(driver, answered, 40, "a cascade reply to be spoken to its end")
        s = snapshot(driver)
        text = " ".join(s["finals"]).lower()
        assert any(word in text for word in CONTENT_WORDS), s["finals"]
        assert s["events"].get("turn_end", 0) >= 1 and s["events"].get("reply_start", 0) >= 1
        reply = s["oracles"][-1]
        assert reply["text"].strip() and reply["status"] == "complete", reply
        from kame.runtime.cascade.chunks import speakable

        said = [t for t in speakable(reply["text"]).split() if any(ch.isalnum() for ch in t)]
        assert s["words"] and s["words"][-len(said) :] == said  # all of it was said, word by word
        stats = s["stats"]
        assert stats["playedSamples"] > stats["sampleRate"] and stats["replyPeak"] > 0.01, stats
        assert driver.find_element(By.ID, "oracle-text").text.strip() == reply["text"].strip()
        driver.find_element(By.ID, "hangup").click()
        wait_for(driver, lambda: snapshot(driver)["connection"] == "closed", 5, "the page to hang up")
    deadline = time.monotonic() + 10
    while _health(server)["cascade_sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(server)["cascade_sessions"] == 0


def test_full_server_is_explained(server, browser):
    """With every session taken, the refused WebSocket (HTTP 503) is shown as a full server."""
    from websockets.sync.client import connect

    deadline = time.monotonic() + 10
    while _health(server)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    ws_url = server.replace("http://", "ws://") + f"/api/chat?token={TOKEN}"
    with contextlib.ExitStack() as held:
        for _ in range(2):
            # Unbounded receive queue: a client that never reads would otherwise stall the close handshake.
            ws = held.enter_context(connect(ws_url, open_timeout=20, max_queue=None))
            assert ws.recv(timeout=20) == b"\x00"  # the handshake: this client holds a slot
        driver = browser
        open_page(driver, server)
        driver.find_element(By.ID, "connect").click()
        wait_for(driver, lambda: snapshot(driver)["connection"] == "full", 20, "the full-server message")
        banner = driver.find_element(By.ID, "banner")
        assert banner.is_displayed()
        assert "full" in banner.text.lower() and "503" in banner.text, banner.text
        assert driver.find_element(By.ID, "connect").is_displayed()  # a way to try again
        assert driver.find_element(By.ID, "talk").get_attribute("disabled") is not None


def test_the_page_asks_for_a_token_and_keeps_it_out_of_history(server, speech_wav):
    """Opened without a token, the page says one is needed, takes it in a form and connects with it;
    a wrong one is refused (HTTP 401) and said so. The token never reaches the URL or the console."""
    with chromium(fake_audio=speech_wav[0]) as driver:
        open_page(driver, server, token=None)
        driver.find_element(By.ID, "connect").click()
        wait_for(driver, lambda: snapshot(driver)["connection"] == "unauthorized", 20, "the token request")
        assert snapshot(driver)["tokenAsked"] and "access token" in snapshot(driver)["banner"].lower()
        field = driver.find_element(By.ID, "token-input")
        field.send_keys("wrong-token-123")
        driver.find_element(By.ID, "token-submit").click()
        wait_for(
            driver,
            lambda: (
                snapshot(driver)["connection"] == "unauthorized"
                and "did not accept" in snapshot(driver)["banner"]
            ),
            20,
            "the wrong token to be refused",
        )
        driver.find_element(By.ID, "token-input").send_keys(TOKEN)
        driver.find_element(By.ID, "token-submit").click()
        wait_for(driver, lambda: snapshot(driver)["connection"] == "live", 30, "the session to go live")
        assert "token" not in driver.current_url
        driver.refresh()  # the tab keeps it (session storage), so a reload needs no new link
        ready = "return Boolean(window.kame && window.kame.ready)"
        wait_for(driver, lambda: driver.execute_script(ready), 15, "the page to reload")
        assert snapshot(driver)["hasToken"] and not snapshot(driver)["tokenAsked"]
        logs = console(driver)
        assert TOKEN not in logs and "wrong-token-123" not in logs


def test_missing_webcodecs_is_explained(server):
    """A browser without WebCodecs gets told which features are missing, and cannot start."""
    with chromium(hide=("AudioEncoder", "AudioDecoder")) as driver:
        open_page(driver, server)
        missing = driver.execute_script("return window.kame.missing")
        assert any("AudioEncoder" in m for m in missing) and any("AudioDecoder" in m for m in missing)
        banner = driver.find_element(By.ID, "banner")
        assert banner.is_displayed() and "AudioEncoder" in banner.text, banner.text
        assert not driver.find_element(By.ID, "connect").is_enabled()
