"""POST /api/register, /api/login, /api/logout and /api/password.

Throttles (SPEC §8), kept in Postgres so that every API process counts the
same attempts (``db/functions/30_accounts.sql`` has the rules):

* Failed logins, per email and per client address, in a sliding window of
  ``login_window_seconds``. Once an email has ``login_max_failures`` failures
  in the window, or an address ``login_max_failures_per_address``, a login is
  a 429 naming that limit, with Retry-After saying when the oldest failure
  that counts leaves the window, and it is refused before Argon2 runs: the
  right password does not help, and the 64 MiB hash is not spent.
* A successful login erases nothing: failures leave the window only by
  age. Were a success to reset the count, someone who knows one password of
  a shared address, or the account's owner logging in between, would give
  an attacker a fresh budget each time (guess, guess, log in, guess ...).
  The price: an owner who mistyped four times may lock themselves out with
  one more mistake within the window.
* Refused attempts are not recorded (nothing was tried), so a client that
  keeps knocking is not locked out for longer than the window.
* Unknown emails are counted, hashed and answered exactly as known ones, so
  neither the answers nor their timing tell whether an account exists.
* The count is checked before and recorded after the hash: attempts running
  at once may pass the check together, at most as many as the Argon2 pool
  admits per process (``taskflow.auth.PasswordHashing``).
* A wrong current password at POST /api/password counts as a failed login of
  that account: a stolen token must not become a way to guess its password.
* Registrations, per client address, ``register_per_address_per_hour`` in
  any hour; an attempt counts once it has cost a password hash, whether or
  not the email was taken.
"""

from __future__ import annotations

from quart import Blueprint, Response

from taskflow.api import config, services
from taskflow.api.responses import model_response, read_model
from taskflow.api.revocations import Revocation
from taskflow.api.route_docs import documented
from taskflow.api.schemas import LoggedIn, Registered
from taskflow.api.security import client_address, current_token, require_user
from taskflow.auth import issue_token
from taskflow.errors import InvalidCredentials, LimitExceeded, Unauthorized
from taskflow.models import Credentials, LoginRequest, PasswordChange
from taskflow.store.pool import Record

blueprint = Blueprint("users", __name__)


@blueprint.post("/api/register")
@documented(
    request=Credentials,
    response=Registered,
    status=201,
    errors={
        400: "bad email or password",
        409: "email taken",
        429: "too many registrations from this address (Retry-After)",
        503: "too many password hashes at once (Retry-After)",
    },
)
async def register() -> Response:
    """Register a user."""
    credentials = await read_model(Credentials)
    accounts = services().accounts
    address = client_address()
    refusal = await accounts.select_registration_refusal(
        address, config().settings.register_per_address_per_hour
    )
    if refusal is not None:
        raise LimitExceeded(
            "too many registrations from this address; try again later",
            limit=refusal["limit_name"],
            retry_after_seconds=refusal["retry_after_seconds"],
        )
    password_hash = await services().password_hashing.hash(credentials.password)
    await accounts.insert_registration_attempt(address)
    user_id = await accounts.insert_user(credentials.email, password_hash)
    return model_response(Registered(user_id=user_id), 201)


@blueprint.post("/api/login")
@documented(
    request=LoginRequest,
    response=LoggedIn,
    errors={
        400: "malformed request",
        401: "invalid email or password",
        429: "too many failed logins for the email or address (Retry-After)",
        503: "too many password hashes at once (Retry-After)",
    },
)
async def login() -> Response:
    """Log in and get a token."""
    credentials = await read_model(LoginRequest)
    api = config()
    settings = api.settings
    accounts = services().accounts
    address = client_address()
    account = await accounts.select_login(
        credentials.email,
        address,
        window_seconds=settings.login_window_seconds,
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
    )
    _refuse_if_throttled(account)
    # Unknown email and wrong password: the same work, the same answer.
    known = account["id"] is not None
    if not await services().password_hashing.verify(
        credentials.password, account["password_hash"] if known else None
    ):
        await accounts.insert_login_failure(credentials.email, address)
        raise InvalidCredentials()
    ttl = settings.token_ttl_seconds
    token = issue_token(account["id"], api.secret, ttl, token_version=account["token_version"])
    return model_response(
        LoggedIn(
            token=f"Bearer {token}",
            access_token=token,
            token_type="Bearer",  # noqa: S106 - the scheme's name, not a secret
            expires_in=ttl,
        )
    )


@blueprint.post("/api/logout")
@documented(response=None, status=204, description="revoked; its open event streams end")
@require_user
async def logout() -> Response:
    """Revoke the token of this request (the user's other tokens stay valid)."""
    claims = current_token()
    await services().accounts.insert_revoked_token(claims.token_id, claims.user_id, claims.expires)
    # Here at once; the other processes when the insert's NOTIFY reaches them.
    services().revocations.apply(
        Revocation(claims.user_id, token_id=claims.token_id, expires=claims.expires)
    )
    return Response(status=204)


@blueprint.post("/api/password")
@documented(
    request=PasswordChange,
    response=None,
    status=204,
    description="changed; log in again with the new password",
    errors={
        400: "invalid new password",
        401: "wrong current password",
        429: "too many wrong passwords for the account (Retry-After)",
        503: "too many password hashes at once (Retry-After)",
    },
)
@require_user
async def change_password() -> Response:
    """Change the password; every token issued before is revoked, this one too."""
    change = await read_model(PasswordChange)
    claims = current_token()
    settings = config().settings
    accounts = services().accounts
    hashing = services().password_hashing
    user = await accounts.select_password_of_user(claims.user_id)
    if user is None:
        raise Unauthorized("token revoked")
    address = client_address()
    refusal = await accounts.select_login_refusal(
        user["email"],
        address,
        window_seconds=settings.login_window_seconds,
        max_failures=settings.login_max_failures,
        max_failures_per_address=settings.login_max_failures_per_address,
    )
    _refuse_if_throttled(refusal)
    if not await hashing.verify(change.current_password, user["password_hash"]):
        await accounts.insert_login_failure(user["email"], address)
        raise InvalidCredentials("the current password is wrong")
    new_hash = await hashing.hash(change.new_password)
    token_version = await accounts.update_password(claims.user_id, user["password_hash"], new_hash)
    if token_version is None:
        # Changed (or deleted) by someone else since it was read: this
        # token is refused by that change already.
        raise Unauthorized("token revoked")
    services().revocations.apply(Revocation(claims.user_id, token_version=token_version))
    return Response(status=204)


def _refuse_if_throttled(refusal: Record | None) -> None:
    if refusal is None or refusal["limit_name"] is None:
        return
    if refusal["limit_name"] == "login_max_failures":
        message = "too many failed logins for this account; try again later"
    else:
        message = "too many failed logins from this address; try again later"
    raise LimitExceeded(
        message,
        limit=refusal["limit_name"],
        retry_after_seconds=refusal["retry_after_seconds"],
    )
