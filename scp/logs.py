"""Logging set-up shared by every scp2fhir process.

Log lines name things by identifier first (``assoc=``, ``study=``, ``sop=``) and never
carry patient data. What :func:`configure` installs on the one root handler:

* **the level, for everyone**: the handler itself has the configured level, so a
  library that sets its own logger's level (pydicom pins ``pydicom`` to WARNING) is still
  held to ``SCP2FHIR_LOG_LEVEL``;
* **one line per record**: control characters in a message (a newline in an AE title
  sent by a peer) are escaped, so no one can forge log lines (:func:`escape_controls`);
* **no values from libraries**: records of third-party loggers (pydicom, pynetdicom,
  RQ, Python's warnings) have every quoted value masked and tracebacks reduced to the
  exception's type: pydicom says ``Invalid value for VR UI: '<the value>'``, and that
  value can be a Patient ID a RIS put in the wrong element (:class:`ThirdPartyValues`);
* **warnings as log records**: :func:`warnings.warn` calls become records of the
  ``py.warnings`` logger (level, format and masking apply), never raw text on stderr;
* ``json``: one JSON object per line, for log shippers;
* ``hash_uids``: every DICOM UID in a message becomes a short, stable hash, for sites
  that treat UIDs themselves as identifying. IP addresses are not UIDs and stay readable;
  a path with a UID in it is replaced as a whole (a half-hashed path names no file).

Libraries that chatter at INFO (pynetdicom per PDU, RQ per job) are held at WARNING
unless the level is DEBUG: :func:`library_level`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import threading
import warnings
from typing import TextIO

#: Loggers of scp2fhir itself; every other logger is a third party's.
OWN_LOGGERS = ("scp", "workers", "scp2fhir", "tests")

#: A DICOM UID: at least four dot-separated numeric components (versions have fewer).
_UID = re.compile(r"(?<![\w.])(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*)){3,}(?!\w)(?!\.\d)")

#: Quoted values in a library's message: '...', "...", b'...', `...`.
_QUOTED = re.compile(r"""b?'[^']*'|b?"[^"]*"|`[^`]*`""")

#: C0 controls, DEL, C1 controls and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def hash_uid(uid: str) -> str:
    return "uid:" + hashlib.sha256(uid.encode()).hexdigest()[:12]


def _is_ipv4(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
    except ValueError:
        return False


def _hash_match(match: re.Match[str]) -> str:
    return match.group(0) if _is_ipv4(match.group(0)) else hash_uid(match.group(0))


def _hash_token(match: re.Match[str]) -> str:
    token = match.group(0)
    if "/" not in token or not _UID.search(token):
        return _UID.sub(_hash_match, token)
    # A path (or URL) with a UID in it: hashed, it would name a file that does not exist,
    # so it is not printed at all; the hashes of its UIDs are.
    head, _, _ = token.partition("/")
    key = head[: head.rfind("=") + 1] if "=" in head else ""
    hashes = ",".join(hash_uid(m.group(0)) for m in _UID.finditer(token))
    return f"{key}<path with {hashes}>"


def hash_uids(message: str) -> str:
    """``message`` with every DICOM UID replaced by :func:`hash_uid`. A dotted quad that is
    an IPv4 address (``127.0.0.1``) is an address, not a UID, and stays as it is; a path
    with a UID in it becomes ``<path with uid:...>``, never a path that does not exist."""
    return re.sub(r"\S+", _hash_token, message)


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters become visible escapes (``\\n``, ``\\x1b``)."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(0)) or _escape(m.group(0)), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def mask_values(text: str) -> str:
    """A library's message with every quoted value replaced by ``'…'``."""
    return _QUOTED.sub("'…'", text)


def is_own(record: logging.LogRecord) -> bool:
    return record.name.split(".", 1)[0] in OWN_LOGGERS


class ThirdPartyValues(logging.Filter):
    """Masks quoted values in third-party records and drops their tracebacks (a
    library's exception text can quote the value it choked on); the exception's type
    stays in the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_own(record):
            return True
        message = mask_values(record.getMessage())
        if record.exc_info and record.exc_info[0] is not None:
            message += f" ({record.exc_info[0].__name__})"
        record.msg, record.args = message, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class OneLine(logging.Filter):
    """Escapes control characters in the message (tracebacks keep their lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


class HashUids(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hashed = hash_uids(message)
        if hashed != message:
            record.msg, record.args = hashed, None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process_name = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "process": self.process_name,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _Warnings:
    """Replaces :func:`warnings.showwarning`: a warning becomes one ``py.warnings``
    record (category, message, where), not text on stderr.

    pydicom reports each bad value twice, to its logger and as a warning
    (``warn_and_log``); the warning that repeats what the ``pydicom`` logger just said on
    the same thread is dropped.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger("py.warnings")
        self.last_pydicom = threading.local()

    def remember(self, record: logging.LogRecord) -> bool:
        self.last_pydicom.message = record.getMessage()
        return True

    def show(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        if getattr(self.last_pydicom, "message", None) == text:
            self.last_pydicom.message = None
            return
        where = filename.rsplit("/", 1)[-1]
        self.logger.warning("%s: %s (%s:%d)", category.__name__, text, where, lineno)


_warnings = _Warnings()


def library_level(level: str) -> str:
    """The level for chatty libraries (pynetdicom, RQ): theirs at DEBUG, else WARNING
    or higher, so the default log is scp2fhir's own lines."""
    if level == "DEBUG":
        return "DEBUG"
    return level if getattr(logging, level) >= logging.WARNING else "WARNING"


def configure(level: str, process: str, fmt: str = "text", hash_uids: bool = False) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s {process}[%(process)d] %(name)s: %(message)s"
            )
        )
    # Order matters: mask first (values are found by their quotes), then escape, then hash.
    handler.addFilter(ThirdPartyValues())
    handler.addFilter(OneLine())
    if hash_uids:
        handler.addFilter(HashUids())
    handler.setLevel(getattr(logging, level))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level))
    # pynetdicom logs every PDU at INFO; its own errors still come through.
    logging.getLogger("pynetdicom").setLevel(library_level(level))
    for name in ("rq", "rq.worker", "rq.job", "rq.scheduler"):
        logging.getLogger(name).setLevel(library_level(level))
    pydicom_logger = logging.getLogger("pydicom")
    if _warnings.remember not in pydicom_logger.filters:
        pydicom_logger.addFilter(_warnings.remember)
    warnings.showwarning = _warnings.show
