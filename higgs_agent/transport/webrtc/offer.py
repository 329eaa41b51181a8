"""The body of `POST /v1/realtime/calls`, in either of OpenAI's two forms, and the API's error answers.

- the SDP offer itself (`Content-Type: application/sdp`, what OpenAI's browser examples send), or
- `multipart/form-data` with a part `sdp` (the offer) and an optional part `session` (JSON, a session config
  applied before the session starts), what OpenAI's SDKs send.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from higgs_agent.protocol.errors import loads_strict

MAX_SDP_BYTES = 64 * 1024  # a browser's offer is a few KB


class ApiError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:  # noqa: A002
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


@dataclass(frozen=True)
class CallRequest:
    sdp: str
    session: dict[str, Any] | None = None


async def read_call_request(request: Request) -> CallRequest:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _read_form(request)
    body = await request.body()
    if len(body) > MAX_SDP_BYTES:
        raise ApiError(400, f"the SDP offer is over {MAX_SDP_BYTES // 1024} KiB", "invalid_offer", param="sdp")
    return CallRequest(_checked_sdp(body.decode("utf-8", errors="replace")))


async def _read_form(request: Request) -> CallRequest:
    try:
        form = await request.form(max_files=2, max_fields=8, max_part_size=MAX_SDP_BYTES)
    except Exception as exc:  # noqa: BLE001 - python-multipart's and starlette's parse errors alike
        raise ApiError(400, f"could not read the multipart form: {exc}", "invalid_request") from None
    sdp = await _text(form.get("sdp"))
    if sdp is None:
        raise ApiError(400, "the form has no 'sdp' part (the SDP offer)", "missing_required_parameter", param="sdp")
    session_text = await _text(form.get("session"))
    session = None
    if session_text is not None and session_text.strip():
        try:
            session = loads_strict(session_text)
        except (ValueError, RecursionError):
            raise ApiError(400, "the 'session' part is not valid JSON", "invalid_json", param="session") from None
        if not isinstance(session, dict):
            raise ApiError(400, "the 'session' part must be a JSON object (a session config)", "invalid_type",
                           param="session")
    return CallRequest(_checked_sdp(sdp), session)


async def _text(part: str | UploadFile | None) -> str | None:
    if part is None or isinstance(part, str):
        return part
    return (await part.read()).decode("utf-8", errors="replace")


def _checked_sdp(sdp: str) -> str:
    if not sdp.strip():
        raise ApiError(400, "no SDP offer: send the offer as the body (Content-Type: application/sdp) or as the "
                       "'sdp' part of a multipart form", "missing_required_parameter", param="sdp")
    if not sdp.lstrip().startswith("v=0"):
        raise ApiError(400, "the body is not an SDP offer (it must start with 'v=0')", "invalid_offer", param="sdp")
    return sdp.lstrip()
