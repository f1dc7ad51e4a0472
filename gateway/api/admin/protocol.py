"""Admin API request bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TenantSettings(_Strict):
    rpm_limit: int | None = Field(default=None, ge=1, le=2**31 - 1)
    tpm_limit: int | None = Field(default=None, ge=1, le=2**31 - 1)
    store_content: bool | None = None
    retention_days: int | None = Field(default=None, ge=1, le=2**31 - 1)
    cors_origins: list[str] | None = None
    auto_promote: bool | None = None
    retrain_enabled: bool | None = None
    retrain_min_feedback: int | None = Field(default=None, ge=1, le=2**31 - 1)
    retrain_max_age_hours: float | None = Field(default=None, gt=0)
    gate_thresholds: dict[str, float] | None = None
    retrain_recipe: dict[str, Any] | None = None
    disabled: bool | None = None

    # null resets a limit to the gateway's default; these settings have no "unset" state.
    @field_validator(
        "store_content", "cors_origins", "auto_promote", "retrain_enabled",
        "retrain_min_feedback", "retrain_max_age_hours", "gate_thresholds", "retrain_recipe",
        "disabled",
    )  # fmt: skip
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may not be null (leave the field out to keep its value)")
        return value

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class TenantCreate(TenantSettings):
    name: str


class AdapterAdd(_Strict):
    tenant: str
    name: str
    path: str
    sign: bool = False


class Promote(_Strict):
    version: int = Field(ge=1)
    reason: str = ""


class Rollback(_Strict):
    reason: str = ""


class GoldenAdd(_Strict):
    tenant: str
    adapter: str
    items: list[dict[str, Any]] = Field(min_length=1)


class Forget(_Strict):
    tenant: str
    end_user: str = Field(min_length=1)
