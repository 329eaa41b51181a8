"""The HTTP server over a real socket: health, streamed speech, bad requests."""

import json
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_dir):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "higgs_agent", "serve", "--model", str(tiny_dir),
                             "--port", str(port)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(proc.stderr.read().decode())
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_health(server):
    body = httpx.get(f"{server}/health").json()
    assert body["status"] == "ok" and body["device"] == "cpu"


def test_speech_streams_pcm_in_chunks(server):
    chunks = []
    with httpx.stream("POST", f"{server}/v1/audio/speech", timeout=120,
                      json={"input": "The quick brown fox.", "seed": 1, "max_frames": 60,
                            "response_format": "pcm"}) as response:
        assert response.status_code == 200
        assert "rate=24000" in response.headers["content-type"]
        for chunk in response.iter_raw():
            chunks.append(chunk)
    audio = b"".join(chunks)
    assert len(audio) % 1920 == 0 and 0 < len(audio) <= (60 - 8) * 1920  # whole 40 ms frames of PCM16
    assert len(chunks) >= 2  # streamed, not one blob at the end


@pytest.mark.parametrize("body,needle", [
    (b"{not json", "JSON"),
    (json.dumps({"input": ""}).encode(), "input"),
    (json.dumps({"input": "   "}).encode(), "input"),
    (json.dumps({"input": "hi", "response_format": "wma"}).encode(), "response_format"),
])
def test_bad_requests_get_clear_errors(server, body, needle):
    response = httpx.post(f"{server}/v1/audio/speech", content=body)
    assert response.status_code == 400 and needle in response.json()["error"]["message"]
    assert httpx.get(f"{server}/health").status_code == 200  # and the server keeps running
