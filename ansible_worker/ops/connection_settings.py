"""The settings of how to reach the broker, and of the worker's HTTP endpoint for probes."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from ansible_worker.mqtt.options import LinkOptions


class MqttSettings(BaseModel):
    """How to reach the broker."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    keepalive: int = Field(60, ge=5, le=65535)
    client_id: str | None = Field(None, min_length=1, max_length=128)
    tls_enabled: bool = False
    tls_ca_cert: Path | None = None
    tls_client_cert: Path | None = None
    tls_client_key: Path | None = None

    def link_options(self, *, client_id: str) -> LinkOptions:
        """How to open a connection with these settings (the password in plain text)."""
        return LinkOptions(
            host=self.host,
            port=self.port,
            client_id=client_id,
            username=self.username,
            password=self.password.get_secret_value() if self.password is not None else None,
            keepalive=self.keepalive,
            tls_enabled=self.tls_enabled,
            tls_ca_cert=self.tls_ca_cert,
            tls_client_cert=self.tls_client_cert,
            tls_client_key=self.tls_client_key,
        )

    @field_validator("username", "password", "client_id", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `${MQTT_PASSWORD:-}` in a file yields "" when the variable is unset: that means none.
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_tls_files(self) -> MqttSettings:
        if self.tls_client_key is not None and self.tls_client_cert is None:
            raise ValueError("tls_client_key is set but tls_client_cert is not")
        for name in ("tls_ca_cert", "tls_client_cert", "tls_client_key"):
            path: Path | None = getattr(self, name)
            if path is not None and not self.tls_enabled:
                raise ValueError(f"{name} is set but tls_enabled is false")
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self


class HttpSettings(BaseModel):
    """The optional HTTP endpoint for probes and metrics: /healthz, /readyz, /metrics."""

    model_config = ConfigDict(extra="forbid")

    # None: no endpoint. 0: a free port, which the log names (for tests).
    port: int | None = Field(None, ge=0, le=65535)
    # All interfaces, so that the kubelet and Prometheus reach it from outside the pod.
    host: str = Field("0.0.0.0", min_length=1)  # noqa: S104
