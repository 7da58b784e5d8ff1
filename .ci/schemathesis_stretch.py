"""schemathesis hooks for .ci/run's second fuzzing run: values far past every maximum.

The first run's generated values break a documented maximum by a character or two. Here
each value that already breaks one (a `q` over 200 characters, a `cursor` over 2048, a
`user_id` over 128, an `Idempotency-Key` over 255), and each header that has no maximum
(`If-None-Match`), is stretched to one of a few sizes up to 24 KiB: some stay within the
HTTP server's 8 KiB limits (the app must refuse them, 422), others go past them (the
server's documented 414 or 431, as problem+json). Values within their maximum are left
alone, so what schemathesis generated as valid stays valid.

Used with .ci/schemathesis-stretch.toml, which loads this module (and through it the
first run's hooks) and lets valid requests be refused only by those limits.
"""

import hashlib
from typing import Any

import schemathesis
from schemathesis_hooks import PathUserToken, before_call  # noqa: F401 (registers them)

# Under the 8190-byte request line and header field limits, near them, and far past.
SIZES = (3_000, 7_000, 24_576)


def _stretched(value: str, maximum: int | None) -> str:
    """`value` repeated to a size picked from SIZES by its hash (reproducible runs)."""
    if maximum is not None and len(value) <= maximum:
        return value
    size = SIZES[hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()[0] % len(SIZES)]
    seed = value or "x"
    return (seed * (size // len(seed) + 1))[:size]


def _maximum(parameter: Any) -> int | None:
    schema = parameter.definition.get("schema") or {}
    maximum = schema.get("maxLength")
    return maximum if isinstance(maximum, int) else None


@schemathesis.hook("before_call")
def stretch(context, case, kwargs):  # type: ignore[no-untyped-def]
    operation = case.operation
    if case.method.upper() != operation.method.upper():
        return  # a probe with a method the path does not have: its 405 is the point
    groups = [
        (case.query, operation.query, True),
        (case.path_parameters, operation.path_parameters, True),
    ]
    # Without its token (a probe that the token is required: its 401 is the point), the
    # headers stay as generated; the server would otherwise answer 431 first.
    if any(name.lower() == "authorization" for name in case.headers or {}):
        groups.append((case.headers, operation.headers, False))
    for values, parameters, bounded_only in groups:
        for parameter in parameters:
            value = (values or {}).get(parameter.name)
            if not isinstance(value, str) or parameter.name.lower() == "authorization":
                continue  # the token stays the one the auth hook signed
            maximum = _maximum(parameter)
            if maximum is None and bounded_only:
                continue
            values[parameter.name] = _stretched(value, maximum)
