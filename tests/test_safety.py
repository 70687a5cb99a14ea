"""Safety: weights only from safetensors, no remote code, no shell, outputs only where asked.

Source scans walk the syntax tree of every Python file we ship or run (the package, app.py,
scripts/, benchmarks/), so comments and strings that merely mention a name do not count and
a call cannot hide behind formatting. Behaviour tests back the scans up: a booby-trapped
pickle next to the weights is never opened, text with shell syntax is only ever spoken, and
every writer keeps to its folder.
"""
from __future__ import annotations

import ast
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.joinpath("moda_hub").rglob("*.py"), ROOT / "app.py",
                  *ROOT.joinpath("scripts").glob("*.py"), *ROOT.joinpath("benchmarks").glob("*.py")])
SUBPROCESS_CALLS = {f"subprocess.{f}" for f in ("run", "Popen", "call", "check_call", "check_output")}


def _trees():
    for path in SOURCES:
        yield path.relative_to(ROOT), ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _dotted(node) -> str:
    """'torch.load' for Attribute(Name('torch'), 'load'); '' when not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _calls():
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                yield rel, node, _dotted(node.func)


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_the_scan_sees_the_whole_package():
    names = {str(p) for p, _ in _trees()}
    assert {"moda_hub/pipeline.py", "moda_hub/weights.py", "moda_hub/speech/audio.py", "moda_hub/video.py",
            "app.py"} <= names
    assert len(names) >= 30


# ---------------------------------------------------------------------------------- weights
def test_no_pickle_based_loading_anywhere():
    found = []
    for rel, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{rel}:{node.lineno} imports {m}" for m in mods
                          if m.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve")]
    for rel, call, name in _calls():
        where = f"{rel}:{call.lineno}"
        if name in ("torch.load", "torch.serialization.load", "pickle.load", "pickle.loads", "dill.load",
                    "joblib.load", "pd.read_pickle", "pandas.read_pickle"):
            found.append(f"{where} calls {name}")
        if name.endswith("load") and _is_true(_kw(call, "allow_pickle")):
            found.append(f"{where} calls {name}(allow_pickle=True)")
        for flag in ("use_safetensors", "safe_serialization"):
            value = _kw(call, flag)
            if isinstance(value, ast.Constant) and value.value is False:
                found.append(f"{where} passes {flag}=False")
    assert found == []


def test_remote_code_is_never_trusted():
    found = [f"{rel}:{call.lineno} {name}({kw.arg}=...)" for rel, call, name in _calls() for kw in call.keywords
             if kw.arg in ("trust_remote_code", "custom_pipeline", "custom_revision")]
    assert found == []
    for rel, call, name in _calls():
        assert name not in ("eval", "exec", "compile", "__import__"), f"{rel}:{call.lineno} calls {name}"


def test_shipped_weights_are_safetensors_only():
    model = ROOT / "pretrained" / "moda-base"
    if not (model / "model_index.json").is_file():
        pytest.skip("no trained pipeline at pretrained/moda-base — run `make train`")
    files = [p.relative_to(model) for p in model.rglob("*") if p.is_file()]
    assert all(p.suffix in (".json", ".safetensors", ".md") for p in files), files
    assert any(p.suffix == ".safetensors" for p in files)


class _Trap:
    """Unpickling this creates ``marker`` — proof that a pickle was opened."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_pipeline(folder: Path) -> Path:
    from moda_hub import FacialComposer, ModaModel, ModaPipeline, WarpRenderer
    torch.manual_seed(0)
    ModaPipeline(moda=ModaModel(dim=16, n_heads=2, n_layers=1), composer=FacialComposer(hidden=16, n_layers=1),
                 renderer=WarpRenderer()).save_pretrained(str(folder))
    return folder


def test_a_booby_trapped_pickle_next_to_the_weights_is_never_opened(tmp_path):
    from moda_hub import ModaPipeline, WeightsError

    folder = _tiny_pipeline(tmp_path / "pipe")
    marker = tmp_path / "pwned"
    for component in ("moda", "composer"):
        for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin", "model.ckpt"):
            with open(folder / component / name, "wb") as f:
                pickle.dump({"weight": _Trap(str(marker))}, f)
    ModaPipeline.from_pretrained(str(folder))                  # loads the safetensors ...
    assert not marker.exists()                                 # ... and never the pickles
    (folder / "composer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(WeightsError, match="never loaded"):    # only a pickle: refused
        ModaPipeline.from_pretrained(str(folder))
    assert not marker.exists()


@pytest.mark.parametrize("option", [{"trust_remote_code": True}, {"custom_pipeline": "evil"},
                                    {"use_safetensors": False}])
def test_loading_options_that_run_code_are_refused(option, tmp_path):
    from moda_hub import InvalidParameterError, ModaPipeline

    folder = _tiny_pipeline(tmp_path / "pipe")
    with pytest.raises(InvalidParameterError, match="not supported"):
        ModaPipeline.from_pretrained(str(folder), **option)


# ---------------------------------------------------------------------------------- shell
def _assignments(tree) -> dict:
    """name -> every value assigned to it (=, +=) anywhere in the module."""
    out: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, []).append(node.value)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and isinstance(node.target, ast.Name) \
                and node.value is not None:
            out.setdefault(node.target.id, []).append(node.value)
    return out


def _is_argument_list(node, assigned, depth=0) -> bool:
    """True when ``node`` builds a list of arguments (never one command string)."""
    if depth > 5:
        return False
    if isinstance(node, (ast.List, ast.Tuple, ast.ListComp)):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _is_argument_list(node.left, assigned, depth + 1) and _is_argument_list(node.right, assigned, depth + 1)
    if isinstance(node, ast.Name) and node.id in assigned:
        return all(_is_argument_list(v, assigned, depth + 1) for v in assigned[node.id])
    return False


def test_no_shell_anywhere_and_commands_are_argument_lists():
    problems = []
    for rel, tree in _trees():
        assigned = _assignments(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            where = f"{rel}:{node.lineno}"
            if _kw(node, "shell") is not None and not (isinstance(_kw(node, "shell"), ast.Constant)
                                                       and _kw(node, "shell").value is False):
                problems.append(f"{where} passes shell=...")
            if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                        "os.execl", "os.execlp", "os.spawnl", "pty.spawn"):
                problems.append(f"{where} calls {name}")
            if name in SUBPROCESS_CALLS:
                if not node.args or not _is_argument_list(node.args[0], assigned):
                    problems.append(f"{where} {name} is not given an argument list")
    assert problems == []


def test_text_with_shell_syntax_is_only_spoken(tmp_path):
    from moda_hub.speech.audio import synthesize_speech
    from moda_hub.errors import TextToSpeechError

    marker = tmp_path / "pwned"
    text = f'Hi"; touch {marker}; echo "$(touch {marker})" `touch {marker}` | touch {marker} && done'
    try:
        wav = synthesize_speech(text, voice="en-us")
    except TextToSpeechError as err:
        pytest.skip(f"espeak-ng is not usable here: {err}")
    assert len(wav) > 16000 and not marker.exists()


# ---------------------------------------------------------------------------------- where outputs go
def _tree_of(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _isolated_folders(tmp_path, monkeypatch):
    """(out, cwd, tmp) folders: the test runs in cwd with tmp as the system temp dir."""
    out_dir, work, tmp = tmp_path / "out", tmp_path / "cwd", tmp_path / "tmp"
    for d in (out_dir, work, tmp):
        d.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return out_dir, work, tmp


def test_the_video_writer_works_only_inside_the_destination_folder(tmp_path, monkeypatch):
    from moda_hub.video import Mp4Writer

    out_dir, work, tmp = _isolated_folders(tmp_path, monkeypatch)
    frames = np.zeros((10, 32, 32, 3), np.uint8)
    with Mp4Writer(out_dir / "clip.mp4", fps=10, audio=np.zeros(16000, np.float32), preset="ultrafast") as w:
        w.write(frames)
        during = _tree_of(out_dir)
        assert during and all(p.startswith(".moda-") for p in during), during   # hidden, next to it
    assert _tree_of(out_dir) == {"clip.mp4"}
    assert _tree_of(work) == set() and _tree_of(tmp) == set()


def test_batch_outputs_are_plain_names_inside_the_output_folder(tmp_path):
    from moda_hub.batch import read_manifest

    manifest = tmp_path / "jobs.csv"
    hostile = ["../../../etc/passwd", "/abs/olute/face.png", "a/b/../../../up.jpg", "..", ".hidden.png",
               "$(touch pwned).png", "semi;colon|pipe&.jpg", "new\nline.png", "ünïcödé 照片.png", "x" * 300]
    lines = ["image,audio,text"] + [f'"{name}",,"hello"' for name in hostile] + ['face.png,"../../../../tmp/s.wav",']
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out_dir = tmp_path / "out"
    rows = read_manifest(manifest)
    assert len(rows) == len(hostile) + 1
    for row in rows:
        assert os.sep not in row.output and "/" not in row.output and not row.output.startswith("."), row.output
        assert "\n" not in row.output and row.output.endswith(".mp4") and len(row.output) < 120
        target = os.path.realpath(out_dir / row.output)
        assert os.path.dirname(target) == os.path.realpath(out_dir)


def test_space_request_folders_stay_under_the_output_root(tmp_path):
    from moda_hub.space import OutputStore

    store = OutputStore(str(tmp_path / "root"), ttl_seconds=3600, max_kept=3)
    made = [store.new_request_dir() for _ in range(5)]
    root = os.path.realpath(tmp_path / "root")
    assert all(os.path.dirname(os.path.realpath(d)) == root for d in made)
    assert sorted(os.listdir(tmp_path)) == ["root"]


def test_pipeline_writes_only_the_requested_file(tmp_path, monkeypatch):
    model = ROOT / "pretrained" / "moda-base"
    if not (model / "model_index.json").is_file():
        pytest.skip("no trained pipeline at pretrained/moda-base — run `make train`")
    import skimage.data

    from moda_hub import ModaPipeline

    pipe = ModaPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    out_dir, work, tmp = _isolated_folders(tmp_path, monkeypatch)
    out = pipe(image=skimage.data.astronaut(), text="Just this file.", output_size=256, fps=25,
               output_path=str(out_dir / "only.mp4"))
    assert out.video_path == str(out_dir / "only.mp4")
    assert _tree_of(out_dir) == {"only.mp4"} and _tree_of(work) == set() and _tree_of(tmp) == set()
