"""The webhook API's part of /openapi.json: paths that refer to the component schemas of models.py."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway.webhooks import models

REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    models.CreateEndpointRequest,
    models.UpdateEndpointRequest,
    models.RotateSecretRequest,
    models.RedeliverRequest,
)
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    models.WebhookEndpointOut,
    models.WebhookDeliveryOut,
    models.EventOut,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _list_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data", "has_more"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref(name)},
            "has_more": {"type": "boolean"},
            "next_starting_after": {"type": ["string", "null"]},
        },
    }


def _body(name: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


def webhook_paths(problem: Any, auth_errors: dict[str, Any]) -> dict[str, Any]:
    """Paths of the webhook API; ``problem(description)`` builds a problem+json response object."""
    endpoint_id = [{"name": "endpoint_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    event_id = [{"name": "event_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    secure: dict[str, Any] = {"security": [{"apiKey": []}]}
    missing = {"404": problem("Not in your account")}
    invalid = {
        "400": problem("Malformed request"),
        "413": problem("Body too large"),
        "415": problem("Not application/json"),
        "422": problem("Invalid webhook endpoint"),
    }
    endpoint = _json(_ref("WebhookEndpointOut"))
    return {
        "/v1/webhook-endpoints": {
            "post": {
                **secure,
                "operationId": "createWebhookEndpoint",
                "summary": "Add a webhook endpoint; the answer holds its signing secret (shown once)",
                "requestBody": _body("CreateEndpointRequest"),
                "responses": {"201": _json(_ref("WebhookEndpointOut"), "Created"), **invalid, **auth_errors},
            },
            "get": {
                **secure,
                "operationId": "listWebhookEndpoints",
                "summary": "The merchant's webhook endpoints",
                "responses": {"200": _json(_list_of("WebhookEndpointOut")), **auth_errors},
            },
        },
        "/v1/webhook-endpoints/{endpoint_id}": {
            "parameters": endpoint_id,
            "get": {
                **secure,
                "operationId": "getWebhookEndpoint",
                "summary": "One webhook endpoint and its health",
                "responses": {"200": endpoint, **missing, **auth_errors},
            },
            "patch": {
                **secure,
                "operationId": "updateWebhookEndpoint",
                "summary": "Change the URL, event types, description or status",
                "requestBody": _body("UpdateEndpointRequest"),
                "responses": {"200": endpoint, **invalid, **missing, **auth_errors},
            },
            "delete": {
                **secure,
                "operationId": "deleteWebhookEndpoint",
                "summary": "Delete the endpoint; its pending deliveries end",
                "responses": {"204": {"description": "Deleted"}, **missing, **auth_errors},
            },
        },
        "/v1/webhook-endpoints/{endpoint_id}/rotate-secret": {
            "parameters": endpoint_id,
            "post": {
                **secure,
                "operationId": "rotateWebhookSecret",
                "summary": "A new signing secret; the previous one signs beside it for the overlap",
                "requestBody": _body("RotateSecretRequest", required=False),
                "responses": {"200": endpoint, **invalid, **missing, **auth_errors},
            },
        },
        "/v1/events": {
            "get": {
                **secure,
                "operationId": "listEvents",
                "summary": "The merchant's invoice and payment events, newest first",
                "parameters": [
                    {"name": name, "in": "query", "schema": {"type": "string"}}
                    for name in ("type", "invoice_id", "starting_after")
                ]
                + [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                    }
                ],
                "responses": {"200": _json(_list_of("EventOut")), "400": problem("Bad query"), **auth_errors},
            },
        },
        "/v1/events/{event_id}": {
            "parameters": event_id,
            "get": {
                **secure,
                "operationId": "getEvent",
                "summary": "One event: exactly the body its webhooks carry",
                "responses": {"200": _json(_ref("EventOut")), **missing, **auth_errors},
            },
        },
        "/v1/events/{event_id}/deliveries": {
            "parameters": event_id,
            "get": {
                **secure,
                "operationId": "listEventDeliveries",
                "summary": "Every delivery attempt of the event, and what is still scheduled",
                "responses": {"200": _json(_list_of("WebhookDeliveryOut")), **missing, **auth_errors},
            },
        },
        "/v1/events/{event_id}/redeliver": {
            "parameters": event_id,
            "post": {
                **secure,
                "operationId": "redeliverEvent",
                "summary": "Deliver the event again, to one endpoint or every enabled one",
                "requestBody": _body("RedeliverRequest", required=False),
                "responses": {
                    "202": _json(_list_of("WebhookDeliveryOut"), "Scheduled"),
                    "409": problem("No enabled endpoint"),
                    **invalid,
                    **missing,
                    **auth_errors,
                },
            },
        },
    }
