"""Seal the keystore's data key to a TPM 2.0 and unseal it again (tpm2-pytss, the [tpm] extra).

The data key is sealed as a KEYEDHASH object under a primary key that the TPM derives
deterministically from its owner hierarchy seed and the template below, so the primary is
recreated (never stored) to unseal. Only that TPM can load the object: another machine's TPM
(or a reset one) refuses it, and so does this TPM when any byte of the object was changed
(its private part carries an integrity HMAC over the public part). Both commands that carry
the key (``Create`` in, ``Unseal`` out) run in an HMAC session salted with the primary and
with parameter encryption, so the key does not cross the bus to a hardware TPM in clear.

Slot payload (docs/operator/KEYSTORE.md): template(1) || TPM2B_PUBLIC || TPM2B_PRIVATE, both
as the TPM marshals them (a big-endian u16 size, then the structure).

Where the TPM is: env ``VAULTPROXY_TCTI`` (``swtpm:port=2321``, ``device:/dev/tpmrm0``, ...),
default ``device:/dev/tpmrm0``. Every failure is a TpmError whose message names the TCTI and
the fix, never key material.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from typing import Any

from vaultproxy.errors import KeystoreError

# The TSS libraries print their own errors on stderr; ours say what to do instead.
os.environ.setdefault("TSS2_LOG", "all+NONE")

ENV = "VAULTPROXY_TCTI"
DEFAULT_TCTI = "device:/dev/tpmrm0"
TEMPLATE_ECC_P256 = 1  # the only primary template so far (KEYSTORE.md, "TPM slot")
KEY_LEN = 32
_U16 = struct.Struct(">H")


class TpmError(KeystoreError):
    """The TPM could not seal or unseal; the message names the TCTI and the fix."""


class TpmUnavailable(TpmError):
    """No TPM reachable at the TCTI, or tpm2-pytss is not installed."""


class TpmRefused(TpmError):
    """The TPM answered but would not unseal this slot (another TPM, or a modified slot)."""


def tcti() -> str:
    """The TCTI string from ``$VAULTPROXY_TCTI``, else the kernel's resource manager."""
    return os.environ.get(ENV, "").strip() or DEFAULT_TCTI


def _where(conf: str) -> str:
    if os.environ.get(ENV, "").strip() == conf:
        return f"{conf} (from {ENV})"
    return f"{conf} ({ENV} unset, the default)" if conf == DEFAULT_TCTI else conf


def _tss() -> Any:
    try:
        import tpm2_pytss
    except ImportError:
        raise TpmUnavailable(
            "TPM support is not installed; install it with `pip install 'vaultproxy[tpm]'` "
            "(needs the TSS2 libraries: apt-get install libtss2-dev pkg-config)"
        ) from None
    return tpm2_pytss


@contextlib.contextmanager
def _esapi(conf: str) -> Iterator[Any]:
    tss = _tss()
    name, _, rest = conf.partition(":")
    try:
        ctx = tss.ESAPI(tss.TCTILdr(name, rest or None))
    except Exception:  # TSS2_Exception, or the TCTI library missing
        raise TpmUnavailable(
            f"no TPM reachable at {_where(conf)}; start the TPM (or swtpm) or set "
            f"{ENV}, e.g. {ENV}=swtpm:host=127.0.0.1,port=2321 or device:/dev/tpmrm0"
        ) from None
    try:
        yield ctx
    finally:
        ctx.close()


def _primary_template(tss: Any) -> Any:
    attrs = tss.TPMA_OBJECT
    flags = (attrs.USERWITHAUTH | attrs.RESTRICTED | attrs.DECRYPT | attrs.FIXEDTPM
             | attrs.FIXEDPARENT | attrs.SENSITIVEDATAORIGIN | attrs.NODA)
    return tss.TPM2B_PUBLIC(tss.TPMT_PUBLIC.parse(alg="ecc256:aes128cfb", objectAttributes=flags,
                                                  nameAlg="sha256"))


def _sealed_template(tss: Any) -> Any:
    attrs = tss.TPMA_OBJECT
    flags = attrs.USERWITHAUTH | attrs.FIXEDTPM | attrs.FIXEDPARENT | attrs.NODA
    return tss.TPM2B_PUBLIC(tss.TPMT_PUBLIC.parse(alg="keyedhash", objectAttributes=flags,
                                                  nameAlg="sha256"))


def _primary(ctx: Any, tss: Any) -> Any:
    handle, *_ = ctx.create_primary(tss.TPM2B_SENSITIVE_CREATE(), _primary_template(tss),
                                    tss.ESYS_TR.OWNER)
    return handle


def _flush(ctx: Any, handle: Any) -> None:
    """Free a transient handle (a TPM without a resource manager keeps it otherwise)."""
    with contextlib.suppress(Exception):
        ctx.flush_context(handle)


@contextlib.contextmanager
def _flushing(ctx: Any, handle: Any) -> Iterator[Any]:
    try:
        yield handle
    finally:
        _flush(ctx, handle)


def _session(ctx: Any, tss: Any, primary: Any) -> Any:
    """An HMAC session salted with the primary, encrypting the commands' first parameter."""
    sym = tss.TPMT_SYM_DEF(algorithm=tss.TPM2_ALG.AES,
                           keyBits=tss.TPMU_SYM_KEY_BITS(aes=128),
                           mode=tss.TPMU_SYM_MODE(aes=tss.TPM2_ALG.CFB))
    session = ctx.start_auth_session(tpm_key=primary, bind=tss.ESYS_TR.NONE,
                                     session_type=tss.TPM2_SE.HMAC, symmetric=sym,
                                     auth_hash=tss.TPM2_ALG.SHA256)
    ctx.trsess_set_attributes(session, tss.TPMA_SESSION.DECRYPT | tss.TPMA_SESSION.ENCRYPT
                              | tss.TPMA_SESSION.CONTINUESESSION)
    return session


def probe(conf: str | None = None) -> None:
    """Raise TpmUnavailable unless a TPM answers at ``conf`` and creates our primary key."""
    conf = conf or tcti()
    tss = _tss()
    with _esapi(conf) as ctx:
        try:
            _flush(ctx, _primary(ctx, tss))
        except Exception:
            raise TpmUnavailable(_primary_failed(conf)) from None


def _primary_failed(conf: str) -> str:
    return (f"the TPM at {_where(conf)} refused to create the primary key (is the owner "
            "hierarchy password set? vaultproxy needs it empty)")


def seal(key: bytes | bytearray, conf: str | None = None) -> bytes:
    """The slot payload sealing ``key`` (32 bytes) to the TPM at ``conf``."""
    if len(key) != KEY_LEN:
        raise ValueError("the data key must be 32 bytes")
    conf = conf or tcti()
    tss = _tss()
    with _esapi(conf) as ctx:
        try:
            primary = _primary(ctx, tss)
        except Exception:
            raise TpmUnavailable(_primary_failed(conf)) from None
        try:
            with _flushing(ctx, _session(ctx, tss, primary)) as session:
                data = tss.TPM2B_SENSITIVE_CREATE(
                    tss.TPMS_SENSITIVE_CREATE(data=tss.TPM2B_SENSITIVE_DATA(bytes(key))))
                priv, pub, *_ = ctx.create(primary, data, _sealed_template(tss),
                                           session1=session)
        except Exception:
            raise TpmError(f"the TPM at {_where(conf)} failed to seal the key") from None
        finally:
            _flush(ctx, primary)
    return bytes([TEMPLATE_ECC_P256]) + bytes(pub.marshal()) + bytes(priv.marshal())


def split(payload: bytes) -> tuple[int, bytes, bytes]:
    """(template, TPM2B_PUBLIC bytes, TPM2B_PRIVATE bytes); KeystoreError if malformed."""
    bad = KeystoreError("the keystore's TPM slot is malformed; unlock with the master password")
    if len(payload) < 1 + 2 * _U16.size:
        raise bad
    template, pos = payload[0], 1
    parts: list[bytes] = []
    for _ in range(2):
        if pos + _U16.size > len(payload):
            raise bad
        (size,) = _U16.unpack_from(payload, pos)
        end = pos + _U16.size + size
        if size == 0 or end > len(payload):
            raise bad
        parts.append(payload[pos:end])
        pos = end
    if pos != len(payload):
        raise bad
    return template, parts[0], parts[1]


def unseal(payload: bytes, conf: str | None = None) -> bytearray:
    """The 32-byte key sealed in ``payload``; TpmRefused when this TPM will not give it."""
    template, pub_bytes, priv_bytes = split(payload)
    conf = conf or tcti()
    if template != TEMPLATE_ECC_P256:
        raise TpmError(f"the keystore's TPM slot uses template {template}, unknown to this "
                       "vaultproxy; upgrade vaultproxy or unlock with the master password")
    tss = _tss()
    with _esapi(conf) as ctx:
        try:
            primary = _primary(ctx, tss)
        except Exception:
            raise TpmUnavailable(_primary_failed(conf)) from None
        try:
            pub, _ = tss.TPM2B_PUBLIC.unmarshal(pub_bytes)
            priv, _ = tss.TPM2B_PRIVATE.unmarshal(priv_bytes)
            obj = ctx.load(primary, priv, pub)
        except Exception:
            _flush(ctx, primary)
            raise TpmRefused(
                f"the TPM at {_where(conf)} refuses this keystore's TPM slot (sealed by "
                "another TPM, or the slot was modified); unlock with the master password"
            ) from None
        try:
            with _flushing(ctx, _session(ctx, tss, primary)) as session:
                key = bytearray(bytes(ctx.unseal(obj, session1=session)))
        except Exception:
            raise TpmRefused(f"the TPM at {_where(conf)} would not unseal this keystore's "
                             "TPM slot; unlock with the master password") from None
        finally:
            _flush(ctx, obj)
            _flush(ctx, primary)
    if len(key) != KEY_LEN:
        raise TpmRefused("the keystore's TPM slot holds no data key; unlock with the password")
    return key
