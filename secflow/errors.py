"""SecFlow's one error taxonomy (placeholder: the classifier is being written)."""

from __future__ import annotations

from enum import Enum


class Category(str, Enum):
    TRANSIENT = "transient"
    RESOURCE = "resource"
    VALIDATION = "validation"
    PERMANENT = "permanent"
    EXTERNAL_TOOL = "external_tool"
    INTERNAL = "internal"
    SECURITY = "security"
    USER_ABORT = "user_abort"


class SecFlowError(Exception):
    """Base of errors SecFlow raises itself; each subclass carries its category."""

    category: Category = Category.INTERNAL

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class TransientError(SecFlowError):
    category = Category.TRANSIENT


class ResourceError(SecFlowError):
    category = Category.RESOURCE


class InvalidInputError(SecFlowError):
    category = Category.VALIDATION


class PermanentError(SecFlowError):
    category = Category.PERMANENT


class ExternalToolError(SecFlowError):
    category = Category.EXTERNAL_TOOL

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        stdout_tail: str = "",
        stderr_tail: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.exit_code = exit_code
        self.stdout_tail = stdout_tail
        self.stderr_tail = stderr_tail


class InternalError(SecFlowError):
    category = Category.INTERNAL


class ScopeViolation(SecFlowError):
    """A target, redirect or discovered host outside `scope.allow` was about to be touched."""

    category = Category.SECURITY


class UserAbort(SecFlowError):
    category = Category.USER_ABORT
