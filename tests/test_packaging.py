"""The installable package: pyproject.toml agrees with requirements.txt, the wheel holds every package and data file,
Beam's stager ships it to workers (`--extra_package`), no other installed distribution claims our import names, and
(slow tier) the wheel installed into a fresh venv runs `rocketctr spec synthetic` outside the checkout."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.stager import Stager
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
IMPORT_NAMES = ("common", "feature_specs", "pipeline", "models", "serving", "rocketctr")
PEER_ONLY = {"rocketctr/bench/quality/peer_deepctr.py"}  # runs in .venv-peer (requirements-peer.txt), never here
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def pins() -> dict[str, Requirement]:
    """requirements.txt: canonical name -> its exact pin."""
    out = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", \
                f"requirements.txt: {line!r} is not an exact pin (name==X.Y.Z)"
            out[canonicalize_name(req.name)] = req
    return out


def declared() -> dict[str, list[Requirement]]:
    """pyproject.toml: canonical name -> its requirements in dependencies and every extra (the self-reference of
    `test` to the other extras left out)."""
    out: dict[str, list[Requirement]] = {}
    lines = PYPROJECT["dependencies"] + [r for extra in PYPROJECT["optional-dependencies"].values() for r in extra]
    for line in lines:
        req = Requirement(line)
        if canonicalize_name(req.name) != "rocketctr":
            out.setdefault(canonicalize_name(req.name), []).append(req)
    return out


def test_every_pin_satisfies_pyproject_and_every_declared_dependency_is_pinned():
    have, want = pins(), declared()
    assert sorted(set(want) - set(have)) == [], "declared in pyproject.toml but not pinned in requirements.txt"
    assert sorted(set(have) - set(want)) == [], "pinned in requirements.txt but declared nowhere in pyproject.toml"
    for name, reqs in want.items():
        version = next(iter(have[name].specifier)).version
        for req in reqs:
            assert req.specifier.contains(version), f"{name}=={version} (requirements.txt) outside {req} (pyproject)"
            assert req.extras <= have[name].extras, f"{req}: extras {sorted(req.extras - have[name].extras)} not " \
                                                    f"installed by requirements.txt ({have[name]})"


def test_installed_versions_are_the_pins():
    """What CI installs is what this env has (so the other tests here judge the pinned set)."""
    for name, req in pins().items():
        assert md.version(req.name) == next(iter(req.specifier)).version, name


def test_peer_reference_is_never_a_dependency():
    assert "deepctr" not in declared() and "deepctr" not in pins()


def _third_party_imports() -> dict[str, str]:
    """Top-level module -> one file importing it, over the installed packages' sources (not tests)."""
    found: dict[str, str] = {}
    for pkg in IMPORT_NAMES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            if rel in PEER_ONLY:
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
                for top in (n.split(".")[0] for n in names):
                    if top not in IMPORT_NAMES and top not in sys.stdlib_module_names:
                        found.setdefault(top, rel)
    return found


def _closure(reqs: list[Requirement]) -> set[str]:
    """Installed distributions reached from `reqs` (with their extras), following the installed metadata."""
    seen: dict[str, set[str]] = {}  # distribution -> the extras already followed
    todo = [(r.name, set(r.extras)) for r in reqs]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and extras <= seen[key]:
            continue
        extras = seen[key] = seen.get(key, set()) | extras
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            r = Requirement(line)
            envs = [{"extra": e} for e in extras | {""}]
            if r.marker is None or any(r.marker.evaluate(env) for env in envs):
                todo.append((r.name, set(r.extras)))
    return set(seen)


def test_declared_dependencies_provide_every_third_party_import():
    reach = _closure([r for reqs in declared().values() for r in reqs])
    providers = md.packages_distributions()
    missing = {mod: f"{where} (provided by {providers.get(mod)})" for mod, where in _third_party_imports().items()
               if not {canonicalize_name(d) for d in providers.get(mod, [])} & reach}
    assert missing == {}, "imported but not reachable from pyproject.toml's dependencies"


def test_no_other_distribution_provides_our_import_names():
    """docs/ARCHITECTURE.md "Installed import names": the generic top-level names are kept; this is the check that
    they collide with nothing installed next to them."""
    providers = md.packages_distributions()
    others = {n: sorted(set(providers.get(n, [])) - {"rocketctr"}) for n in IMPORT_NAMES}
    assert {n: d for n, d in others.items() if d} == {}


# --- the wheel -------------------------------------------------------------------------------------------------


def _source_tree(dest: Path) -> Path:
    """A copy of the working tree's packaging inputs, so the build never writes build/ or *.egg-info into the
    checkout (and no stale build/lib from an earlier build can leak into the wheel)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for d in (*IMPORT_NAMES, "configs"):
        shutil.copytree(REPO / d, dest / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """dist/rocketctr-*.whl as `make wheel` builds it (offline: no build isolation, no index)."""
    src = _source_tree(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
                          cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = dist.glob("rocketctr-*.whl")
    return whl


def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(REPO)) for pkg in IMPORT_NAMES for p in (REPO / pkg).rglob("*.py")
                if "__pycache__" not in p.parts}
    expected |= {str(p.relative_to(REPO)) for p in (REPO / "feature_specs").glob("*.yaml")}
    assert sorted(expected - names) == []
    configs = {f"rocketctr-0.1.0.data/data/share/rocketctr/configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")}
    assert configs and sorted(configs - names) == []
    packages = {str(p.parent.relative_to(REPO)) for pkg in IMPORT_NAMES for p in (REPO / pkg).rglob("__init__.py")}
    assert {"common", "pipeline/preprocess", "pipeline/evaluate", "pipeline/simulator", "rocketctr/bench"} <= packages


def test_wheel_metadata_declares_the_dependencies_and_the_command(wheel):
    z = zipfile.ZipFile(wheel)
    meta = z.read("rocketctr-0.1.0.dist-info/METADATA").decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [str(Requirement(r)) for r in requires if Requirement(r).marker is None]
    assert sorted(runtime) == sorted(str(Requirement(r)) for r in PYPROJECT["dependencies"])
    extras = {line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Provides-Extra:")}
    assert extras == {"gcp", "dask", "bench", "test"}
    assert "rocketctr = rocketctr.cli:main" in z.read("rocketctr-0.1.0.dist-info/entry_points.txt").decode()
    assert set(z.read("rocketctr-0.1.0.dist-info/top_level.txt").decode().split()) == set(IMPORT_NAMES)


class LocalStager(Stager):
    """Beam's Stager with a local folder as the staging location (what Dataflow does with gs://.../staging)."""

    def stage_artifact(self, local_path_to_artifact, artifact_name, sha256=None):
        shutil.copyfile(local_path_to_artifact, artifact_name)

    def commit_manifest(self):
        return None


def stage_for_workers(wheel: Path, staging: Path, tmp: Path) -> list[str]:
    """The job resources Beam stages for `--extra_package WHEEL` (what every remote runner's workers install)."""
    staging.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    options = PipelineOptions([f"--extra_package={wheel}"])
    resources = Stager.create_job_resources(options, str(tmp), log_submission_env_dependencies=False)
    return LocalStager().stage_job_resources(list(Stager.extract_staging_tuple_iter(resources)), str(staging))


def test_beam_stager_ships_the_wheel_to_workers(wheel, tmp_path):
    staged = stage_for_workers(wheel, tmp_path / "staging", tmp_path / "tmp")
    assert sorted(staged) == sorted([wheel.name, "extra_packages.txt"])
    copy = tmp_path / "staging" / wheel.name
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert (tmp_path / "staging" / "extra_packages.txt").read_text().split() == [wheel.name]


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_runs_outside_the_checkout(wheel, tmp_path):
    """The STAGED wheel, installed with --no-deps into a new venv; the dependencies come from this env's
    site-packages through a plain path line (its .pth files, among them the editable install's finder that maps
    our packages to the checkout, are not executed), so every project module must come from the wheel."""
    staging = tmp_path / "staging"
    stage_for_workers(wheel, staging, tmp_path / "tmp")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps",
                           "--no-index", "--disable-pip-version-check", str(staging / wheel.name)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site_packages = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    (site_packages / "zz_rocketctr_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = subprocess.run(
        [str(py), "-c", "import importlib, sys; from rocketctr.shipped_configs import config_path; "
                        "mods = ['common.metrics', 'feature_specs.loader', 'pipeline.preprocess.preprocess_job', "
                        "'pipeline.evaluate.eval_job', 'pipeline.simulator.click_logs', 'pipeline.dask_runner', "
                        "'models.train', 'serving.export', 'rocketctr.cli']; "
                        "print('\\n'.join([importlib.import_module(m).__file__ for m in mods] + "
                        "[str(config_path('synthetic'))]))"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=600)
    assert where.returncode == 0, where.stderr[-3000:]
    files = where.stdout.split()
    assert len(files) == 10 and all(f.startswith(str(venv)) for f in files), files
    spec = subprocess.run([str(venv / "bin" / "rocketctr"), "spec", "synthetic"], cwd=outside, env=env,
                          capture_output=True, text=True, timeout=600)
    assert spec.returncode == 0, spec.stdout[-2000:] + spec.stderr[-3000:]
    assert "synthetic" in spec.stdout and "user_id" in spec.stdout
