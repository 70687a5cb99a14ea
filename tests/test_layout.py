"""One room per concern: options defined once, inference apart from corpus code, no import cycles,
prepared inputs reused by the Space."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moda_hub import batch, cli
from moda_hub.options import OPTIONS, GenerateOptions
from moda_hub.pipeline import ModaPipeline
from moda_hub.space.animate import AnimateOptions

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moda_hub"
MODEL = ROOT / "pretrained" / "moda-base"
needs_weights = pytest.mark.skipif(not (MODEL / "model_index.json").exists(), reason="no pretrained/moda-base")


# ---------------------------------------------------------------------------------- options
def _cli_actions():
    generate = cli.build_parser()._subparsers._group_actions[0].choices["generate"]
    return {a.dest: a for a in generate._actions}


def _app_widgets():
    """name -> the Space widget's (value, minimum, maximum / choices) as the page builds them."""
    gr = pytest.importorskip("gradio")
    import app

    from moda_hub.space import SpaceConfig

    demo = app.build_demo(pipe=None, cfg=SpaceConfig.from_env({}))
    fn = next(f for f in demo.fns.values() if f.api_name == "generate")
    names = list(inspect.signature(app.make_handlers(None, SpaceConfig.from_env({}), None)[0]).parameters)
    widgets = dict(zip(names, fn.inputs))
    assert isinstance(widgets["blink_rate"], gr.Slider)
    return widgets


def test_every_surface_reads_the_options_dataclass():
    fields = {f.name for f in dataclasses.fields(GenerateOptions)}
    assert set(OPTIONS) == fields and all(spec.help for spec in OPTIONS.values())
    defaults = GenerateOptions()
    # pipeline: __call__'s and prepare()'s signatures
    for method in (ModaPipeline.__call__, ModaPipeline.prepare):
        params = inspect.signature(method).parameters
        for name in fields - {"seed"} - ({"output_size"} if method is ModaPipeline.prepare else set()):
            assert params[name].default == getattr(defaults, name), (method.__name__, name)
    # CLI: `moda generate` flags
    actions = _cli_actions()
    for name in fields:
        assert actions[name].default == getattr(defaults, name), name
        if OPTIONS[name].help:
            assert OPTIONS[name].help in actions[name].help, name
    # batch: manifest columns parse into the option's type; an empty cell is the option's default
    assert {kw for kw, _ in batch._CONTROLS.values()} == fields - {"seed"}
    for column, (name, parse) in batch._CONTROLS.items():
        spec = OPTIONS[name]
        sample = spec.choices[-1] if spec.choices else (spec.range[0] if spec.range else "en-us")
        assert parse(str(sample)) == sample, column
    # Space: AnimateOptions and the page's widgets
    for name in fields - {"voice", "speech_rate"}:
        assert getattr(AnimateOptions(), name) == getattr(defaults, name), name


def test_every_range_is_the_options_range():
    from moda_hub.errors import InvalidParameterError

    ok = dict(fps=30, output_type="mp4", temperature=1.0, mouth_scale=1.0, head_motion_scale=1.0,
              blink_rate=17.0, output_size=None)
    for name in ("temperature", "mouth_scale", "head_motion_scale", "blink_rate", "expression_scale"):
        lo, hi = OPTIONS[name].range
        args = dict(ok)
        for value, good in ((lo, True), (hi, True), (hi + 0.01, False), (lo - 0.01, False)):
            if name == "expression_scale":
                call = lambda: ModaPipeline.check_inputs("a.wav", None, **args, expression_scale=value)  # noqa: E731
            else:
                args[name] = value
                call = lambda: ModaPipeline.check_inputs("a.wav", None, **args)  # noqa: E731
            if good:
                call()
            else:
                with pytest.raises(InvalidParameterError, match=name):
                    call()
    for fps in range(20, 70):
        args = dict(ok, fps=fps)
        if fps in OPTIONS["fps"].choices:
            ModaPipeline.check_inputs("a.wav", None, **args)
        else:
            with pytest.raises(InvalidParameterError):
                ModaPipeline.check_inputs("a.wav", None, **args)
    lo, hi = OPTIONS["speech_rate"].range
    ModaPipeline.check_inputs(None, "hi", **ok, speech_rate=hi)
    with pytest.raises(InvalidParameterError, match="speech_rate"):
        ModaPipeline.check_inputs(None, "hi", **ok, speech_rate=hi + 1)
    # the CLI refuses the same seed and speech rate before loading anything
    for argv, what in ((["--seed", str(OPTIONS["seed"].range[1] + 1)], "--seed"),
                       (["--text", "hi", "--speech-rate", str(lo - 1)], "--speech-rate")):
        argv = ["generate", "--image", "x.png"] + (["--audio", "a.wav"] if "--text" not in argv else []) + argv
        proc = subprocess.run([sys.executable, "-m", "moda_hub.cli", *argv], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
        assert proc.returncode == 2 and what in proc.stderr, proc.stderr


def test_the_space_page_shows_the_options_defaults_and_ranges():
    widgets = _app_widgets()
    defaults = GenerateOptions()
    for name in ("temperature", "mouth_scale", "head_motion_scale", "blink_rate", "expression_scale", "speech_rate"):
        w = widgets[name]
        assert w.value == getattr(defaults, name), name
        assert (w.minimum, w.maximum) == tuple(OPTIONS[name].range), name
    assert widgets["fps"].value == defaults.fps
    assert {v for _, v in widgets["fps"].choices} <= set(OPTIONS["fps"].choices)
    assert {v for _, v in widgets["output_size"].choices} - {-1} == set(OPTIONS["output_size"].choices)
    assert widgets["output_size"].value == -1 and defaults.output_size is None     # -1 = automatic
    assert widgets["still"].value == defaults.still and widgets["voice"].value == defaults.voice
    assert widgets["seed"].value == defaults.seed


# ---------------------------------------------------------------------------------- import graph
def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports():
    """module -> the package modules it imports anywhere (module level and inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    mod = ".".join(base[:len(base) - node.level + 1] + ([mod] if mod else []))
                subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
                # `from package import module` depends on the module, not on the package's __init__
                targets = subs + ([mod] if len(subs) < len(node.names) else [])
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def test_the_package_import_graph_has_no_cycles():
    graph = _package_imports()
    assert len(graph) > 50 and "moda_hub.speech.features" in graph["moda_hub.pipeline"]
    colour, cycles = {}, []

    def visit(node, stack):
        colour[node] = 1
        for dep in sorted(graph[node]):
            if colour.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in colour:
                visit(dep, stack + [dep])
        colour[node] = 2

    for node in sorted(graph):
        if node not in colour:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


_INFERENCE = r"""
import json, sys
import numpy as np, torch
import moda_hub
from moda_hub import ModaPipeline
pipe = ModaPipeline.from_pretrained(sys.argv[1])
out = pipe("examples/portrait.png", text="Hi.", output_type="landmarks", output_size=256,
           generator=torch.Generator().manual_seed(0))
print(json.dumps({"frames": len(out.landmarks),
                  "modules": sorted(m for m in sys.modules if m.startswith("moda_hub"))}))
"""


@needs_weights
def test_inference_never_imports_corpus_or_training_code():
    proc = subprocess.run([sys.executable, "-c", _INFERENCE, str(MODEL)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["frames"] > 0
    assert "moda_hub.motion.blinks" in report["modules"]            # the run did get to the blinks
    bad = [m for m in report["modules"] if m.startswith(("moda_hub.data", "moda_hub.training"))]
    assert not bad, bad


# ---------------------------------------------------------------------------------- the Space
@needs_weights
def test_a_four_variation_request_finds_the_face_and_computes_speech_features_once(tmp_path, monkeypatch):
    from moda_hub.face import subject as subject_module
    from moda_hub.speech import features as features_module

    space_animate = importlib.import_module("moda_hub.space.animate")   # (the package exports a function of that name)

    pipe = ModaPipeline.from_pretrained(str(MODEL))
    pipe.set_progress_bar_config(disable=True)
    calls = {"detect_faces": 0, "feature_table": 0, "encoder_windows": 0}
    real_detect, real_init = subject_module.detect_faces, features_module.FeatureTable.__init__
    real_encode = pipe.audio_encoder.encode

    def detect(*a, **k):
        calls["detect_faces"] += 1
        return real_detect(*a, **k)

    def init(self, *a, **k):
        calls["feature_table"] += 1
        real_init(self, *a, **k)

    def encode(*a, **k):
        calls["encoder_windows"] += 1
        return real_encode(*a, **k)

    monkeypatch.setattr(subject_module, "detect_faces", detect)
    monkeypatch.setattr(features_module.FeatureTable, "__init__", init)
    monkeypatch.setattr(pipe.audio_encoder, "encode", encode)
    wav = space_animate.load_speech(text="Hello there, one two three.")
    results = space_animate.animate(pipe, str(ROOT / "examples" / "portrait.png"), wav,
                                    AnimateOptions(seed=3, variations=4, output_size=256), str(tmp_path))
    assert [r.seed for r in results] == [3, 4, 5, 6]
    assert calls["detect_faces"] == 1 and calls["feature_table"] == 1
    one_clip = -(-len(wav) // (16000 * 8))                 # windows of one clip: 10 s windows, 2 s overlap
    assert 1 <= calls["encoder_windows"] <= one_clip, calls
    assert not np.array_equal(results[0].motion["head"], results[1].motion["head"])   # seeds still differ
    assert results[0].mesh_video_path and os.path.getsize(results[0].mesh_video_path) > 0
