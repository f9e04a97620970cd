"""The wheel as a user installs it: built from the sources, installed into a new venv outside the
checkout (its dependencies from ``.venv/wheelhouse``, which ``bin/setup tests`` fills: the suite
runs offline), run by that venv's ``twistd`` from a directory that is not the checkout."""

from __future__ import annotations

import atexit
import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from epcscf.config import SECTIONS
from tests.support.daemon import TWISTED_NOISE, Daemon, register_alice, write_daemon_config
from tests.support.processes import TOP, VENV_BIN, run, wait_for

WHEELHOUSE = os.path.join(TOP, ".venv", "wheelhouse")
#: what a fresh clone holds after bin/setup; the rest of the checkout is not the package's business
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", "_trial_temp*", ".trial-output.log", "var"
)


def user_env() -> dict[str, str]:
    """The environment of a user's shell: nothing pointing into the checkout, no pip settings."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def check(argv: list[str], cwd: str) -> str:
    result = subprocess.run(argv, cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stdout}{result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class Installation:
    wheel: str
    venv: str
    #: the directory the tests run things from: neither the checkout nor the wheel's sources
    elsewhere: str

    @property
    def python(self) -> str:
        return os.path.join(self.venv, "bin", "python")

    @property
    def twistd(self) -> str:
        return os.path.join(self.venv, "bin", "twistd")


@functools.cache
def installation() -> Installation:
    """Build and install once per run (~15 s), in a temporary directory removed at exit."""
    top = tempfile.mkdtemp(prefix="epcscf-wheel-")
    atexit.register(shutil.rmtree, top, True)
    sources = os.path.join(top, "src")
    shutil.copytree(TOP, sources, ignore=NOT_SOURCES)
    # A dropin cache left by running twistd in a checkout must not ship: twistd rewrites it
    # for the installed plugins.
    with open(os.path.join(sources, "twisted", "plugins", "dropin.cache"), "wb") as handle:
        handle.write(b"stale")
    dist = os.path.join(top, "dist")
    python = os.path.join(VENV_BIN, "python")
    check([python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, sources], top)
    [wheel] = glob.glob(os.path.join(dist, "epcscf-*.whl"))
    venv = os.path.join(top, "venv")
    check([sys.executable, "-m", "venv", "--without-pip", venv], top)
    install = ["install", "-q", "--no-index", "--no-compile", "--find-links", WHEELHOUSE, wheel]
    check([python, "-m", "pip", "--python", os.path.join(venv, "bin", "python"), *install], top)
    elsewhere = os.path.join(top, "elsewhere")
    os.makedirs(elsewhere)
    return Installation(wheel, venv, elsewhere)


class InstalledWheelTests(unittest.TestCase):
    def setUp(self) -> None:
        self.installed = installation()

    def test_wheel_holds_every_package_the_page_and_the_plugin_and_nothing_of_the_checkout(self) -> None:
        names = zipfile.ZipFile(self.installed.wheel).namelist()
        packages = {os.path.dirname(name) for name in names if name.endswith("/__init__.py")}
        on_disk = {
            os.path.relpath(directory, os.path.join(TOP))
            for directory, _, files in os.walk(os.path.join(TOP, "epcscf"))
            if "__init__.py" in files
        }
        self.assertEqual(packages, on_disk)
        self.assertIn("twisted/plugins/epcscf_plugin.py", names)
        for name in ("index.html", "style.css", "wic.js"):
            self.assertIn(f"epcscf/wwsf/static/{name}", names)
        self.assertIn("epcscf/wwsf/built/app.js", names)  # bin/setup built it before the wheel
        self.assertIn("epcscf-0.1.0.data/data/etc/epcscf/epcscf.ini", names)
        self.assertIn("epcscf-0.1.0.data/data/share/epcscf/epcscf.service", names)
        self.assertIn("epcscf-0.1.0.data/data/share/doc/epcscf/README.md", names)  # the unit's Documentation=
        self.assertIn("epcscf-0.1.0.data/data/share/epcscf/examples/epcscf-production.ini", names)
        # twisted/plugins is a directory shared with Twisted's own plugins: no __init__.py of ours
        # (it would shadow Twisted's package), no cache, no bytecode.
        self.assertEqual([n for n in names if n.startswith("twisted/") and n != "twisted/plugins/epcscf_plugin.py"], [])
        self.assertEqual([n for n in names if "__pycache__" in n or n.endswith((".pyc", ".cache"))], [])

    async def test_config_reference_lists_every_section(self) -> None:
        installed = self.installed
        where = check([installed.python, "-c", "import epcscf, os; print(os.path.dirname(epcscf.__file__))"], installed.elsewhere)
        self.assertTrue(where.startswith(os.path.join(installed.venv, "lib")), where)
        out, err, code = await run([installed.twistd, "epcscf", "--config-reference"], user_env(), installed.elsewhere)
        self.assertEqual((code, err), (0, b""))
        sections = [line[1:-1] for line in out.decode().splitlines() if line.startswith("[")]
        self.assertEqual(sections, list(SECTIONS))

    async def test_daemon_serves_the_page_registers_a_wic_and_stops_on_sigterm(self) -> None:
        # The console's users file is the one the wheel installed with the default configuration.
        installed = self.installed
        manhole_users = os.path.join(installed.venv, "etc", "epcscf", "manhole.users")
        config = write_daemon_config(os.path.join(installed.elsewhere, "daemon"), manhole_users)
        daemon = Daemon.start(installed.twistd, config, installed.elsewhere, user_env())
        self.addCleanup(daemon.kill)
        url = await daemon.ws_url()
        self.assertIn(f"({installed.python} ", daemon.output)  # twistd's first line names its Python

        # The WWSF page and its script, from the installed package.
        await wait_for(lambda: "WWSF (the demo WebRTC client page) at http://" in daemon.output)
        page = daemon.output.split("WWSF (the demo WebRTC client page) at ", 1)[1].split("/,", 1)[0]
        from twisted.internet import reactor

        for path, needle in (("/", b"page-status"), ("/app.js", b"JsSIP")):
            response = await Agent(reactor).request(b"GET", (page + path).encode())
            body = await readBody(response)
            self.assertEqual(response.code, 200, path)
            self.assertIn(needle, body, path)

        self.assertEqual(await register_alice(url), 200)
        self.assertEqual(await daemon.stop(), (None, 15), daemon.output)
        self.assertIn("drained after", daemon.output)
        self.assertIn("Server Shut Down.", daemon.output)
        self.assertNotIn("Traceback", daemon.output)
        self.assertNotIn("error", daemon.output.lower())
        self.assertEqual([m.group(0) for m in TWISTED_NOISE.finditer(daemon.output)], [])
