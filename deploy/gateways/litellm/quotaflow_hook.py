"""A LiteLLM proxy pre-call hook that asks the quotaflow decision sidecar before every call.

Tested as is by decide/tests/litellm.rs (a real LiteLLM proxy whose models answer with
`mock_response`). Add it to the proxy's config.yaml:

    litellm_settings:
      callbacks: quotaflow_hook.proxy_handler_instance

Settings (environment):
- QUOTAFLOW_DECIDE_URL: the sidecar's HTTP address (default http://127.0.0.1:8181).
- QUOTAFLOW_FAIL_OPEN: "true" to let calls go when the sidecar cannot be asked (default: refuse
  with a 503, so a sidecar outage never turns into unbounded spend).
- QUOTAFLOW_TRUST_CLIENT_HEADERS: "true" to take attributes the key does not carry (team,
  workflow, environment, user, customer) from the caller's x-quotaflow-* headers. Only behind an
  authenticating front that sets them; a client that can name its own team can name another's.

The hook declares the call's input tokens (litellm.token_counter over its messages) and its
max_tokens, so the policies' admission rules can refuse it before any provider is called (a 400
naming the policy and the rule). A block is answered with a 429, the sidecar's Retry-After and
policy, and an OpenAI-style error; a degrade rewrites the call's model to the cheaper one before
LiteLLM routes it.
"""

import os

import httpx
import litellm
from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

SIDECAR = os.environ.get("QUOTAFLOW_DECIDE_URL", "http://127.0.0.1:8181")
FAIL_OPEN = os.environ.get("QUOTAFLOW_FAIL_OPEN", "false").lower() == "true"
TRUST_CLIENT_HEADERS = os.environ.get("QUOTAFLOW_TRUST_CLIENT_HEADERS", "false").lower() == "true"

# Attributes a virtual key does not carry, by the header a trusted front may set them in.
_HEADER_ATTRIBUTES = {
    "x-quotaflow-team": "team",
    "x-quotaflow-workflow": "workflow",
    "x-quotaflow-environment": "environment",
    "x-quotaflow-user": "user_id",
    "x-quotaflow-customer": "customer_id",
}


def _refusal(answer: dict) -> HTTPException:
    """The client's error for a refusal: 429 with Retry-After when waiting helps (a block, or an
    estimated cost over what is left until the window resets); 400 for an admission rule the same
    call will never pass (a context or output over the approved size)."""
    rule = answer.get("rule")
    retry_after = answer.get("retry_after_seconds")
    headers = {"x-quotaflow-policy": answer.get("policy_id") or ""}
    if rule:
        headers["x-quotaflow-rule"] = rule
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    error = {
        "type": "request_not_admitted" if rule else "quota_exceeded",
        "code": answer.get("policy_id"),
        "message": answer.get("reason"),
        "retry_after_seconds": retry_after,
    }
    if rule:
        error["rule"] = rule
    status = 429 if retry_after is not None or not rule else 400
    return HTTPException(status_code=status, detail={"error": error}, headers=headers)


class QuotaflowHook(CustomLogger):
    def __init__(self):
        super().__init__()
        self.client = httpx.AsyncClient(base_url=SIDECAR, timeout=0.5)

    def attributes(self, key, data, call_type):
        check = {
            "api_key_id": key.key_alias or key.token or "",
            "team": key.team_id or "",
            "model": data.get("model") or "",
            "endpoint": str(call_type),
        }
        if key.user_id:
            check["user_id"] = key.user_id
        # What the call declares, for the policies' admission rules.
        max_output = data.get("max_completion_tokens") or data.get("max_tokens")
        if max_output is not None:
            check["max_output_tokens"] = int(max_output)
        if data.get("messages"):
            check["input_tokens"] = litellm.token_counter(model=check["model"], messages=data["messages"])
        if TRUST_CLIENT_HEADERS:
            headers = (data.get("proxy_server_request") or {}).get("headers") or {}
            for header, value in headers.items():
                field = _HEADER_ATTRIBUTES.get(header.lower())
                if field and value and not check.get(field):
                    check[field] = value
        return check

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        try:
            response = await self.client.post(
                "/v1/check", json=self.attributes(user_api_key_dict, data, call_type)
            )
            response.raise_for_status()
            answer = response.json()
        except Exception as error:  # the sidecar is down, slow or refused the request
            if FAIL_OPEN:
                return data
            raise HTTPException(
                status_code=503,
                detail={"error": {"type": "quota_unavailable", "message": f"quota check failed: {error}"}},
            )
        if answer["decision"] == "block":
            raise _refusal(answer)
        if answer["decision"] == "degrade" and answer.get("degrade_to"):
            data["model"] = answer["degrade_to"]
        return data


proxy_handler_instance = QuotaflowHook()
