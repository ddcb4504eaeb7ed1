"""The API's errors: a status, a machine-readable kind (the `millrace_errors_total` label) and what to do."""

from __future__ import annotations


class ServingError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}

    def body(self) -> dict:
        """OpenAI's error shape, which the official clients parse."""
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}
