"""What a template upload sends for a .sumocfg: the config and every input file it names,
wherever they are (sibling folders, .gz), as paths relative to the folder that holds them all.
Blocking (sumolib reads the config): the async client runs it on a thread."""

from __future__ import annotations

import os
from pathlib import Path

from supervisor.client_errors import ScenarioError


def scenario_files(config: str | os.PathLike[str]) -> tuple[str, dict[str, Path]]:
    """(the config's upload path, {upload path: file on disk}) for the .sumocfg `config`."""
    import sumolib.options  # only a template upload needs it

    config = Path(config).resolve()
    if not config.is_file():
        raise ScenarioError(f"{config}: no such file")
    try:
        options = sumolib.options.readOptions(str(config))
    except Exception as exc:  # sumolib raises what its XML parser raises
        raise ScenarioError(f"{config}: not a readable SUMO configuration ({exc})") from None
    paths = [config]
    for opt in options:
        if not opt.name.endswith(("-file", "-files")):
            continue  # outputs are named *-output and are SUMO's to write
        for item in str(opt.value).replace(" ", ",").split(","):
            if item.strip():
                path = (config.parent / item.strip()).resolve()
                if not path.is_file():
                    raise ScenarioError(f"{config.name} names {opt.name}={item.strip()}, not found")
                paths.append(path)
    root = Path(os.path.commonpath([p.parent for p in paths]))
    files = {p.relative_to(root).as_posix(): p for p in dict.fromkeys(paths)}
    return config.relative_to(root).as_posix(), files


def read_files(files: dict[str, Path]) -> list[tuple[str, tuple[str, bytes]]]:
    """The multipart file parts of an upload: one per file, its filename its upload path."""
    return [("file", (rel, path.read_bytes())) for rel, path in files.items()]
