"""Templates: checking an upload (names, paths, the .sumocfg and what it names) and writing a
stored version into a session's directory for SUMO to read.

Everything here is blocking (XML parsing, file writes): callers run it in a thread.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as safe_et
from defusedxml import DefusedXmlException

from supervisor.db import TemplateFile
from supervisor.errors import InvalidRequest, InvalidTemplate

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MAX_PATH_LEN = 512
# A .gz file is inflated to check what it references; a bigger inflated size is refused (zip bombs).
MAX_INFLATED_BYTES = 1024 * 1024 * 1024

# Options in a .sumocfg that name files SUMO reads or writes. Inputs must be in the upload; every
# file option must stay inside the session directory.
_FILE_OPTION_RE = re.compile(r"(-files?|-output|-prefix|^log|^message-log|^error-log)$")
_INPUT_SECTION = "input"
# XML attributes in scenario files (additionals, routes) that name files, e.g. detector outputs.
_FILE_ATTRIBUTES = frozenset({"file", "href", "filename", "output"})


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidRequest(
            "template name must match [a-z0-9][a-z0-9_.-]{0,62}", field="name", value=name[:100]
        )
    return name


def check_relative_path(path: str, *, what: str = "file name") -> str:
    """A clean relative POSIX path that stays inside its root, or InvalidTemplate naming it."""
    if not path or len(path) > MAX_PATH_LEN:
        raise InvalidTemplate(f"{what} is empty or too long", path=path[:100])
    if "\x00" in path or "\\" in path:
        raise InvalidTemplate(f"{what} contains a NUL or backslash", path=path[:100])
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidTemplate(f"{what} must be a relative path, not absolute", path=path)
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidTemplate(f"{what} must not contain '..', '.' or empty parts", path=path)
    return path


def _resolve_reference(base_dir: str, value: str, *, what: str) -> str:
    """Resolve a path written in a file at `base_dir` and check it stays inside the template."""
    value = value.strip()
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value):
        raise InvalidTemplate(f"{what} must be a relative path, not absolute", path=value)
    joined = posixpath.normpath(posixpath.join(base_dir, value))
    if joined.startswith("../") or joined == ".." or joined.startswith("/"):
        raise InvalidTemplate(f"{what} points outside the template", path=value)
    return joined


def _parse_xml(data: bytes, path: str) -> Iterable[tuple[str, Mapping[str, str]]]:
    """(tag, attributes) of every element, parsed with entity expansion and DTD fetching off."""
    try:
        for _event, elem in safe_et.iterparse(io.BytesIO(data), events=("start",)):
            yield elem.tag, elem.attrib
    except DefusedXmlException as exc:
        raise InvalidTemplate(f"{path}: XML entities and DTDs are not allowed ({exc})") from None
    except ParseError as exc:
        raise InvalidTemplate(f"{path}: not well-formed XML: {exc}", path=path) from None


def _inflated(path: str, data: bytes) -> bytes:
    if not path.endswith(".gz"):
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            out = fh.read(MAX_INFLATED_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidTemplate(f"{path}: not a valid gzip file ({exc})", path=path) from None
    if len(out) > MAX_INFLATED_BYTES:
        raise InvalidTemplate(f"{path}: inflates to more than {MAX_INFLATED_BYTES} bytes")
    return out


def sumocfg_options(data: bytes, path: str) -> list[tuple[str, str, str]]:
    """(section, option, value) for every option in a .sumocfg."""
    options: list[tuple[str, str, str]] = []
    try:
        tree = safe_et.fromstring(data)
    except DefusedXmlException as exc:
        raise InvalidTemplate(f"{path}: XML entities and DTDs are not allowed ({exc})") from None
    except ParseError as exc:
        raise InvalidTemplate(f"{path}: not well-formed XML: {exc}", path=path) from None
    if tree.tag not in ("configuration", "sumoConfiguration"):
        raise InvalidTemplate(
            f"{path}: not a SUMO configuration (root element <{tree.tag}>)", path=path
        )
    for section in tree:
        if "value" in section.attrib:
            options.append(("", section.tag, section.attrib["value"]))
        for opt in section:
            if "value" in opt.attrib:
                options.append((section.tag, opt.tag, opt.attrib["value"]))
    return options


def check_upload(config_path: str, files: Mapping[str, bytes]) -> tuple[str, list[TemplateFile]]:
    """Validate an upload; returns (sha256 of the whole version, the files with their hashes)."""
    check_relative_path(config_path, what="config")
    if config_path not in files:
        raise InvalidTemplate(
            f"config {config_path!r} is not among the uploaded files",
            path=config_path,
            uploaded=sorted(files),
        )
    config_dir = posixpath.dirname(config_path)
    has_net = False
    for section, option, value in sumocfg_options(files[config_path], config_path):
        if not _FILE_OPTION_RE.search(option):
            continue
        for item in filter(None, (v.strip() for v in value.split(","))):
            ref = _resolve_reference(config_dir, item, what=f"{option} in {config_path}")
            if section == _INPUT_SECTION and option.endswith(("-file", "-files")):
                if ref not in files:
                    raise InvalidTemplate(
                        f"{config_path} names {option}={item!r}, which is not in the upload",
                        missing=ref,
                    )
                has_net |= option == "net-file"
    if not has_net:
        raise InvalidTemplate(f"{config_path} names no net-file", path=config_path)

    for path, data in files.items():
        if path == config_path or not path.endswith((".xml", ".xml.gz")):
            continue
        base = posixpath.dirname(path)
        for _tag, attrs in _parse_xml(_inflated(path, data), path):
            for attr in _FILE_ATTRIBUTES.intersection(attrs):
                _resolve_reference(base, attrs[attr], what=f"{attr}= in {path}")

    stored = [
        TemplateFile(path, hashlib.sha256(data).hexdigest(), data)
        for path, data in sorted(files.items())
    ]
    digest = hashlib.sha256(
        json.dumps([config_path, [(f.path, f.sha256) for f in stored]]).encode()
    ).hexdigest()
    return digest, stored


def materialize(files: Iterable[TemplateFile], root: Path) -> None:
    """Write a template's files under `root` (a fresh directory), never following links."""
    for f in files:
        check_relative_path(f.path)
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "wb") as fh:
            fh.write(f.content)
