"""docs/api.md's TypeScript compiles with `tsc --strict`, against types generated from the
app's own OpenAPI document, the way its "Typed client" section says to generate them.

Needs the Node project in .ci/ts (`npm ci` there: TypeScript, openapi-typescript and
openapi-fetch at the versions the docs give). Skipped where it is not installed, unless
REQUIRE_TSC=1 (CI sets it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks_api import create_app
from tasks_api.config import Settings
from tests.support import ROOT, SECRET

PROJECT = ROOT / ".ci" / "ts"
BIN = PROJECT / "node_modules" / ".bin"
PAGE = (ROOT / "docs" / "api.md").read_text()
TYPED_CLIENT = PAGE.split("## Typed client\n", 1)[1].split("\n## ", 1)[0]
TS_BLOCKS = re.findall(r"^```ts\n(.*?)^```", PAGE, re.M | re.S)

if shutil.which("node") is None or not (BIN / "tsc").exists():
    if os.environ.get("REQUIRE_TSC") == "1":
        raise RuntimeError("REQUIRE_TSC=1 but .ci/ts is not installed: run `npm ci` in .ci/ts")
    pytest.skip(
        "docs/api.md's TypeScript is not compiled: needs Node and `npm ci` in .ci/ts",
        allow_module_level=True,
    )

# Generated types are real: a wrong field is an error (tsc fails if it is not).
CANARY = """import type { components } from "./api";
// @ts-expect-error: `more` is a boolean
export const wrong: components["schemas"]["Changes"]["more"] = "no";
"""


def commands() -> list[list[str]]:
    (block,) = re.findall(r"^```sh\n(.*?)^```", TYPED_CLIENT, re.M | re.S)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_docs_pin_the_versions_ci_compiles_with() -> None:
    installed = {
        name: json.loads((PROJECT / "node_modules" / name / "package.json").read_text())["version"]
        for name in ("typescript", "openapi-typescript", "openapi-fetch")
    }
    pinned = {}
    for command in commands():
        if command[:2] == ["npm", "i"]:
            for spec in command[2:]:
                if not spec.startswith("-"):
                    name, version = spec.rsplit("@", 1)
                    pinned[name] = version
    assert pinned == installed
    assert installed["typescript"].startswith("5.")  # openapi-typescript 7 needs ^5.x


def test_every_ts_block_of_docs_api_compiles_strictly_against_the_generated_types(
    tmp_path: Path,
) -> None:
    assert len(TS_BLOCKS) >= 2  # the typed client, the sync loop
    app = create_app(Settings.from_env({"AUTH_JWT_SECRET": SECRET}), instance_path=str(tmp_path))
    document = tmp_path / "openapi.json"
    document.write_bytes(app.test_client().get("/openapi.json").get_data())
    (tmp_path / "node_modules").symlink_to(PROJECT / "node_modules")
    # The docs' generator command, on this document instead of a running server's.
    (generate,) = [c for c in commands() if c[:2] == ["npx", "openapi-typescript"]]
    generate = [str(BIN / generate[1]), str(document), *generate[3:]]
    source = tmp_path / "src"
    source.mkdir()
    generated = subprocess.run(generate, cwd=tmp_path, capture_output=True, text=True)
    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert (source / "api.d.ts").exists()
    for number, block in enumerate(TS_BLOCKS):
        (source / f"block{number}.ts").write_text(block)
    (source / "canary.ts").write_text(CANARY)
    (tmp_path / "tsconfig.json").write_text(
        json.dumps({"extends": str(PROJECT / "tsconfig.json"), "include": ["src"]})
    )

    result = subprocess.run(
        [str(BIN / "tsc"), "-p", "tsconfig.json", "--strict", "--listFiles"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    checked = {Path(line).name for line in result.stdout.splitlines()}
    assert {f"block{n}.ts" for n in range(len(TS_BLOCKS))} | {"canary.ts"} <= checked
