"""Schemathesis hooks for the product's own media types, loaded by scripts/fuzz-api.

An import (POST /v1/tokens/{token_id}/imports) takes and answers NDJSON: the generated body
(documented as a string of lines) is sent as it is, and the answer's lines must each be JSON;
the last one, which says how the import ended, is what is checked against the documented line
schema (ImportLine).
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson_body(ctx, value):
    if isinstance(value, bytes):
        return {"data": value}
    if isinstance(value, str):
        return {"data": value.encode("utf-8", "replace")}
    items = value if isinstance(value, list) else [value]
    return {"data": "\n".join(json.dumps(item) for item in items).encode("utf-8")}


@schemathesis.deserializer("application/x-ndjson")
def ndjson_answer(ctx, response):
    lines = [json.loads(line) for line in response.content.decode("utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError("an NDJSON answer without a line")
    return lines[-1]
