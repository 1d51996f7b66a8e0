"""Request bodies of the webhook API (strict: unknown fields are refused) and its response shapes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


_Url = Annotated[StrictStr, Field(min_length=1, max_length=2048)]
_EventTypes = Annotated[list[StrictStr], Field(min_length=1, max_length=50)]
_Description = Annotated[StrictStr, Field(max_length=500)]


class CreateEndpointRequest(_Strict):
    """Body of ``POST /v1/webhook-endpoints``."""

    url: _Url = Field(description="Where events are POSTed; private and link-local targets are refused.")
    event_types: _EventTypes = Field(
        default_factory=lambda: ["*"], description='Event types to receive; ["*"] for every one.'
    )
    description: _Description | None = None


class UpdateEndpointRequest(_Strict):
    """Body of ``PATCH /v1/webhook-endpoints/{id}``: only the fields given change."""

    url: _Url | None = None
    event_types: _EventTypes | None = None
    description: _Description | None = None
    status: Literal["enabled", "disabled"] | None = Field(
        default=None, description="Re-enabling clears the failure record; disabling stops deliveries."
    )


class RotateSecretRequest(_Strict):
    """Body of ``POST /v1/webhook-endpoints/{id}/rotate-secret``."""

    expire_previous_in_seconds: Annotated[int, Field(ge=0, le=7 * 24 * 3600)] = Field(
        default=86400, description="How long the previous secret still signs beside the new one."
    )


class RedeliverRequest(_Strict):
    """Body of ``POST /v1/events/{id}/redeliver``."""

    endpoint_id: StrictStr | None = Field(
        default=None, description="One endpoint; default: every enabled one."
    )


class WebhookEndpointOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint"]
    url: str
    event_types: list[str]
    description: str | None
    status: Literal["enabled", "disabled"]
    disabled_reason: str | None
    disabled_at: str | None
    failing_since: str | None
    created_at: str
    updated_at: str
    secret: str | None = Field(default=None, description="Only when created or rotated.")


class WebhookDeliveryOut(BaseModel):
    id: str
    object: Literal["webhook_delivery"]
    delivery_id: str
    event_id: str
    endpoint_id: str
    attempt: int
    status: Literal["pending", "succeeded", "failed"]
    response_status: int | None
    latency_ms: int | None
    error: str | None
    attempted_at: str | None
    next_attempt_at: str | None


class EventOut(BaseModel):
    id: str
    object: Literal["event"]
    type: str
    created_at: str
    invoice_version: int | None
    data: dict[str, Any]


def update_changes(body: UpdateEndpointRequest) -> dict[str, Any]:
    """The fields the client sent, null description included (it clears it); other nulls mean no change."""
    sent = body.model_dump(exclude_unset=True)
    return {k: v for k, v in sent.items() if v is not None or k == "description"}
