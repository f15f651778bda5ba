"""Type-check every ``python`` code block of the documentation with mypy.

The pages are README.md and every ``docs/**/*.md`` page, or the files and globs
given as arguments. Each block becomes a module of a temporary package and mypy
checks them all in one run, against the package in this repository. An error is
reported at its page and line: ``docs/options.md:123: error: ...``. The exit
status is 0 when every block passes, 1 when one does not, 2 when the check
itself could not run (or a file or glob names no page).

A block is checked with ``mypy --strict``. An HTML comment on the line just
before its opening fence can say otherwise, among ``;``-separated items:

    <!-- typecheck: snippet -->   strict, except that functions and decorators may be untyped
    <!-- typecheck: skip -->      not checked (a fragment that is not a module)

Third-party packages a recipe uses (celery, gunicorn, django, structlog) are
checked against when installed and treated as untyped when not, so the check
runs in an environment without them.

    python scripts/check_readme_types.py [FILE_OR_GLOB ...]
"""

from __future__ import annotations

import argparse
import ast
import glob
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "readme_blocks"
DEFAULT_PAGES = ("README.md", "docs/**/*.md")
PROFILES = ("strict", "snippet", "skip")
UNTYPED_THIRD_PARTY = ("celery", "kombu", "billiard", "gunicorn", "django", "structlog")

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\s`]*)")
DIRECTIVE = re.compile(r"^\s*<!--(?P<body>.*?)-->\s*$")
ERROR = re.compile(r"^(?P<path>[^:]+\.py):(?P<line>\d+):(?P<rest>.*)$")


@dataclass
class Block:
    """One fenced code block: where it starts, its language, its code and its directives."""

    fence_line: int  # 1-based line of the opening fence on its page
    language: str
    code: str
    directives: Dict[str, str]
    page: str = ""  # the page's name in reports: its path from the repository root

    @property
    def module(self) -> str:
        # A module name per block, unique across pages: the page's path, then the line.
        stem = re.sub(r"\W", "_", self.page).strip("_") or "page"
        return f"{stem}_block_{self.fence_line:05d}"

    @property
    def profile(self) -> str:
        return self.directives.get("typecheck", "strict")


def parse_directives(line: str) -> Dict[str, str]:
    """``<!-- recipe: x; typecheck: snippet -->`` -> ``{"recipe": "x", "typecheck": "snippet"}``."""
    match = DIRECTIVE.match(line)
    if match is None:
        return {}
    found: Dict[str, str] = {}
    for item in match.group("body").split(";"):
        key, sep, value = item.partition(":")
        if sep:
            found[key.strip().lower()] = value.strip()
    return found


def fenced_blocks(text: str) -> List[Block]:
    """Every fenced code block of a Markdown text, with the directives just before it."""
    lines = text.splitlines()
    blocks: List[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening.group("fence")
        start = index
        body: List[str] = []
        index += 1
        while index < len(lines):
            closing = FENCE.match(lines[index])
            if (
                closing is not None
                and closing.group("fence")[0] == fence[0]
                and len(closing.group("fence")) >= len(fence)
                and not closing.group("info")
            ):
                break
            body.append(lines[index])
            index += 1
        index += 1  # past the closing fence
        before = lines[start - 1] if start > 0 else ""
        blocks.append(
            Block(
                fence_line=start + 1,
                language=opening.group("info").lower(),
                code=textwrap.dedent("\n".join(body)) + "\n",
                directives=parse_directives(before),
            )
        )
    return blocks


def python_blocks(text: str, page: str = "") -> List[Block]:
    found = [b for b in fenced_blocks(text) if b.language in ("python", "py", "python3")]
    for block in found:
        block.page = page
    return found


def page_name(path: Path) -> str:
    """A page's path from the repository root (or as given, outside it)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def expand(patterns: Sequence[str], base: Path) -> Tuple[List[Path], List[str]]:
    """The files that the paths and globs name (relative ones from ``base``), each once,
    and the patterns that named none."""
    found: Dict[Path, None] = {}
    unmatched: List[str] = []
    for pattern in patterns:
        anchored = pattern if Path(pattern).is_absolute() else str(base / pattern)
        if glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(anchored, recursive=True))]
        else:
            matches = [Path(anchored)] if Path(anchored).is_file() else []
        if not matches:
            unmatched.append(pattern)
        found.update(dict.fromkeys(m.resolve() for m in matches if m.is_file()))
    return list(found), unmatched


def mypy_config(blocks: Sequence[Block]) -> str:
    snippets = [f"{PACKAGE}.{b.module}" for b in blocks if b.profile == "snippet"]
    sections = [
        "[mypy]",
        "strict = True",
        "warn_unused_configs = False",
        "show_error_codes = True",
        f"mypy_path = {ROOT}",
        "",
        # The package itself has its own strict check; here it is only the API the blocks call.
        "[mypy-segmentio_logging.*]",
        "follow_imports = silent",
        "",
        "[mypy-" + ",".join(f"{name}.*" for name in UNTYPED_THIRD_PARTY) + "]",
        "ignore_missing_imports = True",
        "",
    ]
    if snippets:
        sections += [
            "[mypy-" + ",".join(snippets) + "]",
            "disallow_untyped_defs = False",
            "disallow_incomplete_defs = False",
            "disallow_untyped_calls = False",
            "disallow_untyped_decorators = False",
            "",
        ]
    return "\n".join(sections)


Finding = Tuple[str, int, str]  # (page, line on it, message); line 0: not tied to a line


def check(pages: Sequence[Path], mypy: Sequence[str]) -> int:
    blocks: List[Block] = []
    for path in pages:
        blocks += python_blocks(path.read_text(encoding="utf-8"), page_name(path))
    findings: List[Finding] = []
    for block in blocks:
        if block.profile not in PROFILES:
            message = f"error: unknown typecheck profile {block.profile!r}"
            findings.append((block.page, block.fence_line, message))
    if findings:
        return finish(findings, 0, 0, len(pages))
    checked: List[Block] = []
    for block in blocks:
        if block.profile == "skip":
            continue
        # mypy stops at the first syntax error of any module: find those block by block.
        try:
            ast.parse(block.code, filename=block.module)
        except SyntaxError as exc:
            where = block.fence_line + (exc.lineno or 1)
            message = f"error: {exc.msg}  [syntax]  (block at line {block.fence_line})"
            findings.append((block.page, where, message))
            continue
        checked.append(block)
    skipped = sum(b.profile == "skip" for b in blocks)
    if checked:
        status, output, errors = run_mypy(checked, mypy)
        found = mypy_findings(output, {b.module: b for b in checked})
        if status not in (0, 1) or (status == 1 and not any(is_error(m) for *_, m in found)):
            print(output, end="")
            print(errors, end="", file=sys.stderr)
            print(f"mypy could not check the blocks (exit status {status})", file=sys.stderr)
            return 2
        findings += found
    return finish(findings, len(blocks) - skipped, skipped, len(pages))


def run_mypy(blocks: Sequence[Block], mypy: Sequence[str]) -> Tuple[int, str, str]:
    """Write the blocks as modules of one package and run mypy once on it."""
    with tempfile.TemporaryDirectory(prefix="readme-types-") as tmp:
        work = Path(tmp)
        package = work / PACKAGE
        package.mkdir()
        (package / "__init__.py").write_text("")
        for block in blocks:
            (package / f"{block.module}.py").write_text(block.code, encoding="utf-8")
        config = work / "mypy.ini"
        config.write_text(mypy_config(blocks))
        command = [
            *mypy,
            "--config-file",
            str(config),
            "--cache-dir",
            str(work / ".mypy_cache"),
            "--no-error-summary",
            "--hide-error-context",
            "--no-pretty",
            "-p",
            PACKAGE,
        ]
        run = subprocess.run(command, cwd=work, capture_output=True, text=True)
    return run.returncode, run.stdout, run.stderr


def mypy_findings(output: str, by_module: Dict[str, Block]) -> List[Finding]:
    """mypy's lines, each moved to its page and line."""
    found: List[Finding] = []
    for line in output.splitlines():
        match = ERROR.match(line)
        block = None if match is None else by_module.get(Path(match.group("path")).stem)
        if match is None or block is None:
            if line.strip():
                found.append(("", 0, line.strip()))
            continue
        where = block.fence_line + int(match.group("line"))
        message = match.group("rest").strip()
        note = f"(block at line {block.fence_line}, {block.profile})"
        found.append((block.page, where, f"{message}  {note}"))
    return found


def is_error(message: str) -> bool:
    return message.startswith("error:") or " error:" in message


def finish(findings: List[Finding], checked: int, skipped: int, pages: int) -> int:
    for page, line, message in sorted(findings, key=lambda item: item[:2]):
        print(f"{page}:{line}: {message}" if line else message)
    errors = sum(is_error(message) for *_, message in findings)
    summary = f"{checked} python blocks checked, {skipped} skipped, in {pages} "
    summary += "page" if pages == 1 else "pages"
    if errors:
        print(f"{errors} errors; {summary}")
        return 1
    print(f"no errors; {summary}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Type-check the python blocks of the documentation with mypy."
    )
    parser.add_argument(
        "pages",
        nargs="*",
        metavar="FILE_OR_GLOB",
        help="Markdown files or globs (** spans folders); default: "
        + " ".join(DEFAULT_PAGES)
        + ", from the repository root",
    )
    parser.add_argument(
        "--mypy",
        default=f"{sys.executable} -m mypy",
        help="the command that runs mypy (default: this Python's mypy)",
    )
    args = parser.parse_args(argv)
    if args.pages:
        pages, unmatched = expand(args.pages, Path.cwd())
    else:
        pages, unmatched = expand(DEFAULT_PAGES, ROOT)
    if unmatched:
        print(f"no Markdown file matches {', '.join(unmatched)}", file=sys.stderr)
        return 2
    return check(pages, args.mypy.split())


if __name__ == "__main__":
    sys.exit(main())
