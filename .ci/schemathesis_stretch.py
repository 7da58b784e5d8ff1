"""schemathesis hooks for .ci/run's second fuzzing run: values far past every maximum.

The first run's generated values break a documented maximum by a character or two. Here
each string in the query (`q`, `cursor`...) and the headers that are parameters
(`If-None-Match`, `Idempotency-Key`) is stretched to one of a few sizes up to 24 KiB, or
left as generated, picked by a hash of the value so a run can be repeated; a `user_id`
already past its 128 characters is stretched too. Some of those reach the app, which
must refuse them (422); others pass the HTTP server's 8 KiB limits and get its
documented 414 or 431, as problem+json. schemathesis checks again a case a hook changed,
so a value stretched past its maximum counts as invalid data. Bodies are left alone:
schemathesis does not always check a changed body again, and tests/test_bodies.py
covers bodies past 64 KiB.

Used with .ci/schemathesis-stretch.toml; importing the first run's hooks registers them too.
"""

import hashlib

import schemathesis
from schemathesis_hooks import PathUserToken, before_call  # noqa: F401 (registers them)

# None: as generated. Then: under the 8190-byte request line and header field limits,
# near them, and far past.
SIZES = (None, 3_000, 7_000, 24_576)
# user_id's documented maximum.
MAX_PATH_VALUE = 128


def _stretched(value: str, sizes: tuple[int | None, ...]) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
    size = sizes[digest[0] % len(sizes)]
    if size is None:
        return value
    seed = value or "x"
    return (seed * (size // len(seed) + 1))[:size]


@schemathesis.hook("before_call")
def stretch(context, case, kwargs):  # type: ignore[no-untyped-def]
    if case.method.upper() != case.operation.method.upper():
        return  # a probe with a method the path does not have: its 405 is the point
    if not any(name.lower() == "authorization" for name in case.headers or {}):
        return  # a probe that the token is required: its 401 is the point
    if case.meta is None or case.meta.phase.name not in ("coverage", "fuzzing"):
        # Stateful chains need their links to hold; the document's examples are not
        # checked again once changed, so stretched they would still count as valid.
        return
    for name, value in list((case.path_parameters or {}).items()):
        # A long user_id is refused before it is read (403, the token is another
        # user's), so only one already past its maximum goes far past it.
        if isinstance(value, str) and len(value) > MAX_PATH_VALUE:
            case.path_parameters[name] = _stretched(value, SIZES[1:])
    for values in (case.query, case.headers):
        for name, value in list((values or {}).items()):
            if isinstance(value, str) and name.lower() != "authorization":
                values[name] = _stretched(value, SIZES)  # the token is the auth hook's
