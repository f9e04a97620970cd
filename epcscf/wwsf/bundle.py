"""Build the page's script: ``static/wic.js`` and JsSIP (from ``node_modules``) → ``app.js``.

The WWSF serves a single script, bundled by esbuild; nothing of JsSIP is copied into the
repository.  ``bin/setup`` runs ``python -m epcscf.wwsf.bundle``, which builds into the
package itself (``epcscf/wwsf/built/``, git-ignored): a wheel built afterwards ships the
script as package data, so an installed package serves the page with no Node at all.
Tests build into a temporary directory the same way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from epcscf.wwsf.site import BUNDLE_NAME, STATIC

__all__ = ["BundleError", "ENTRY", "BUNDLE_NAME", "default_bundle_dir", "esbuild_command", "build_bundle"]

ENTRY = STATIC / "wic.js"
#: the checkout this package runs from (the default place of node_modules)
CHECKOUT = Path(__file__).resolve().parents[2]
#: where ``bin/setup`` builds the script and where a wheel carries it (setup.cfg package_data)
BUILT = Path(__file__).resolve().parent / "built"
#: browsers with RTCPeerConnection.getStats() promises, RTCDtlsTransport and AudioContext
TARGETS = "chrome100,firefox100,safari15"


class BundleError(Exception):
    """esbuild is missing or failed; ``str()`` says what to do."""


def default_bundle_dir() -> str:
    return str(BUILT)


def esbuild_command(output_dir: str, node_modules: str | None = None) -> list[str]:
    modules = Path(node_modules) if node_modules else CHECKOUT / "node_modules"
    return [
        str(modules / ".bin" / "esbuild"),
        str(ENTRY),
        "--bundle",
        "--format=iife",
        f"--target={TARGETS}",
        # Not minified: people read the demo's source.  JsSIP and its dependencies are MIT.
        "--banner:js=/* epcscf WWSF page script, built by esbuild: wic.js + JsSIP (MIT, https://jssip.net) from node_modules */",
        "--log-level=warning",
        f"--outfile={Path(output_dir) / BUNDLE_NAME}",
    ]


def build_bundle(output_dir: str, node_modules: str | None = None) -> str:
    """Bundle into ``output_dir``; the path of the script.  Raises ``BundleError``."""
    command = esbuild_command(output_dir, node_modules)
    if not os.access(command[0], os.X_OK):
        raise BundleError(f"{command[0]} not found: run npm ci (bin/setup does) to install esbuild and JsSIP")
    modules = str(Path(command[0]).parent.parent)
    env = dict(os.environ, NODE_PATH=modules)  # esbuild resolves bare imports through NODE_PATH too
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise BundleError(f"esbuild failed ({result.returncode}): {result.stderr.strip()}")
    return str(Path(output_dir) / BUNDLE_NAME)


def main(argv: list[str]) -> int:
    if len(argv) > 2 or (argv and argv[0] in ("-h", "--help")):
        print("usage: python -m epcscf.wwsf.bundle [OUTPUT_DIR [NODE_MODULES]]", file=sys.stderr)
        return 2
    output_dir = argv[0] if argv else default_bundle_dir()
    try:
        path = build_bundle(output_dir, argv[1] if len(argv) > 1 else None)
    except BundleError as error:
        print(f"wwsf bundle: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
