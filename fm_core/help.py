"""`--help` of the Hydra apps, rendered from their YAML text (the comments are the documentation).

Shows the app's purpose and examples (the YAML's leading comment), its own groups (its defaults
list) with their options, and its own keys with the comments beside and above them; a group picked
on the command line (`fm-finetune task=contacts --help`) also shows that option's keys. Reads text
only: no Hydra, no torch, so it answers at once.
"""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

CONF_PACKAGE = "pkg://fm_conf".removeprefix("pkg://")
SKIPPED_BLOCKS = ("defaults", "hydra")
TOP_KEY = re.compile(r"^([A-Za-z_][\w@]*)\s*:")
DEFAULT_ENTRY = re.compile(r"^\s*-\s*(?:override\s+)?([\w/@.]+)\s*:\s*(\S+)")


def conf_dir() -> Path:
    return Path(str(files(CONF_PACKAGE)))


def read_config(name: str) -> list[str]:
    return (conf_dir() / f"{name}.yaml").read_text(encoding="utf-8").splitlines()


def header(lines: list[str]) -> list[str]:
    """The leading comment block (purpose and examples), without the `#`."""
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            out.append(line[1:].removeprefix(" "))
    return out


def blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(top-level key, its lines: the comments just above it, the key line, its indented children)."""
    body = lines[len(header(lines)):]
    found: list[tuple[str, list[str]]] = []
    pending: list[str] = []
    for line in body:
        match = TOP_KEY.match(line)
        if match:
            found.append((match.group(1), [*pending, line]))
            pending = []
        elif line.startswith("#") or not line.strip():
            pending = [*pending, line] if line.strip() else []
        elif found:
            found[-1][1].append(line)
    return found


def defaults(lines: list[str]) -> list[tuple[str, str]]:
    """(group, default option) of the defaults list, `_self_` left out."""
    for key, block in blocks(lines):
        if key == "defaults":
            return [(m.group(1), m.group(2)) for m in map(DEFAULT_ENTRY.match, block) if m]
    return []


def keys(lines: list[str]) -> list[str]:
    return [line for key, block in blocks(lines) if key not in SKIPPED_BLOCKS for line in block]


def required(lines: list[str]) -> list[str]:
    top = [key for key, block in blocks(lines) if key not in SKIPPED_BLOCKS and "???" in block[-1]]
    return top + [group for group, option in defaults(lines) if option == "???"]


def group_options(group: str) -> list[str]:
    folder = conf_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _groups_section(lines: list[str]) -> list[str]:
    out = ["Groups (pick one with group=option; * = default):"] if defaults(lines) else []
    for group, default in defaults(lines):
        options = [f"{o}*" if o == default else o for o in group_options(group)]
        note = " (required)" if default == "???" else " (none by default)" if default == "null" else ""
        out.append(f"  {group}{note}: {', '.join(options)}")
    return out


def _picked_sections(lines: list[str], argv: list[str]) -> list[str]:
    out = []
    groups = {group for group, _ in defaults(lines)}
    for arg in argv:
        group, _, option = arg.lstrip("+~").partition("=")
        if group in groups and option in group_options(group):
            picked = read_config(f"{group}/{option}")
            out += ["", f"{group}={option}: " + " ".join(header(picked)).strip(),
                    f"Keys of {group}={option} (override with {group}.<key>=value):"]
            out += [f"  {line}" for line in keys(picked)]
    return out


def render_help(config_name: str, tool: str, argv: list[str]) -> str:
    lines = read_config(config_name)
    out = [f"{tool}: " + "\n".join(header(lines)).removeprefix(f"{tool}:").strip(), "",
           f"usage: {tool} [group=option ...] [key=value ...] [--debug]", ""]
    out += _groups_section(lines)
    out += [""] if defaults(lines) else []
    out += [f"Keys of {tool} (YAML defaults and their meaning; override with key=value):"]
    out += [f"  {line}" for line in keys(lines)]
    out += _picked_sections(lines, argv)
    out += ["", f"`{tool} group=option --help` also shows that option's keys. Errors are one line with exit "
                f"code 2; --debug or FM_DEBUG=1 shows the traceback. Hydra's own flags: --hydra-help, --cfg job."]
    return "\n".join(out)


def short_usage(config_name: str, tool: str) -> str | None:
    """A few lines for an app run without the arguments it requires (None when it requires none)."""
    lines = read_config(config_name)
    needed = required(lines)
    if not needed:
        return None
    examples = [line.strip() for line in header(lines) if line.strip().startswith(f"{tool} ")]
    return "\n".join([f"usage: {tool} " + " ".join(f"{k}=..." for k in needed) + " [key=value ...]",
                      *(f"  e.g. {e}" for e in examples[:3]),
                      f"{tool}: error: missing required {', '.join(needed)} (see {tool} --help)"])
