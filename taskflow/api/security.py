"""Who is calling: the bearer token on every route that wants a user, checked
against its signature, its expiry and the revocations; and from where."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from quart import g, request

from taskflow.api import config, services
from taskflow.auth import TokenClaims, read_token, token_from_header

P = ParamSpec("P")
R = TypeVar("R")

# Clients of one IPv6 /64 are one client for the throttles: a single host
# usually has the whole /64 to pick addresses from.
IPV6_CLIENT_PREFIX = 64
ADDRESS_MAX_LENGTH = 100


def current_user_id() -> int:
    user_id: int = g.user_id
    return user_id


def current_token() -> TokenClaims:
    claims: TokenClaims = g.token
    return claims


async def authenticate(token: str) -> TokenClaims:
    """The claims of a token that is valid and not revoked; sets the request's user.

    Every route that wants a user comes through here, so no token is
    accepted, remembered as verified or not, without the revocation check.
    """
    claims = read_token(token, config().secret)
    await services().revocations.check(claims)
    g.user_id = claims.user_id
    g.token = claims
    return claims


def require_user(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(view)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        await authenticate(token_from_header(request.headers.get("Authorization")))
        return await view(*args, **kwargs)

    return wrapper


def client_address() -> str:
    """The client's address, as the throttles count it.

    ``request.remote_addr`` is the peer of the connection. uvicorn rewrites
    it from X-Forwarded-For only when that peer is a proxy it trusts
    (``FORWARDED_ALLOW_IPS``; uvicorn's default is 127.0.0.1 and ::1, a
    proxy on the same host). Behind any other proxy, every client is the
    proxy's address and shares one address's budget, so list the proxy
    there; and a client that reaches uvicorn through loopback can claim any
    address, so do not let untrusted clients in that way.
    """
    raw = request.remote_addr or "unknown"
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw[:ADDRESS_MAX_LENGTH]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(address)
