"""Schemathesis hooks for `make schemathesis` (loaded through SCHEMATHESIS_HOOKS by run.sh).

Schemathesis stores a path parameter the way it goes on the wire, percent-encoded (`@I0` is kept
as `%40I0`). When the stateful phase links a path parameter into a query parameter
(`POST /v1/cart/{user_id}` -> `GET /api/orders?user_id=`), or a captured value is reused, it copies
that wire form, so the query says `user_id=%2540I0`: the user `%40I0`, which the documented pattern
refuses. The case is still marked as positive (schema-valid) data, so the service's correct 400
is reported as "ST202 Schema-valid request rejected" (schemathesis 4.32.5; seen in CI on a random
seed). The hook below undoes that double encoding, and nothing else: in a positive case, a query
value that breaks its parameter's `pattern` while its percent-decoded form matches it is replaced by
the decoded form. Values that are valid as sent, and every negative case, are left as they are.
"""

import re
from urllib.parse import unquote

import schemathesis


def _decode_double_encoded(case):
    if case.meta is None or not case.meta.generation.mode.is_positive or not case.query:
        return
    for parameter in case.operation.query:
        value = case.query.get(parameter.name)
        pattern = parameter.definition.get("schema", {}).get("pattern")
        if not isinstance(value, str) or not isinstance(pattern, str) or "%" not in value:
            continue
        decoded = unquote(value)
        if re.search(pattern, value) is None and re.search(pattern, decoded) is not None:
            case.query[parameter.name] = decoded


@schemathesis.hook
def before_call(context, case, kwargs):
    _decode_double_encoded(case)
