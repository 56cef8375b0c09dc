#!/usr/bin/env python3
"""Verifies webhook deliveries with the `standardwebhooks` package (PyPI), an implementation of
the Standard Webhooks specification that this project did not write.

usage: verify_webhooks.py DELIVERIES.json
DELIVERIES.json is a list of {"secret": "whsec_...", "headers": {...}, "body": "..."}. Prints
how many verified and exits 0 if all did; exits 1 at the first that does not, naming it.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

deliveries = json.load(open(sys.argv[1]))
for i, d in enumerate(deliveries):
    try:
        payload = Webhook(d["secret"]).verify(d["body"], d["headers"])
    except Exception as e:  # the library raises WebhookVerificationError
        print(f"delivery {i} does not verify: {e}")
        sys.exit(1)
    if payload.get("type") != json.loads(d["body"])["type"]:
        print(f"delivery {i}: the verified payload differs")
        sys.exit(1)
print(f"{len(deliveries)} deliveries verified")
