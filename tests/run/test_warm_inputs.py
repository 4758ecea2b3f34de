"""A warm parent notices every input that a cold start would read differently, or the job starts cold.

Each test runs jobs through one warm pool, changes something a fresh `ansible-playbook`
reads when it starts (a module, a folder of the path, the environment made at start-up,
`ansible.cfg`, OpenSSL's configuration), and holds the next warm job to a cold one run
right after it.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
import trio

from ansible_worker.ops.metrics import WorkerMetrics
from ansible_worker.run.process.launch import ProcessStarter
from ansible_worker.run.process.process_group import run_process_group
from tests.conftest import ANSIBLE_PLAYBOOK
from tests.run.warm_runs import (
    PROBE,
    PROBE_FILTER,
    Runs,
    base_environment,
    debug_tree,
    open_pool,
    playbook_script,
    suite_packages,
    system_python,
    wait_for_path,
)

# -- a module rewritten while the parent imports it ----------------------------------------------------

SLOW_MODULE = """
import os
import time

# Loaded after `marker`: holds the import until the test has rewritten it.
open({importing!r}, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists({go!r}) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


async def test_a_module_rewritten_while_the_parent_imports_it_is_not_what_a_job_gets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    library = tmp_path / "library"
    library.mkdir()
    (library / "marker.py").write_text("WHERE = 'the first text'\n")
    (library / "slow_module.py").write_text(
        SLOW_MODULE.format(importing=str(tmp_path / "importing"), go=str(tmp_path / "go"))
    )
    script = playbook_script(tmp_path, imports=("marker", "slow_module"))
    tree = debug_tree(tmp_path / "tree", PROBE, {"filter_plugins/probe.py": PROBE_FILTER.format(module="marker")})
    # No bytecode written beside the modules: the folder itself stays as it was.
    env = base_environment(PYTHONPATH=str(library), PYTHONDONTWRITEBYTECODE="1")
    runs = Runs(tmp_path, script, tree, env)
    metrics = WorkerMetrics()
    starts: list[ProcessStarter] = []
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_pool(metrics) as pool:
            async with trio.open_nursery() as nursery:

                async def start() -> None:
                    starts.append(await runs.starter(pool))

                nursery.start_soon(start)
                await wait_for_path(tmp_path / "importing")
                # An upgrade in place: the parent has loaded the old text, the file now holds the new one.
                (library / "marker.py").write_text("WHERE = 'the second, longer text'\n")
                (tmp_path / "go").touch()
            warm = await runs.run(starts[0])
            cold = await runs.run()
    assert cold[0] == 0, cold[1]
    assert "marker from the second, longer text" in cold[1]
    assert warm == cold
    assert metrics.cold_starts == 1
    assert any("cold start:" in r.getMessage() and "marker.py" in r.getMessage() for r in caplog.records)


# -- folders of the path that appear after the parent started -----------------------------------------


@pytest.mark.parametrize("where", ["user site", "folder named by a .pth file"])
async def test_a_folder_of_the_path_that_appears_later_reaches_warm_jobs(tmp_path: Path, where: str) -> None:
    # The system Python itself (not a virtual environment), as the image runs Ansible: its user
    # site is on. The suite's packages come first on PYTHONPATH.
    python = system_python()
    packages = suite_packages(tmp_path / "packages")
    script = playbook_script(tmp_path, python=python)
    home = tmp_path / "home"
    home.mkdir()
    user_site = home / ".local" / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    later = tmp_path / "later"
    if where == "user site":
        folder = user_site
    else:
        user_site.mkdir(parents=True)
        (user_site / "later.pth").write_text(f"# a folder made later\n{later}\n")
        folder = later
    tree = debug_tree(tmp_path / "tree", PROBE, {"filter_plugins/probe.py": PROBE_FILTER.format(module="later_probe")})
    env = base_environment(HOME=str(home), PYTHONPATH=str(packages))
    runs = Runs(tmp_path, script, tree, env)
    metrics = WorkerMetrics()
    async with open_pool(metrics) as pool:
        before = await runs.run(await runs.starter(pool))
        # As `pip install --user` (or a package that a .pth file names) makes it, between two jobs.
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "later_probe.py").write_text(f"WHERE = {where!r}\n")
        warm, cold = await runs.warm_and_cold(pool)
    assert before[0] == 0, before[1]
    assert "later_probe missing" in before[1]
    assert metrics.warm_starts >= 1
    assert cold[0] == 0, cold[1]
    assert f"later_probe from {where}" in cold[1]
    assert warm == cold


# -- the environment made at start-up -----------------------------------------------------------------

ENVIRONMENT_PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.command: printenv COMPANY_CA_BUNDLE
      register: module
      failed_when: false
    - ansible.builtin.debug:
        msg: "controller={{ lookup('env', 'COMPANY_CA_BUNDLE') }} module={{ module.stdout }}"
"""


async def test_an_environment_changed_at_start_up_means_a_cold_start_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    # As a base image's sitecustomize does: point every Python program at the company's CA bundle.
    (site / "sitecustomize.py").write_text(
        "import os\nos.environ['COMPANY_CA_BUNDLE'] = '/etc/ssl/certs/company-ca.pem'\n"
    )
    tree = debug_tree(tmp_path / "tree", "unused")
    (tree / "pb.yml").write_text(ENVIRONMENT_PLAYBOOK)
    runs = Runs(tmp_path, ANSIBLE_PLAYBOOK, tree, base_environment(PYTHONPATH=str(site)))
    metrics = WorkerMetrics()
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_pool(metrics) as pool:
            start = await runs.starter(pool)
            warm = await runs.run(start)
            cold = await runs.run()
    assert cold[0] == 0, cold[1]
    assert "controller=/etc/ssl/certs/company-ca.pem module=/etc/ssl/certs/company-ca.pem" in cold[1]
    assert warm == cold
    assert start is run_process_group
    assert any(
        "cold start:" in r.getMessage() and "COMPANY_CA_BUNDLE" in r.getMessage() and "environment" in r.getMessage()
        for r in caplog.records
    )


async def test_the_locale_python_sets_as_it_starts_reaches_warm_jobs(tmp_path: Path) -> None:
    tree = debug_tree(tmp_path / "tree", "LC_CTYPE={{ lookup('env', 'LC_CTYPE') }}")
    # No locale at all: the interpreter coerces the C locale to UTF-8, and says so in LC_CTYPE.
    env = {name: value for name, value in base_environment().items() if not name.startswith(("LANG", "LC_"))}
    runs = Runs(tmp_path, ANSIBLE_PLAYBOOK, tree, env)
    metrics = WorkerMetrics()
    async with open_pool(metrics) as pool:
        warm, cold = await runs.warm_and_cold(pool)
    assert cold[0] == 0, cold[1]
    assert "LC_CTYPE=C.UTF-8" in cold[1] or "LC_CTYPE=C.utf8" in cold[1]
    assert warm == cold
    assert metrics.warm_starts == 1


# -- the configuration file Ansible reads --------------------------------------------------------------

TIMEOUT = "timeout={{ lookup('config', 'DEFAULT_TIMEOUT') }}"


@pytest.mark.parametrize(
    ("setting", "variable"),
    [("$CONFIG_FOLDER/ansible.cfg", "CONFIG_FOLDER"), ("~/ansible.cfg", "HOME")],
)
async def test_ansible_config_is_found_with_the_jobs_own_environment(
    tmp_path: Path, setting: str, variable: str
) -> None:
    folder = tmp_path / "configuration"
    folder.mkdir()
    config = folder / "ansible.cfg"
    config.write_text("[defaults]\ntimeout = 7\n")
    tree = debug_tree(tmp_path / "tree", TIMEOUT)
    # The worker's own environment has neither the variable nor this HOME: the job's has.
    env = base_environment(ANSIBLE_CONFIG=setting, **{variable: str(folder)})
    runs = Runs(tmp_path, ANSIBLE_PLAYBOOK, tree, env)
    metrics = WorkerMetrics()
    async with open_pool(metrics) as pool:
        first = await runs.run(await runs.starter(pool))
        config.write_text("[defaults]\ntimeout = 9\n")
        warm, cold = await runs.warm_and_cold(pool)
    assert "timeout=7" in first[1]
    assert "timeout=9" in cold[1]
    assert warm == cold
    assert metrics.warm_starts == 2


SLOW_SITE = """
import os
import time

open({importing!r}, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists({go!r}) and time.monotonic() < deadline:
    time.sleep(0.01)
"""


async def test_a_configuration_changed_while_the_parent_starts_is_not_what_a_job_gets(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    # Holds every interpreter at its start until the test lets it go (at once, once it has).
    (site / "sitecustomize.py").write_text(
        SLOW_SITE.format(importing=str(tmp_path / "importing"), go=str(tmp_path / "go"))
    )
    tree = debug_tree(tmp_path / "tree", TIMEOUT)
    config = tree / "ansible.cfg"
    config.write_text("[defaults]\ntimeout = 7\n")
    runs = Runs(tmp_path, ANSIBLE_PLAYBOOK, tree, base_environment(PYTHONPATH=str(site)))
    metrics = WorkerMetrics()
    starts: list[ProcessStarter] = []
    async with open_pool(metrics) as pool:
        async with trio.open_nursery() as nursery:

            async def start() -> None:
                # The key holds the first text; the parent reads the second.
                starts.append(await runs.starter(pool))

            nursery.start_soon(start)
            await wait_for_path(tmp_path / "importing")
            config.write_text("[defaults]\ntimeout = 9\n")
            (tmp_path / "go").touch()
        # Back to the text of the key: a job with it must get it.
        config.write_text("[defaults]\ntimeout = 7\n")
        warm = await runs.run(starts[0])
        cold = await runs.run()
    assert "timeout=7" in cold[1]
    assert warm == cold


# -- OpenSSL's configuration ---------------------------------------------------------------------------

OPENSSL_MAIN = """openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
{legacy_line}[default_sect]
activate = 1
{legacy_section}"""
LEGACY_LINE = "legacy = legacy_sect\n"
LEGACY_SECTION = "[legacy_sect]\nactivate = 1\n"


def openssl_config(legacy: bool) -> str:
    return OPENSSL_MAIN.format(
        legacy_line=LEGACY_LINE if legacy else "", legacy_section=LEGACY_SECTION if legacy else ""
    )


@pytest.mark.parametrize("changed", ["the file", "a file it includes"])
async def test_a_changed_openssl_configuration_reaches_warm_jobs(tmp_path: Path, changed: str) -> None:
    main = tmp_path / "openssl.cnf"
    if changed == "the file":
        target = main
    else:
        target = tmp_path / "openssl.d" / "providers.cnf"
        target.parent.mkdir()
        main.write_text(f".include {target.parent}\n")
    target.write_text(openssl_config(legacy=False))
    tree = debug_tree(tmp_path / "tree", "{{ 'abc' | hash('md4') }}")
    runs = Runs(tmp_path, ANSIBLE_PLAYBOOK, tree, base_environment(OPENSSL_CONF=str(main)))
    metrics = WorkerMetrics()
    async with open_pool(metrics) as pool:
        before = await runs.run(await runs.starter(pool))
        # A crypto policy that allows the legacy algorithms.
        target.write_text(openssl_config(legacy=True))
        warm, cold = await runs.warm_and_cold(pool)
    assert before[0] != 0
    assert "a448017aaf21d8525fc10ae87aa6729d" in cold[1]
    assert warm == cold


# -- a shared library replaced as a package manager replaces it ----------------------------------------

LIBRARY_USER = """
import ctypes

# Loaded when the script imports it, as an extension module loads the library it links.
ZLIB = ctypes.CDLL({library!r})
WHERE = ZLIB.zlibVersion
WHERE.restype = ctypes.c_char_p
WHERE = "zlib " + WHERE().decode()
"""


def system_zlib() -> Path:
    """The zlib this interpreter has mapped (every CPython links or loads it)."""
    import zlib  # noqa: F401 - maps the library, so that /proc names its file

    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if "/libz.so" in path and Path(path).is_file():
            return Path(path)
    pytest.skip("this interpreter maps no libz.so")


async def test_a_shared_library_replaced_after_the_parent_loaded_it_means_a_cold_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    libraries = tmp_path / "lib"
    libraries.mkdir()
    library = libraries / "libz-copy.so.1"
    library.write_bytes(system_zlib().read_bytes())
    # A file changed while the parent imports counts as changed (its clock ticks coarsely): let
    # the library's change time fall clearly before the parent starts.
    changed_at = library.stat().st_ctime_ns
    with trio.fail_after(10):
        while time.time_ns() < changed_at + 100_000_000:  # noqa: ASYNC110 - waiting on the clock
            await trio.sleep(0.02)
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "library_user.py").write_text(LIBRARY_USER.format(library=str(library)))
    script = playbook_script(tmp_path, imports=("library_user",))
    tree = debug_tree(tmp_path / "tree", PROBE, {"filter_plugins/probe.py": PROBE_FILTER.format(module="library_user")})
    env = base_environment(PYTHONPATH=str(modules), PYTHONDONTWRITEBYTECODE="1")
    runs = Runs(tmp_path, script, tree, env)
    metrics = WorkerMetrics()
    with caplog.at_level(logging.INFO, logger="ansible_worker.run.warm.pool"):
        async with open_pool(metrics) as pool:
            before = await runs.run(await runs.starter(pool))
            # An upgrade: the new file is written beside the old one and renamed over it.
            (libraries / "new").write_bytes(library.read_bytes())
            (libraries / "new").rename(library)
            warm, cold = await runs.warm_and_cold(pool)
    assert before[0] == 0, before[1]
    assert metrics.warm_starts == 1
    assert warm == cold
    assert metrics.cold_starts == 1
    assert any("cold start:" in r.getMessage() and str(library) in r.getMessage() for r in caplog.records)
