"""`moda` command line: generate | prepare | train | evaluate.

Errors a user can act on are printed as one line (``error: ...``) with a non-zero exit
status; ``--debug`` shows the full traceback instead. Third-party log lines (MediaPipe's
``W0000``/``I0000``, TensorFlow Lite's ``INFO``, diffusers) are kept off stderr unless
``--verbose`` (:mod:`moda_hub.native_logs`).
"""
from __future__ import annotations

import argparse
import os
import sys

from .batch import run_batch
from .errors import InvalidParameterError, ModaError
from .evaluation import add_arguments as add_evaluate_arguments
from .evaluation import run as run_evaluation
from .native_logs import filter_native_stderr
from .options import DEFAULT_MODEL, OPTIONS, GenerateOptions
from .output_paths import LANDMARKS, VIDEO, StagedOutputs, check_outputs
from .pipeline import ModaPipeline

DEFAULTS = GenerateOptions()


def _option(p, name: str, flag: str = None, **kwargs) -> None:
    """``--name`` for the user option ``name``: type, default and help from :mod:`moda_hub.options`."""
    spec = OPTIONS[name]
    extra = f" ({spec.range[0]:g} to {spec.range[1]:g})" if spec.range and spec.range[1] is not None else \
        (f" ({', '.join(map(str, spec.choices))})" if spec.choices else "")
    kwargs.setdefault("type", type(spec.default) if spec.default is not None else int)
    p.add_argument(flag or "--" + name.replace("_", "-"), default=spec.default, help=spec.help + extra, **kwargs)


def _add_generate(sub):
    p = sub.add_parser("generate", help="animate a portrait with speech or text")
    p.add_argument("--image", required=True, help="portrait image file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="speech file (wav, mp3, m4a, flac, ogg, webm, or a video)")
    src.add_argument("--text", help="text spoken by espeak-ng")
    p.add_argument("--out", default="outputs/moda.mp4",
                   help="output MP4 path (.mp4 or .m4v); an existing MP4 there is replaced, any other file only "
                        "with --overwrite; never an input file, a device, FIFO or a link into another folder")
    p.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder or Hub id")
    for name in ("seed", "temperature", "fps"):
        _option(p, name)
    _option(p, "output_size", "--size", dest="output_size")
    for name in ("mouth_scale", "head_motion_scale", "blink_rate"):
        _option(p, name)
    p.add_argument("--still", action="store_true", default=DEFAULTS.still, help=OPTIONS["still"].help)
    for name in ("face_index", "expression_scale", "voice", "speech_rate"):
        _option(p, name)
    p.add_argument("--landmarks", help="also save landmarks and motion to this .npz (written together with the "
                                       "video: both appear, or neither)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing file at --out / --landmarks even when it is not a video / .npz")


def _generate(args):
    import numpy as np
    import torch
    from tqdm.auto import tqdm


    # cheap checks first: a bad seed, rate or output path fails before the weights load
    lo, hi = OPTIONS["seed"].range
    if not lo <= args.seed <= hi:
        raise InvalidParameterError(f"--seed {args.seed} is out of range — use {lo} .. 2**63-1")
    lo, hi = OPTIONS["speech_rate"].range
    if args.text is not None and not lo <= args.speech_rate <= hi:
        raise InvalidParameterError(f"--speech-rate {args.speech_rate} is out of range — use {lo} to "
                                    f"{hi} words per minute (default {DEFAULTS.speech_rate})")
    outputs = check_outputs({VIDEO: args.out, LANDMARKS: args.landmarks}, inputs=(args.image, args.audio),
                            overwrite=args.overwrite)
    pipe = ModaPipeline.from_pretrained(args.model)
    bar = tqdm(total=100, desc="moda", unit="%", disable=None)

    def progress(stage, fraction):
        bar.set_description(stage)
        bar.update(int(fraction * 100) - bar.n)

    pipe.set_progress_bar_config(disable=True)
    with StagedOutputs() as staged:          # every output appears together, or none does
        out = pipe(image=args.image, audio=args.audio, text=args.text, voice=args.voice,
                   speech_rate=args.speech_rate, generator=torch.Generator().manual_seed(args.seed),
                   temperature=args.temperature, mouth_scale=args.mouth_scale,
                   head_motion_scale=args.head_motion_scale, blink_rate=args.blink_rate, still=args.still,
                   fps=args.fps, face_index=args.face_index, expression_scale=args.expression_scale,
                   output_size=args.output_size, output_type="mp4",
                   output_path=staged.stage(outputs[VIDEO], ".mp4"), callback=progress)
        bar.close()
        if LANDMARKS in outputs:
            with open(staged.stage(outputs[LANDMARKS], ".npz"), "wb") as f:
                np.savez_compressed(f, landmarks=out.landmarks, fps=out.fps, **out.motion)
        staged.commit()
    print(outputs[VIDEO])


def _add_prepare(sub):
    p = sub.add_parser("prepare", help="build training data")
    psub = p.add_subparsers(dest="what", required=True)
    s = psub.add_parser("synthetic", help="synthetic espeak-ng speech-motion corpus")
    s.add_argument("--hours", type=float, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    v = psub.add_parser("video", help="a folder of real talking videos -> renderer and stage-1/2 training data "
                                      "(resumable)")
    v.add_argument("--in", dest="inputs", nargs="+", required=True, help="video folder(s) or files")
    v.add_argument("--out", required=True, help="dataset folder")
    v.add_argument("--crop-size", type=int, default=256, help="stored face crop side, px")
    v.add_argument("--val-fraction", type=float, default=0.2, help="share of videos held out for validation")
    v.add_argument("--val-count", type=int, default=None, help="hold out exactly this many videos instead")
    v.add_argument("--min-span", type=float, default=1.0, help="shortest face span kept, seconds")
    v.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")


def _prepare(args):
    # corpus and training code is loaded only by these commands: `moda generate` runs without it
    from .data.synthetic import build_corpus
    from .data.video_dataset import list_videos, prepare_videos

    if args.what == "synthetic":
        build_corpus(args.out, hours=args.hours, seed=args.seed, workers=args.workers)
    elif args.what == "video":
        fraction = args.val_fraction
        if args.val_count is not None:
            fraction = args.val_count / max(1, len(list_videos(args.inputs)))
        prepare_videos(args.inputs, args.out, crop_size=args.crop_size, val_fraction=fraction, seed=args.seed,
                       min_span_s=args.min_span)


def _add_train(sub):
    p = sub.add_parser("train", help="train a stage (runs under `accelerate launch` too)")
    p.add_argument("--stage", choices=["moda", "composer", "renderer"], required=True)
    p.add_argument("--data", required=True, help="corpus folder (moda prepare synthetic | video)")
    p.add_argument("--out", required=True, help="output folder for the component (renderer: a run folder "
                                                "with renderer/ and the personal pipeline/)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", default=None, help="start from this pipeline or component folder "
                                                "(e.g. pretrained/moda-base to fine-tune on real video)")
    p.add_argument("--lip-input", choices=["all", "phones", "phones+energy", "phones+bands"], default=None,
                   help="--stage moda from scratch: what the lips hear (pretrained/moda-base: phones+bands; "
                        "default all)")
    p.add_argument("--features", choices=["logmel", "logmel+phones", "logmel+phones+opening", "whisper-tiny"],
                   default=None, help="--stage moda from scratch: what stage 1 hears (pretrained/moda-base: "
                                      "whisper-tiny, the audio encoder's states; default logmel+phones+opening)")
    p.add_argument("--ema-decay", type=float, default=None,
                   help="--stage moda: save a moving average of the weights with this decay per step "
                        "(pretrained/moda-base: 0.998; default: the last step's weights)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: moda/composer all cores over the processes, renderer its CPU default)")
    r = p.add_argument_group("renderer (--stage renderer; defaults depend on CPU/GPU)")
    r.add_argument("--base", default=DEFAULT_MODEL, help="stages 1-2 of the personal pipeline written "
                                                        "to <out>/pipeline ('' = none)")
    r.add_argument("--pipeline-out", default=None, help="where the personal pipeline goes")
    r.add_argument("--image-size", type=int, default=None, help="network crop side, px (CPU 128, GPU 256)")
    r.add_argument("--batch-size", type=int, default=None)
    r.add_argument("--base-channels", type=int, default=None)
    r.add_argument("--gan-weight", type=float, default=None, help="patch discriminator weight (CPU 0, GPU 0.05)")


def _train(args):
    from .training import train_stage

    if args.threads is not None and args.threads < 1:
        raise InvalidParameterError(f"--threads {args.threads} — use 1 or more torch threads")
    options = {"threads": args.threads}
    if args.ema_decay is not None:
        if args.stage != "moda" or not 0.0 <= args.ema_decay < 1.0:
            raise InvalidParameterError(f"--ema-decay {args.ema_decay} — give --stage moda a decay in [0, 1), "
                                        "e.g. 0.998")
        options["ema_decay"] = args.ema_decay
    if args.lip_input:
        if args.stage != "moda" or args.init:
            raise InvalidParameterError("--lip-input applies to --stage moda trained from scratch (without --init); "
                                        "a fine-tuned model keeps the lip input of the model it starts from")
        options["lip_input"] = args.lip_input
    if args.features:
        if args.stage != "moda" or args.init:
            raise InvalidParameterError("--features applies to --stage moda trained from scratch (without --init); "
                                        "a fine-tuned model keeps the features of the model it starts from")
        options["features"] = args.features
    if args.stage == "renderer":
        options.update(base=args.base or None, pipeline_out=args.pipeline_out, image_size=args.image_size,
                       batch_size=args.batch_size, base_channels=args.base_channels, gan_weight=args.gan_weight)
    train_stage(args.stage, args.data, args.out, minutes=args.minutes, steps=args.steps, seed=args.seed,
                init=args.init, **options)


def _add_evaluate(sub):
    add_evaluate_arguments(sub.add_parser("evaluate", help="lip-sync and motion metrics; prints a table, writes JSON"))


def _evaluate(args):
    run_evaluation(args)


def _add_batch(sub):
    p = sub.add_parser("batch", help="one MP4 per manifest row; resumable; runs under `accelerate launch` too")
    p.add_argument("manifest", help="CSV: image, audio or text, optional seed, fps, size, still, blink_rate, "
                                    "head_motion_scale, mouth_scale, temperature, voice, speech_rate, face_index, "
                                    "expression_scale")
    p.add_argument("--out", required=True, help="output folder (MP4s, done.jsonl, errors.jsonl)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder or Hub id")


def _batch(args):
    run_batch(args.manifest, args.out, model=args.model)


COMMANDS = {"generate": (_add_generate, _generate), "prepare": (_add_prepare, _prepare),
            "train": (_add_train, _train), "evaluate": (_add_evaluate, _evaluate),
            "batch": (_add_batch, _batch)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moda", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("--verbose", action="store_true",
                        help="show third-party log lines (MediaPipe, TensorFlow Lite, diffusers)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)
    if not args.verbose:   # stderr holds our progress and error lines, not library chatter
        filter_native_stderr()
    if not (args.debug or args.verbose):
        from diffusers.utils import logging as diffusers_logging
        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
    try:
        COMMANDS[args.command][1](args)
    except ModaError as err:
        if args.debug:
            raise
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)   # always one line
        return 2
    except KeyboardInterrupt:      # helper processes ignore Ctrl-C (own process group): one line, from here
        return _interrupted(args.command)
    except Exception as err:       # Ctrl-C inside a C extension's import comes back as an ImportError
        if args.debug or not _caused_by_ctrl_c(err):
            raise
        return _interrupted(args.command)
    return 0


def _interrupted(command: str) -> int:
    resume = " — run the same command again to resume (finished rows are skipped)" \
        if command == "batch" else " — nothing was written"
    print(f"error: interrupted{resume}", file=sys.stderr)
    return 130


def _caused_by_ctrl_c(err: BaseException) -> bool:
    """True when a KeyboardInterrupt is in ``err``'s chain (pybind11 turns one that lands in a
    module's initialisation, e.g. MediaPipe's, into ``ImportError: initialization failed``)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())
