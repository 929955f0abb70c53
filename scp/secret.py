"""A credential held in the settings (bearer token, client secret, pseudonymization key).

Its ``repr``/``str`` never show the value, so neither ``repr`` of a settings object nor a
log line that formats one leaks it.
"""

from __future__ import annotations

from pathlib import Path


class Secret:
    """A credential's value, revealed only on purpose (:meth:`reveal`).

    A secret read from a file is read again on each :meth:`reveal` when ``reread`` (the
    default), so a rotated file (a Kubernetes secret mount, say) is picked up without a
    restart; if the file has become unreadable or empty, the value read at start is used.
    """

    __slots__ = ("_value", "path", "reread")

    def __init__(self, value: str, path: Path | None = None, reread: bool = True) -> None:
        self._value = value
        self.path = path
        self.reread = reread

    def reveal(self) -> str:
        if self.path is not None and self.reread:
            try:
                fresh = self.path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                return self._value
            if fresh:
                return fresh
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)" if self.path is None else f"Secret(file={str(self.path)!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.path == other.path and self._value == other._value

    def __hash__(self) -> int:
        return hash(self.path)

    def __reduce__(self) -> tuple[type[Secret], tuple[str, Path | None, bool]]:
        # Pickled (to the delivery worker processes, started with spawn) with its value.
        return (Secret, (self._value, self.path, self.reread))
