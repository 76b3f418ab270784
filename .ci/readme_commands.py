"""Print the shell commands of the bash blocks in one section of README.md, one per line, so that
CI runs them exactly as a reader copies them: ``python .ci/readme_commands.py "Quick start" 2``
prints the second bash block of the section whose heading starts with "Quick start".
Comment-only lines are left out; a trailing ``# comment`` stays (the shell ignores it)."""
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(text: str, heading: str) -> str:
    match = re.search(rf"^(#+) {re.escape(heading)}.*$", text, flags=re.MULTILINE)
    if match is None:
        raise SystemExit(f"readme_commands: no section {heading!r} in {README}")
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{len(match.group(1))}}} ", rest, flags=re.MULTILINE)
    return rest[:end.start()] if end else rest


def bash_blocks(text: str):
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def main(heading: str, block: int) -> None:
    blocks = bash_blocks(section(README.read_text(encoding="utf-8"), heading))
    if not 1 <= block <= len(blocks):
        raise SystemExit(f"readme_commands: section {heading!r} has {len(blocks)} bash block(s), not {block}")
    for line in blocks[block - 1].splitlines():
        if line.strip() and not line.strip().startswith("#"):
            print(line)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
