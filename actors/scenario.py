"""Templates: checking an upload (names, paths, the .sumocfg and every file SUMO may read) and
writing a stored version into a session's directory for SUMO to read.

The checks follow what SUMO reads, not what files are called. SUMO's reader inflates any file
whose content starts like gzip or zlib, whatever its name, and parses any XML it is given, so
every uploaded file is inflated by its content and parsed when its content is XML. Parsing is a
stream: inflated bytes go to expat chunk by chunk and every element is checked as it passes, so
memory does not grow with a file's size (a compression bomb included); the inflated size is
counted as it comes and capped. A refusal is a 4xx that names the file and the option or
attribute.

Everything here but CheckSlots is blocking (inflating, parsing, file writes): callers run it in
a thread, through CheckSlots.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import posixpath
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar
from xml.parsers import expat

from actors.errors import Busy, InvalidRequest, InvalidTemplate, PayloadTooLarge

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
MAX_PATH_LEN = 512
# The default of the max_inflated_bytes setting: one file's size once inflated.
DEFAULT_MAX_INFLATED_BYTES = 256 * 1024 * 1024
# A .sumocfg is a few KiB, and its options are kept in memory while they are checked.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# What expat may hold at once, whatever the file's size: one unfinished token (a start tag with
# its attributes, a comment: a polygon's shape can take a few MiB), the open elements, and the
# distinct element and attribute names (expat and pyexpat keep every one they have seen).
MAX_XML_TOKEN_BYTES = 8 * 1024 * 1024
MAX_XML_DEPTH = 100
MAX_XML_NAMES = 10_000
MAX_XML_NAME_LEN = 256
# Compressed input is fed to zlib, and inflated output taken from it, in pieces of these sizes.
_IN_CHUNK = 64 * 1024
_OUT_CHUNK = 256 * 1024

# (section, option, value): the section is the option element's parent.
Option = tuple[str, str, str]

_CONFIG_ROOTS = ("configuration", "sumoConfiguration")
# Files that must be XML whatever their content looks like (a clear error early, not SUMO's).
_XML_NAMES = (".xml", ".xml.gz", ".sumocfg")
# Options naming files the config reads: each must be in the upload. By name (with SUMO's
# synonyms: options are global, whichever element holds them), or any *-file(s) under <input>.
_NET_OPTIONS = frozenset({"net-file", "n", "net"})
_INPUT_OPTIONS = _NET_OPTIONS | {
    "route-files", "r", "routes", "additional-files", "a", "additional",
    "weight-files", "w", "weights", "load-state",
    # Read from other sections: each stops SUMO at start (or at its first use) when missing.
    "fcd-output.filter-edges.input-file", "device.ssm.filter-edges.input-file",
    "astar.all-distances", "astar.landmark-distances", "device.fcd-replay.files",
}  # fmt: skip
# sumo-gui's own file options (its <gui_only> section). Plain SUMO reads some of them too (a
# missing gui-settings-file or alternative-net-file stops it at start), but nothing a headless
# run needs: SUMO's command line clears them (the command line wins over the config), so an
# upload needs none of their files.
GUI_ONLY_FILE_OPTIONS = (
    "gui-settings-file", "alternative-net-file", "edgedata-files", "selection-file",
    "gui-testing.setting-output",
)  # fmt: skip
_INPUT_SECTION = "input"
# Options and attributes naming files SUMO writes. Only used to refuse a network address
# (below); whether a value stays inside the template is checked for every option and attribute.
_OUTPUT_OPTION_RE = re.compile(
    r"(file|files|output|dump|log|prefix|suffix)$"
    r"|^(netstate|summary|tripinfo|personinfo|vehroutes|personroutes|person-fcd|l)$"
)
_FILE_ATTRIBUTES = frozenset({"file", "dest", "output", "filename"})
# output-prefix, output-suffix, save-state.suffix...: SUMO pastes them into every output's name
# (FileHelpers::prependToLastPathComponent), where a '/' could climb out of any directory.
_AFFIX_OPTION_RE = re.compile(r"(prefix|suffix)$")

# SUMO rewrites a path before it opens it (StringUtils::substituteEnvironment): ${NAME} becomes
# that environment variable, and '~' at the start of a value or after a comma the home
# directory. Only these variables become something that cannot move a path.
_ENV_RE = re.compile(r"\$\{(.+?)\}")
_HARMLESS_ENV = frozenset({"PID", "LOCALTIME", "UTC"})
# SUMO splits file lists on commas and semicolons.
_SEPARATOR_RE = re.compile(r"[,;]")
# A cheap first look at an attribute value (a net has millions): only these need a closer one.
_RISKY_RE = re.compile(r"(?:^|[,;])\s*[/~]|\.\.|\$\{")

# What Xerces (SUMO's parser) reads as XML besides text starting with '<': byte-order marks and
# the signatures of UTF-16, UCS-4 and EBCDIC documents without one.
_XML_SIGNATURES = (
    b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe", b"\x00\x00\xfe\xff",
    b"\x00\x00\x00<", b"<\x00\x00\x00", b"\x00\x00<\x00", b"\x00<\x00\x00",
    b"\x00<\x00?", b"<\x00?\x00", b"\x4c\x6f\xa7\x94",
)  # fmt: skip
_WHITESPACE = b" \t\r\n"
_DECLARATIONS = (b"<!DOCTYPE", b"<!ENTITY")


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
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


# ---- values: does a path written in a file stay inside the template? ----------------------------


def _pieces(value: str) -> list[str]:
    return [p.strip() for p in _SEPARATOR_RE.split(value) if p.strip()]


def _path_problem(base: str, piece: str) -> str | None:
    """Why SUMO could reach outside the template through this value (written in a file in
    `base`), or None. Values are stripped first: that only ever refuses more."""
    for name in _ENV_RE.findall(piece):
        if name not in _HARMLESS_ENV:
            return f"uses ${{{name}}}, which SUMO replaces with an environment variable"
    if piece.startswith("~"):
        return "starts with '~', which SUMO replaces with a home directory"
    if piece == "/dev/null":  # how SUMO's documentation turns an output off
        return None
    if piece.startswith("/"):
        return "must be a relative path, not absolute"
    joined = posixpath.normpath(posixpath.join(base, piece))
    if joined == ".." or joined.startswith("../"):
        return "points outside the template"
    return None


# Where the daemon's recorder has SUMO write its own outputs in a session dir (emptied at start):
# no uploaded file and no output of the config's may be there.
RECORDING_DIR = "_supervisor"


def _in_recording_dir(path: str) -> bool:
    return path == RECORDING_DIR or path.startswith(RECORDING_DIR + "/")


def _is_address(piece: str) -> bool:
    # SUMO's FileHelpers::isSocket: an output named host:port is a TCP connection, not a file.
    colon = piece.find(":")
    return colon > 1 or (colon >= 0 and piece.startswith("["))


def _check_value(
    base: str, value: str, *, file: str, what: str, output: bool, **detail: Any
) -> None:
    for piece in _pieces(value):
        why = _path_problem(base, piece)
        if why is None and output and _is_address(piece):
            why = "names a network address (host:port), where SUMO would send its output"
        if (
            why is None
            and output
            and _in_recording_dir(posixpath.normpath(posixpath.join(base, piece)))
        ):
            why = f"is in {RECORDING_DIR}/, where the daemon records the session"
        if why is not None:
            shown = piece[:200]
            raise InvalidTemplate(
                f"{file}: {what}={shown!r} {why}", path=file, value=shown, **detail
            )


def _check_option(base: str, file: str, option: str, value: str) -> None:
    what = f"option {option}"
    if _AFFIX_OPTION_RE.search(option) and "/" in value:
        raise InvalidTemplate(
            f"{file}: {what}={value[:200]!r} must not contain '/': SUMO adds it to the name of "
            "every output file",
            path=file,
            option=option,
        )
    output = bool(_OUTPUT_OPTION_RE.search(option))
    _check_value(base, value, file=file, what=what, output=output, option=option)


# ---- content: inflated as SUMO inflates it, counted as it comes ---------------------------------


def _is_compressed(data: bytes) -> bool:
    # SUMO's reader (zstr) inflates gzip, and zlib with these headers, whatever the file's name.
    return data[:2] == b"\x1f\x8b" or (
        data[:1] == b"\x78" and data[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda")
    )


def _content(path: str, data: bytes, limit: int) -> Iterator[bytes]:
    """The file's content as SUMO reads it, in chunks: inflated when it is compressed.
    PayloadTooLarge as soon as it has come to more than `limit` bytes."""
    if not _is_compressed(data):
        if path.endswith(".gz"):
            raise InvalidTemplate(f"{path}: not a valid gzip file (no gzip header)", path=path)
        if len(data) > limit:
            raise PayloadTooLarge(f"{path}: larger than {limit} bytes", path=path, limit=limit)
        return (data[i : i + _OUT_CHUNK] for i in range(0, len(data), _OUT_CHUNK))
    return _inflate(path, data, limit)


def _inflate(path: str, data: bytes, limit: int) -> Iterator[bytes]:
    size = 0
    inflater = zlib.decompressobj(wbits=47)  # 32 + 15: a gzip or a zlib header
    view = memoryview(data)
    try:
        for start in range(0, len(data), _IN_CHUNK):
            pending = bytes(view[start : start + _IN_CHUNK])
            while True:
                if inflater.eof:
                    # More after a member's end: NUL padding, or another member (SUMO reads on).
                    pending = pending.lstrip(b"\0")
                    if not pending:
                        break
                    inflater = zlib.decompressobj(wbits=47)
                out = inflater.decompress(pending, _OUT_CHUNK)
                size += len(out)
                if size > limit:
                    raise PayloadTooLarge(
                        f"{path}: inflates to more than {limit} bytes", path=path, limit=limit
                    )
                if out:
                    yield out
                pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
                # A full chunk may leave output inside zlib: ask again, even with no input left.
                if not pending and (inflater.eof or len(out) < _OUT_CHUNK):
                    break
    except zlib.error as exc:
        raise InvalidTemplate(f"{path}: not a valid gzip file ({exc})", path=path) from None
    if not inflater.eof:
        raise InvalidTemplate(f"{path}: not a valid gzip file (truncated)", path=path)


def _sniff(chunks: Iterator[bytes]) -> tuple[bool, Iterator[bytes]]:
    """Whether Xerces would read the content as XML, and the content to feed on (its leading
    whitespace dropped when it has no byte-order mark: whitespace may come before the root)."""
    first = b""
    for chunk in chunks:
        first += chunk
        if len(first) >= 4:
            break
    if first.startswith(_XML_SIGNATURES):
        return True, chain([first], chunks)
    head = first.lstrip(_WHITESPACE)
    while not head:
        more = next(chunks, None)
        if more is None:
            return False, iter(())
        head = more.lstrip(_WHITESPACE)
    return head.startswith(b"<"), chain([head], chunks)


def _refuse_declarations(path: str, chunks: Iterable[bytes]) -> None:
    """A file that is not XML is stored as it is, but holds no DTD or entity declaration."""
    tail = b""
    for chunk in chunks:
        window = tail + chunk
        for declaration in _DECLARATIONS:
            if declaration in window:
                raise InvalidTemplate(
                    f"{path}: XML entities and DTDs are not allowed (it contains "
                    f"{declaration.decode()})",
                    path=path,
                )
        tail = window[-len(_DECLARATIONS[0]) :]


# ---- XML, as a stream -------------------------------------------------------------------------


class _XmlScan:
    """One file's XML, checked while it is fed: no DTD or entity declaration, bounded nesting,
    names and tokens, and every attribute value staying inside the template.

    For a .sumocfg (`config=True`) it also collects the options the way SUMO's OptionsLoader reads
    them, each checked as it comes: at any depth, an element's `value` or `v` attribute names an
    option after the element, and so does its text (given to the element started last)."""

    def __init__(self, path: str, *, config: bool) -> None:
        self.path = path
        self.options: list[Option] | None = [] if config else None
        self._base = posixpath.dirname(path)
        self._fed = 0
        self._open: list[str] = []
        self._names: set[str] = set()
        self._item: tuple[str, str] | None = None  # (section, option) that text would set
        self._text: list[str] = []
        parser = no_dtd_parser(self._refuse_dtd, self._start, self._end)
        if config:
            parser.CharacterDataHandler = self._text.append
        self._parser = parser

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        try:
            self._parser.Parse(chunk, final)
        except expat.ExpatError as exc:
            raise InvalidTemplate(
                f"{self.path}: not well-formed XML: {exc}", path=self.path
            ) from None
        except ValueError as exc:  # an encoding expat cannot read (multi-byte, bad bytes)
            raise InvalidTemplate(f"{self.path}: unreadable XML: {exc}", path=self.path) from None
        self._fed += len(chunk)
        # After a chunk expat points at the token it has not finished: all it holds.
        if self._fed - max(self._parser.CurrentByteIndex, 0) > MAX_XML_TOKEN_BYTES:
            raise InvalidTemplate(
                f"{self.path}: an XML tag or comment longer than {MAX_XML_TOKEN_BYTES} bytes",
                path=self.path,
            )

    def _refuse_dtd(self, *_args: object) -> None:
        raise InvalidTemplate(
            f"{self.path}: XML entities and DTDs are not allowed (it has a DOCTYPE)",
            path=self.path,
        )

    def _note_name(self, name: str) -> None:
        if name in self._names:
            return
        if len(name) > MAX_XML_NAME_LEN or len(self._names) >= MAX_XML_NAMES:
            raise InvalidTemplate(
                f"{self.path}: more than {MAX_XML_NAMES} distinct element and attribute names,"
                f" or one longer than {MAX_XML_NAME_LEN} characters",
                path=self.path,
            )
        self._names.add(name)

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        if len(self._open) >= MAX_XML_DEPTH:
            raise InvalidTemplate(
                f"{self.path}: elements nested deeper than {MAX_XML_DEPTH}", path=self.path
            )
        self._note_name(tag)
        if not self._open and self.options is not None and tag not in _CONFIG_ROOTS:
            raise InvalidTemplate(
                f"{self.path}: not a SUMO configuration (root element <{tag}>)", path=self.path
            )
        section = self._open[-1] if self._open else ""
        self._open.append(tag)
        for name, value in attrs.items():
            self._note_name(name)
            if self.options is not None and name in ("value", "v"):
                _check_option(self._base, self.path, tag, value)
                self.options.append((section, tag, value))
            elif name in _FILE_ATTRIBUTES or _RISKY_RE.search(value):
                what = f"<{tag}> attribute {name}"
                output = name in _FILE_ATTRIBUTES
                _check_value(
                    self._base, value, file=self.path, what=what, output=output, attribute=name
                )
        if self.options is not None:
            # As in OptionsLoader: text belongs to the element started last, and starts afresh.
            self._item = (section, tag)
            self._text.clear()

    def _end(self, _tag: str) -> None:
        self._open.pop()
        if self.options is None or self._item is None:
            return
        text = "".join(self._text)
        if not text.strip("\n\t \a"):
            return
        section, option = self._item
        _check_option(self._base, self.path, option, text)
        self.options.append((section, option, text))
        self._item = None
        self._text.clear()


def _scan(path: str, data: bytes, limit: int, *, config: bool = False) -> _XmlScan | None:
    """Inflate and check one uploaded file; its scan when its content is XML, else None."""
    is_xml, chunks = _sniff(_content(path, data, limit))
    if not (is_xml or config or path.endswith(_XML_NAMES)):
        _refuse_declarations(path, chunks)
        return None
    scan = _XmlScan(path, config=config)
    for chunk in chunks:
        scan.feed(chunk)
    scan.feed(b"", final=True)
    return scan


def no_dtd_parser(
    refuse: Callable[..., None],
    start: Callable[[str, dict[str, str]], None],
    end: Callable[[str], None],
) -> Any:
    """An expat parser that calls `refuse` (which raises) at any DOCTYPE, entity or notation
    declaration, and never reads an external one: the only XML parser the daemon uses on a
    template's files."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    return parser


def sumocfg_options(
    data: bytes, path: str, max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES
) -> list[Option]:
    """(section, option, value) for every option in a .sumocfg, as SUMO reads them; refused
    (InvalidTemplate naming the option) when a value could reach outside the template."""
    scan = _scan(path, data, min(MAX_CONFIG_BYTES, max_inflated_bytes), config=True)
    assert scan is not None and scan.options is not None
    return scan.options


def config_values(config: bytes, config_path: str) -> dict[str, str]:
    """Each option the config gives, by SUMO's name for it, with its value; the last
    occurrence counts, as in SUMO, and comes last in the dict (among synonyms too). Empty when
    the config would not pass the upload checks (a template stored before them: SUMO, in its
    sandbox, decides)."""
    try:
        options = sumocfg_options(config, config_path)
    except (InvalidTemplate, PayloadTooLarge):
        return {}
    values: dict[str, str] = {}
    for _s, option, value in options:
        values.pop(option, None)
        values[option] = value.strip()
    return values


def output_path(values: Mapping[str, str], config_path: str, names: Iterable[str]) -> str | None:
    """Where the config (its `config_values`) sends the output named by any of `names` (SUMO's
    synonyms), as a path relative to the template's root; None when it names none,
    `/dev/null`, or a name SUMO completes while it runs (${PID}...)."""
    wanted = set(names)
    given = [v for option, v in values.items() if option in wanted]
    value = given[-1] if given else None
    if not value or value == "/dev/null" or "${" in value:
        return None
    return posixpath.normpath(posixpath.join(posixpath.dirname(config_path), value))


def config_output(config: bytes, config_path: str, names: Iterable[str]) -> str | None:
    """`output_path` of a config not parsed yet."""
    return output_path(config_values(config, config_path), config_path, names)


def _check_inputs(config_path: str, options: Iterable[Option], files: Mapping[str, bytes]) -> None:
    """Every file the config reads is in the upload, and it names a net."""
    base = posixpath.dirname(config_path)
    has_net = False
    for section, option, value in options:
        if option not in _INPUT_OPTIONS and not (
            section == _INPUT_SECTION and option.endswith(("-file", "-files"))
        ):
            continue
        for item in _pieces(value):
            ref = posixpath.normpath(posixpath.join(base, item))
            if ref not in files:
                raise InvalidTemplate(
                    f"{config_path} names {option}={item!r}, which is not in the upload",
                    missing=ref,
                )
        has_net |= option in _NET_OPTIONS
    if not has_net:
        raise InvalidTemplate(f"{config_path} names no net-file", path=config_path)


def check_upload(
    config_path: str,
    files: Mapping[str, bytes],
    *,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> tuple[str, list[TemplateFile]]:
    """Validate an upload; returns (sha256 of the whole version, the files with their hashes).
    Every file is inflated (capped at `max_inflated_bytes`) and, when XML, parsed as a stream."""
    check_relative_path(config_path, what="config")
    if config_path not in files:
        raise InvalidTemplate(
            f"config {config_path!r} is not among the uploaded files",
            path=config_path,
            uploaded=sorted(files),
        )
    for path in files:
        if _in_recording_dir(path):
            raise InvalidTemplate(
                f"{path}: {RECORDING_DIR}/ is where the daemon records the session", path=path
            )
    options = sumocfg_options(files[config_path], config_path, max_inflated_bytes)
    _check_inputs(config_path, options, files)
    for path, data in files.items():
        if path != config_path:
            _scan(path, data, max_inflated_bytes)

    stored = [
        TemplateFile(path, hashlib.sha256(data).hexdigest(), data)
        for path, data in sorted(files.items())
    ]
    digest = hashlib.sha256(
        json.dumps([config_path, [(f.path, f.sha256) for f in stored]]).encode()
    ).hexdigest()
    return digest, stored


# ---- how many checks at once ------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateFile:
    """One file of a template version, as stored."""

    path: str
    sha256: str
    content: bytes


_T = TypeVar("_T")


class CheckSlots:
    """At most `size` uploads are checked at once: each may inflate and parse hundreds of MiB on
    a thread. A request that finds every slot taken waits up to `wait_s` for one, then is told to
    try again (Busy, 503). A slot is freed when its check's thread ends, even when the request
    that started it was cancelled before: the thread cannot be stopped."""

    def __init__(self, size: int, wait_s: float) -> None:
        self._size = size
        self._wait_s = wait_s
        self._free = asyncio.Semaphore(size)

    async def run(self, check: Callable[[], _T]) -> _T:
        if self._free.locked():
            try:
                async with asyncio.timeout(self._wait_s):
                    await self._free.acquire()
            except TimeoutError:
                raise Busy(
                    f"{self._size} uploads are being checked; try again in a moment"
                ) from None
        else:
            await self._free.acquire()
        try:
            done = asyncio.get_running_loop().run_in_executor(None, check)
        except BaseException:  # no thread to run it (the daemon is shutting down)
            self._free.release()
            raise
        done.add_done_callback(self._release)
        return await asyncio.shield(done)

    def _release(self, done: asyncio.Future[Any]) -> None:
        self._free.release()
        if not done.cancelled():
            done.exception()  # retrieved here when nobody awaits it any more


def materialize(files: Iterable[TemplateFile], root: Path) -> None:
    """Write a template's files under `root` (a fresh directory), never following links."""
    for f in files:
        check_relative_path(f.path)
        target = root / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        with os.fdopen(fd, "wb") as fh:
            fh.write(f.content)
