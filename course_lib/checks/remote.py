"""A student's objects as the checks see them when they live in another process.

Why (issue 21, value-only checking): in the re-check a check runs in the server, a process that
never runs student code, and the student's functions stay in the child. A name the test cell reads
from the student's notebook arrives by value when it is data (a number, a tensor, a tuple...: see
:mod:`course_lib.grading.inside.values`) and as a :class:`StudentObject` otherwise: a handle that
can be called (through :func:`course_lib.checks.call_student`, which sends copies of the inputs and
gets a copy of the result back) and that is nothing else. It is not a number, a tensor or a
module, so every type test of the checks fails it with the usual message. A check that needs more
of a student object (its layers, its output, a model trained with it) reads it through
:func:`course_lib.checks.run_probe`: a checks module's function run beside the object, returning
data (exercise 7's timing checks build their workloads beside the student's timer this way). A
check that cannot is not marked :func:`value_only` and runs in the student's process.

The transport is the re-check server's (``course_lib.grading.inside.recheck``); this module only
names what a check may ask of it.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol


class Channel(Protocol):
    def call(self, handle: int, args: tuple, kwargs: dict, refusals: list[dict],
             probe: tuple[str, str] | None = None) -> tuple[str, Any]:
        """Run the student's object ``handle`` (or the course's function ``probe``, named by
        module and name, on it) on copies of ``args``/``kwargs`` with ``refusals`` in force;
        returns ``("returned", value)`` or ``(category, (type name, message, kind))`` as
        :func:`course_lib.checks.student_outcome` does."""


class StudentObject:
    """A student's object that stayed in the student's process: its type's name, and a handle."""

    def __init__(self, channel: Channel, handle: int, type_name: str, name: str | None) -> None:
        self._channel, self._handle, self._type = channel, handle, type_name
        self.__name__ = name or type_name

    def __repr__(self) -> str:
        return f"<{self._type} in the student's process>"

    def call_in_student_process(self, args: tuple, kwargs: dict, refusals: list[dict],
                                probe: tuple[str, str] | None = None) -> tuple[str, Any]:
        return self._channel.call(self._handle, args, kwargs, refusals, probe)


class StudentFunction(StudentObject):
    """A student's object that can be called (a function, a class): ``callable()`` is true, so
    the checks' "should be a function" test passes, and :func:`call_student` calls it remotely.
    Calling it directly is a check that was marked value-only by mistake."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self.__name__} lives in the student's process: call it through "
                        f"course_lib.checks.call_student (this check is not value-only)")


def value_only(check: Callable) -> Callable:
    """Mark a check that touches a student's objects only through :func:`call_student` and reads
    only data from them: the re-check runs its test cells in the server (value-only checking)."""
    check.value_only = True
    return check
