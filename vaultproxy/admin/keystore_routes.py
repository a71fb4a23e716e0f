"""Keystore routes: unlock (KDF off the loop, per-caller backoff), lock, and the write-only
secrets API (names and field names out, values only ever in)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Path, Request

from vaultproxy.admin.actions import audit_admin, warn_missing_secrets
from vaultproxy.admin.context import admin_context, caller, peer, proxy_state
from vaultproxy.admin.models import (
    ErrorOut,
    LockOut,
    SecretDeleted,
    SecretInfo,
    SecretPut,
    SecretsOut,
    UnlockIn,
)
from vaultproxy.config.models import NAME_PATTERN
from vaultproxy.errors import KeystoreError, LockedError, VaultproxyError
from vaultproxy.keystore import Keystore
from vaultproxy.keystore.entries import check_entry_name, check_name
from vaultproxy.secret import Secret

logger = logging.getLogger(__name__)
router = APIRouter()

# An entry name, or source.NAME: the credentials of the [[source]] NAME (SPEC §9).
ENTRY_PATTERN = "^(source\\.)?" + NAME_PATTERN.removeprefix("^")
NamePath = Path(pattern=ENTRY_PATTERN, max_length=71)


class UnlockFailed(VaultproxyError):
    status, code, public = 403, "unlock_failed", "the keystore could not be unlocked"


class KeystoreConflict(VaultproxyError):
    status, code, public = 409, "keystore_conflict", "the keystore could not be written"


class NotFound(VaultproxyError):
    status, code, public = 404, "not_found", "no such secret"


@router.post("/v1/unlock", response_model=LockOut,
             responses={429: {"model": ErrorOut, "description": "backing off after failures"}})
async def unlock(body: UnlockIn, request: Request) -> LockOut:
    ctx, st, who = admin_context(request), proxy_state(request), caller(request)
    key = peer(request)  # backoff per proven peer: a new X-Caller-Id does not reset it
    ctx.unlock_backoff.check(key)
    async with ctx.unlock_lock:
        ctx.unlock_backoff.check(key)  # a failure may have landed while we waited
        password = Secret(body.password.get_secret_value())
        try:
            await st.unlock(password)
        except VaultproxyError as e:
            delay = ctx.unlock_backoff.failed(key)
            logger.warning("admin: unlock failed for %s; next try allowed in %.0f s", who, delay)
            audit_admin(st, caller=who, action="unlock", method="POST", path="/v1/unlock",
                        status=403, code="unlock_failed")
            raise UnlockFailed(str(e) if isinstance(e, KeystoreError) else None) from None
        finally:
            password.wipe()
    ctx.unlock_backoff.succeeded(key)
    warn_missing_secrets(st)
    await st.settled()  # every worker process serves the unlocked keystore
    audit_admin(st, caller=who, action="unlock", method="POST", path="/v1/unlock", status=200)
    return LockOut(locked=False)


@router.post("/v1/lock", response_model=LockOut)
async def lock(request: Request) -> LockOut:
    st, who = proxy_state(request), caller(request)
    st.lock()
    await st.settled()  # no worker process injects anything once this answers
    audit_admin(st, caller=who, action="lock", method="POST", path="/v1/lock", status=200)
    return LockOut(locked=True)


def _unlocked(request: Request) -> Keystore:
    ks = proxy_state(request).session.keystore
    if ks is None:
        raise LockedError()
    return ks


def _info(ks: Keystore, name: str) -> SecretInfo:
    entry = ks.get(name)
    if entry is None:
        raise NotFound()
    return SecretInfo(name=name, has_value=entry.value is not None, fields=sorted(entry.fields),
                      created=entry.created, updated=entry.updated)


@router.get("/v1/secrets", response_model=SecretsOut)
async def list_secrets(request: Request) -> SecretsOut:
    ks = _unlocked(request)
    return SecretsOut(secrets=[_info(ks, n) for n in ks.names()])


def _put(ks: Keystore, name: str, body: SecretPut) -> None:
    check_entry_name(name)
    ks.refresh()  # on top of what the CLI may have written since we unlocked
    for field in body.fields or {}:
        check_name(field, "field name")
    if body.value is not None:
        ks.set_value(name, Secret(body.value.get_secret_value()))
    for field, value in (body.fields or {}).items():
        ks.set_field(name, field, Secret(value.get_secret_value()))
    ks.save()


async def _write(request: Request, action: str, path: str, method: str, work: object) -> None:
    ctx, st, who = admin_context(request), proxy_state(request), caller(request)
    try:
        async with ctx.write_lock:
            await asyncio.to_thread(work)  # type: ignore[arg-type]
    except KeystoreError as e:
        audit_admin(st, caller=who, action=action, method=method, path=path, status=409,
                    code="keystore_conflict")
        raise KeystoreConflict(str(e)) from None
    finally:
        st.secrets_changed()
        await st.settled()  # every worker process serves the new value
    audit_admin(st, caller=who, action=action, method=method, path=path, status=200)


@router.put("/v1/secrets/{name}", response_model=SecretInfo,
            responses={409: {"model": ErrorOut, "description": "keystore write failed"}})
async def put_secret(body: SecretPut, request: Request, name: str = NamePath) -> SecretInfo:
    ks = _unlocked(request)
    await _write(request, "secret_put", f"/v1/secrets/{name}", "PUT", lambda: _put(ks, name, body))
    return _info(ks, name)


@router.delete("/v1/secrets/{name}", response_model=SecretDeleted,
               responses={404: {"model": ErrorOut, "description": "no such secret"}})
async def delete_secret(request: Request, name: str = NamePath) -> SecretDeleted:
    ks = _unlocked(request)
    if ks.get(name) is None:
        raise NotFound()

    def work() -> None:
        ks.refresh()  # on top of what the CLI may have written since we unlocked
        ks.remove(name)
        ks.save()

    await _write(request, "secret_delete", f"/v1/secrets/{name}", "DELETE", work)
    return SecretDeleted(name=name, deleted=True)

