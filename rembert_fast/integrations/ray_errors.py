"""What failed in a Ray job, in one line: the exception Ray wrapped, not Ray's wrappers around it.

Ray hands the driver a task's exception as `RayTaskError(<type>)` (its text: a coloured
`ray::Task()` header, then the remote traceback), and an actor whose constructor raised as an
`ActorDiedError` holding that `RayTaskError`; Ray Data adds `UserCodeException` around user code.
`innermost` walks these down to the exception raised on the worker; `job_error` turns it into what
the `--ray` command reports: the type and the first line of its message, no terminal colour codes (an
`OSError`'s message names its path), or the batch command's own message for a model that does not
load for the task.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RayJobFailed(Exception):
    """A Ray job failed: "<type>: <message>" of the innermost error; `__cause__` is Ray's error."""


def innermost(error: BaseException) -> tuple[BaseException, bool]:
    """(the exception a Ray worker raised under `error`'s wrappers, whether it was raised by an actor's
    constructor). Anything not from Ray comes back unchanged."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        from ray.data.exceptions import UserCodeException
    except ImportError:  # ray without its data extra
        UserCodeException = ()  # noqa: N806
    in_constructor = False
    seen: set[int] = set()
    while id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, RayTaskError) and error.cause is not None:
            error = error.cause
        elif isinstance(error, RayActorError) and getattr(error, "actor_init_failed", False):
            # Ray keeps the constructor's RayTaskError only as the first constructor argument.
            inner = next((arg for arg in error.args if isinstance(arg, BaseException)), None)
            if inner is None:
                break
            error, in_constructor = inner, True
        elif isinstance(error, UserCodeException) and error.__cause__ is not None:
            error = error.__cause__
        else:
            break
    return error, in_constructor


def first_line(error: BaseException) -> str:
    """The first non-empty line of `error`'s message without colour codes (its type name if empty)."""
    lines = [line.strip() for line in _ANSI.sub("", str(error)).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def job_error(error: BaseException, model: str) -> Exception:
    """What the command reports for `error`, raised while a Ray job ran the model `model`: the batch
    command's ValueError (a usage error) when an actor's engine could not load the model for the task,
    else `RayJobFailed` naming the innermost error."""
    inner, in_constructor = innermost(error)
    if in_constructor and isinstance(inner, ValueError):  # a setting that does not fit this model
        return ValueError(f"{model}: {first_line(inner)}")
    if in_constructor and isinstance(inner, (OSError, RuntimeError)):
        return ValueError(f"cannot load model {model!r}: {first_line(inner)}")
    return RayJobFailed(f"{type(inner).__name__}: {first_line(inner)}")
