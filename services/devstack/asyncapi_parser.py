"""The AsyncAPI project's own parser (npm ``@asyncapi/parser``), to check ``forgeline schema``'s document.

It is installed once into ``<cache>/asyncapi-parser-<version>/`` with npm (Debian's ``nodejs`` and
``npm`` are installed with apt-get when missing), the way a non-Python team would validate it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from services.devstack.errors import DevStackError, Progress
from services.devstack.host import ensure_commands, exclusive_lock, run_streaming

PARSER_VERSION = "3.6.6"

# The parser's diagnostics, one JSON object a line; severity 0 is an error (Spectral's scale).
_CHECK_SCRIPT = """
const { Parser, fromFile } = require(process.argv[1]);
(async () => {
  const { diagnostics } = await fromFile(new Parser(), process.argv[2]).parse();
  for (const d of diagnostics) {
    console.log(JSON.stringify({ severity: d.severity, code: String(d.code), message: d.message,
                                 path: d.path.join('.') }));
  }
})().catch((error) => { console.error(error && error.stack || String(error)); process.exit(2); });
"""


@dataclass(frozen=True)
class Diagnostic:
    severity: int  # 0 error, 1 warning, 2 information, 3 hint
    code: str
    message: str
    path: str

    @property
    def is_error(self) -> bool:
        return self.severity == 0

    def __str__(self) -> str:
        return f"{self.code} at {self.path or '(document)'}: {self.message}"


def ensure_parser(cache_dir: Path, progress: Progress) -> Path:
    """The installed parser package's folder, installing node, npm and the parser first if needed."""
    ensure_commands({"node": "nodejs", "npm": "npm"}, progress)
    prefix = cache_dir.expanduser() / f"asyncapi-parser-{PARSER_VERSION}"
    package = prefix / "node_modules" / "@asyncapi" / "parser"
    with exclusive_lock(prefix.with_suffix(".lock"), progress=progress,
                        waiting="another process is installing the AsyncAPI parser; waiting…"):
        if not (package / "package.json").is_file():
            progress(f"installing @asyncapi/parser@{PARSER_VERSION} from npm into {prefix} (once)…")
            prefix.mkdir(parents=True, exist_ok=True)
            try:
                # --ignore-scripts: the parser needs no install step (one dependency's is usage telemetry).
                run_streaming([shutil.which("npm") or "npm", "install", "--prefix", str(prefix), "--ignore-scripts",
                               "--no-audit", "--no-fund", "--loglevel=http", f"@asyncapi/parser@{PARSER_VERSION}"],
                              progress=progress, heartbeat="npm install", log_path=prefix / "npm-install.log")
            except DevStackError as exc:
                raise DevStackError(f"cannot install the AsyncAPI parser from the npm registry: {exc}") from exc
    installed = json.loads((package / "package.json").read_text())["version"]
    if installed != PARSER_VERSION:
        raise DevStackError(f"{package} holds @asyncapi/parser {installed}, not {PARSER_VERSION}; delete {prefix}")
    return package


def check_document(path: Path, cache_dir: Path, progress: Progress) -> list[Diagnostic]:
    """Every diagnostic the AsyncAPI parser reports for the document at ``path``."""
    package = ensure_parser(cache_dir, progress)
    node = shutil.which("node") or "node"
    done = subprocess.run([node, "-e", _CHECK_SCRIPT, str(package), str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise DevStackError(f"the AsyncAPI parser crashed on {path}: {done.stderr.strip()[-2000:]}")
    return [Diagnostic(**json.loads(line)) for line in done.stdout.splitlines() if line.startswith("{")]
