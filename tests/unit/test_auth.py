"""JWT: issue/verify, and the attacks a forged token would try."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from taskflow.auth import issue_token, token_from_header, verify_token
from taskflow.errors import Unauthorized

SECRET = b"s" * 40


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_round_trip() -> None:
    assert verify_token(issue_token(42, SECRET, 60), SECRET) == 42


def test_alg_none_is_refused() -> None:
    claims = {"sub": "1", "iat": int(time.time()), "exp": int(time.time()) + 60, "iss": "taskflow"}
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    with pytest.raises(Unauthorized):
        verify_token(forged, SECRET)


def test_other_key_expired_and_tampered() -> None:
    with pytest.raises(Unauthorized):
        verify_token(issue_token(1, b"o" * 40, 60), SECRET)
    expired = jwt.encode(
        {"sub": "1", "iat": 1, "exp": int(time.time()) - 10, "iss": "taskflow"}, SECRET, "HS256"
    )
    with pytest.raises(Unauthorized, match="expired"):
        verify_token(expired, SECRET)
    header, payload, signature = issue_token(1, SECRET, 60).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "2"
    with pytest.raises(Unauthorized):
        verify_token(f"{header}.{_b64(claims)}.{signature}", SECRET)


def test_other_algorithms_and_missing_claims() -> None:
    hs512 = jwt.encode(
        {"sub": "1", "iat": 1, "exp": int(time.time()) + 60, "iss": "taskflow"},
        SECRET * 2,
        "HS512",
    )
    with pytest.raises(Unauthorized):
        verify_token(hs512, SECRET * 2)
    no_exp = jwt.encode({"sub": "1", "iat": 1, "iss": "taskflow"}, SECRET, "HS256")
    with pytest.raises(Unauthorized):
        verify_token(no_exp, SECRET)
    bad_sub = jwt.encode(
        {"sub": "1 OR 1=1", "iat": 1, "exp": int(time.time()) + 60, "iss": "taskflow"},
        SECRET,
        "HS256",
    )
    with pytest.raises(Unauthorized):
        verify_token(bad_sub, SECRET)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "Token abc", "abc"])
def test_header_needs_bearer(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        token_from_header(header)


def test_header_accepts_login_token_verbatim() -> None:
    assert token_from_header("Bearer abc.def.ghi") == "abc.def.ghi"
    assert token_from_header("bearer abc") == "abc"


def test_a_remembered_token_is_accepted_only_under_its_key_and_until_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = issue_token(7, SECRET, 60)
    assert verify_token(token, SECRET) == 7
    assert verify_token(token, SECRET) == 7  # remembered
    with pytest.raises(Unauthorized):
        verify_token(token, b"o" * 40)  # never under another key
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(Unauthorized, match="expired"):
        verify_token(token, SECRET)
