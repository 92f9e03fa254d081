"""One root exception; each subclass's docstring is its default message."""

from __future__ import annotations


class OrchestratorError(Exception):
    """The orchestrator failed."""

    code = "error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class DefinitionError(OrchestratorError):
    """The process definition is invalid."""

    code = "invalid_definition"

    def __init__(
        self, problems: list[str] | str, located: list[tuple[str | None, str]] | None = None
    ) -> None:
        if isinstance(problems, str):  # rebuilt from a command reply
            problems = [line.strip(" -") for line in problems.splitlines()[1:]] or [problems]
        self.problems = problems
        #: The same problems as (element id or None, why), for a front end (BPMN) that can
        #: say where in its own source each element is.
        self.located = located if located is not None else [(None, p) for p in problems]
        super().__init__("invalid process definition:\n  - " + "\n  - ".join(problems))


class NotFound(OrchestratorError):
    """The requested object does not exist."""

    code = "not_found"


class IdempotencyConflict(OrchestratorError):
    """The idempotency key was already used with a different payload."""

    code = "idempotency_conflict"


class BusinessKeyConflict(OrchestratorError):
    """An active instance of this process already has this business key."""

    code = "business_key_conflict"


class InvalidState(OrchestratorError):
    """The object is not in a state that allows this operation."""

    code = "invalid_state"


class InvalidCommand(OrchestratorError):
    """The command is malformed."""

    code = "invalid_command"


class ServiceUnavailable(OrchestratorError):
    """PostgreSQL or RabbitMQ cannot be reached."""

    code = "service_unavailable"


class CommandTimeout(OrchestratorError):
    """The engine did not answer in time."""

    code = "timeout"


class NoEngine(CommandTimeout):
    """No engine consumes the commands queue."""

    code = "no_engine"


ERRORS_BY_CODE: dict[str, type[OrchestratorError] | type[DefinitionError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        IdempotencyConflict,
        BusinessKeyConflict,
        InvalidState,
        InvalidCommand,
        DefinitionError,
        ServiceUnavailable,
        CommandTimeout,
    )
}
