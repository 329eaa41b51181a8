"""The HTTP server over a real socket: health, streamed speech, bad requests."""

import json

import httpx
import pytest

from higgs_agent.testing.serve_process import running_serve


@pytest.fixture(scope="module")
def server(tiny_dir):
    with running_serve(["--model", str(tiny_dir)]) as serve:
        yield serve.base


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
