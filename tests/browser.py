"""Real Chromium for the web page's tests: Debian's /usr/bin/chromium driven by Playwright (never a downloaded
browser), headless, on a closed network, with a WAV file as its microphone."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import BrowserContext, Page, async_playwright

from higgs_agent.audio import resample, write_wav

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FAKE_MIC_RATE = 48_000  # Chromium's fake capture device runs at 48 kHz; a file at its rate is not resampled

CLOSED_NETWORK_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--disable-default-apps", "--disable-breakpad",
    "--no-default-browser-check", "--metrics-recording-only",
]
MEDIA_FLAGS = [
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # WebRTC on a machine with only loopback: let ICE use 127.0.0.1, and offer plain host addresses rather
    # than mDNS names the server would have to resolve.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


def write_fake_microphone(path: Path, audio: np.ndarray, rate: int) -> Path:
    """`audio` as the WAV Chromium's fake microphone plays: mono 16-bit PCM at 48 kHz."""
    write_wav(path, resample(audio, rate, FAKE_MIC_RATE), FAKE_MIC_RATE)
    return path


@asynccontextmanager
async def chromium(microphone: Path | None = None, allow_microphone: bool = True,
                   viewport: dict[str, int] | None = None) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium profile whose microphone plays `microphone` once from each getUserMedia
    (or the fake device's beep when None); `allow_microphone=False` denies the permission instead."""
    if CHROMIUM is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    args = [*CLOSED_NETWORK_FLAGS, *MEDIA_FLAGS]
    if allow_microphone:
        args.append("--use-fake-ui-for-media-stream")  # grants the permission prompt
    else:
        args.append("--deny-permission-prompts")
    if microphone is not None:
        args.append(f"--use-file-for-fake-audio-capture={microphone}%noloop")
    profile = tempfile.mkdtemp(prefix="higgs-chromium-")
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=args,
                viewport=viewport or {"width": 1280, "height": 800})
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


class ChatPage:
    """The voice-chat page in a browser tab, with its console kept for failure messages."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    @classmethod
    async def open(cls, context: BrowserContext, base_url: str, transport: str = "websocket",
                   api_key: str = "") -> ChatPage:
        chat = cls(context.pages[0] if context.pages else await context.new_page())
        await chat.page.goto(base_url + "/")
        await chat.page.wait_for_selector("body[data-ready='true'][data-voices-loaded='true']")
        await chat.page.select_option("#transport", transport)
        await chat.page.fill("#api-key", api_key)
        return chat

    async def talk(self) -> None:
        await self.page.click("#talk")

    async def stats(self) -> dict[str, Any]:
        """What the page measured (window.voiceChat.stats)."""
        return await self.page.evaluate("() => JSON.parse(JSON.stringify(window.voiceChat.stats))")

    async def wait_for(self, condition: str, timeout_s: float = 60) -> None:
        """Wait until the JavaScript expression `condition` is true in the page."""
        try:
            await self.page.wait_for_function(condition, timeout=timeout_s * 1000, polling=100)
        except Exception as exc:
            shown = await self.page.evaluate("document.querySelector('#error')?.hidden === false "
                                             "? document.querySelector('#error').innerText : ''")
            raise AssertionError(f"the page never reached `{condition}`; it shows {shown!r}; its console:\n"
                                 f"{self.log()}") from exc

    async def error_banner(self) -> dict[str, str]:
        banner = self.page.locator("#error")
        await banner.wait_for(state="visible")
        return {"kind": await banner.get_attribute("data-kind") or "", "text": await banner.inner_text()}

    async def texts(self, selector: str) -> list[str]:
        return [text.strip() for text in await self.page.locator(selector).all_inner_texts()]

    async def screenshot(self, folder: Path, name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=False)
        return path

    def log(self) -> str:
        return "\n".join(self.console[-60:])


def artifacts_folder(default: Path) -> Path:
    """Where tests leave screenshots: $HIGGS_TEST_ARTIFACTS, else `default` (pytest's tmp dir)."""
    folder = Path(os.environ.get("HIGGS_TEST_ARTIFACTS") or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def summarize(stats: dict[str, Any]) -> str:
    """The page's measurements, less the output meter's history, for a test's log."""
    return json.dumps({k: v for k, v in stats.items() if k != "output"})
