"""Batch generation from a CSV manifest: one MP4 per row, resumable, spread over processes.

    moda batch manifest.csv --out DIR [--model pretrained/moda-base]
    # several processes or machines (rows split with accelerate's PartialState):
    accelerate launch --multi_gpu --num_processes 2 -m moda_hub.cli batch manifest.csv --out DIR

``--multi_gpu`` is what starts several processes (torchrun); on a machine without GPUs each
process then works on the CPU (``PartialState(cpu=True)``, gloo backend). ``accelerate launch
--cpu --num_processes 2`` starts only ONE process (accelerate's simple launcher; multi-CPU
there needs an MPI hostfile), so it is not a way to use two processes.

Manifest (CSV with a header row, UTF-8 or UTF-16 with a BOM, comma- or tab-separated; empty
cells take the option's default, and every option's range is the pipeline's (both in
:mod:`moda_hub.options`); a cell longer than :data:`MAX_CELL_CHARS` makes its row fail, naming the
row and the column; a file that is not text fails at once, naming the line):

==================  ===========================================================================
column              meaning
==================  ===========================================================================
image (required)    portrait file; relative paths are relative to the manifest's folder
audio | text        speech file, or text spoken by espeak-ng (exactly one per row)
seed                generator seed
fps                 25 or 30 (24, 50, 60 also work)
size                256 or 512 face crop, 0 = full image pasted back
still               1/true/yes: head and torso still
blink_rate          blinks per minute
head_motion_scale   head and torso motion amplitude
mouth_scale         lip motion amplitude
temperature         latent scale, 0 = mean motion
voice               espeak-ng voice for ``text``
speech_rate         words per minute for ``text``
face_index          which face, left to right
expression_scale    how much of the portrait's own expression is kept: 1 as photographed,
                    0 a neutral mouth and brows, up to 1.5
==================  ===========================================================================

Outputs in ``DIR``:

- ``{row:05d}_{image stem}_{audio stem or "text"}.mp4`` — row = 0-based data row of the CSV.
  Each MP4 is written to a temporary file and renamed into place when complete
  (:class:`moda_hub.video.Mp4Writer`), so a file that exists is whole.
- ``done.jsonl`` — one line per finished row: ``row``, ``output``, ``key`` (a hash of the row's
  settings, the model and the input files' size and mtime), ``seconds``, ``rank``.
  A row is skipped when its output exists and ``done.jsonl`` holds it with the same key, so
  running the same command again only does what is left (and redoes rows whose inputs or
  settings changed).
- ``errors.jsonl`` — the rows that failed in the last run: ``row``, ``output``, ``image``,
  ``audio``/``text``, ``error`` (class name), ``message``. A bad row never stops the batch;
  failed rows are tried again on the next run. When rows failed, the command ends with one
  ``error:`` line and exit status 2 after all other rows are done.

Ctrl-C stops the batch with one ``error:`` line (exit status 130): the row being made leaves no
file (its temporary file is removed), finished rows stay in ``done.jsonl``, and the same command
resumes where it stopped. ``--out`` must be a folder (or one that can be created): an existing
file there, or a folder that cannot be made, fails before any work.

Example::

    >>> from moda_hub.batch import run_batch
    >>> summary = run_batch("jobs.csv", "outputs/batch")       # doctest: +SKIP
    >>> summary.generated, summary.skipped, summary.failed      # doctest: +SKIP
    (3, 0, 0)
"""
from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .errors import InvalidParameterError, ModaError, OutputPathError
from .options import DEFAULT_MODEL, OPTIONS, SEED_RANGE, check_speech_source
from .output_paths import check_output_dir
from .pipeline import ModaPipeline

MANIFEST_COLUMNS = ("image", "audio", "text", "seed", "fps", "size", "still", "blink_rate",
                    "head_motion_scale", "mouth_scale", "temperature", "voice", "speech_rate",
                    "face_index", "expression_scale")
#: Longest manifest cell, characters (a text cell is also limited by espeak-ng's 10 000).
MAX_CELL_CHARS = 100_000
DONE_FILE = "done.jsonl"
ERRORS_FILE = "errors.jsonl"

_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off"}


def _to_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a yes/no value — use 1/0, true/false or yes/no")


# column -> (pipeline keyword, parser); an empty cell leaves the option at its default (moda_hub.options)
_COLUMN_OPTIONS = {"fps": "fps", "size": "output_size", "still": "still", "blink_rate": "blink_rate",
                   "head_motion_scale": "head_motion_scale", "mouth_scale": "mouth_scale",
                   "temperature": "temperature", "voice": "voice", "speech_rate": "speech_rate",
                   "face_index": "face_index", "expression_scale": "expression_scale"}
_PARSERS = {bool: _to_bool, type(None): int}
_CONTROLS: Dict[str, tuple] = {
    column: (name, _PARSERS.get(type(OPTIONS[name].default), type(OPTIONS[name].default)))
    for column, name in _COLUMN_OPTIONS.items()}


@dataclass
class BatchRow:
    """One manifest row, parsed.

    index: 0-based data row (the header is not counted). output: file name inside the output
    folder. image, audio: absolute paths (audio None when ``text`` is given). seed: generator
    seed. controls: keyword arguments of :class:`moda_hub.ModaPipeline` (fps, output_size, ...).
    problem: why the row cannot run (a parse error), else None.
    """
    index: int
    output: str
    image: str
    audio: Optional[str] = None
    text: Optional[str] = None
    seed: int = 0
    controls: Dict[str, object] = field(default_factory=dict)
    problem: Optional[str] = None

    def key(self, model: str) -> str:
        """Hash of everything that decides this row's video: settings, model and input files."""
        files = []
        for path in (self.image, self.audio):
            try:
                st = os.stat(path) if path else None
                files.append([st.st_size, st.st_mtime_ns] if st else None)
            except OSError:
                files.append(None)
        blob = json.dumps([self.image, self.audio, self.text, self.seed, self.controls, str(model), files],
                          sort_keys=True, default=str)
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


@dataclass
class BatchSummary:
    """Counts of one :func:`run_batch` call over all processes, and where the reports are."""
    rows: int
    generated: int
    skipped: int
    failed: int
    out_dir: str
    errors_path: str


def _stem(path: Optional[str], fallback: str) -> str:
    if not path:
        return fallback
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or fallback
    return stem[:40]


def read_manifest(path: str | os.PathLike) -> List[BatchRow]:
    """Parse a batch manifest (see the module docstring) into rows.

    A row that cannot be parsed (bad number, both or neither of audio/text, empty image) comes
    back with ``problem`` set, so the batch reports it and goes on.

    Raises:
        InvalidParameterError: the file is missing, has no ``image`` column or has unknown
            columns (a typo would otherwise be ignored silently).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InvalidParameterError(f"manifest {path!r} does not exist — give a CSV file with a header "
                                    "row (image, audio or text, ...)")
    base = os.path.dirname(os.path.abspath(path))
    text = _manifest_text(path)
    dialect = csv.excel_tab if "\t" in text.split("\n", 1)[0] else csv.excel   # spreadsheets' "Unicode Text"
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(max(previous_limit, 1 << 24))   # long cells are named per row below, not a csv error
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        unknown = [h for h in header if h and h not in MANIFEST_COLUMNS]
        if "image" not in header or unknown:
            what = f"unknown columns {unknown}" if unknown else "no 'image' column"
            raise InvalidParameterError(f"manifest {path!r} has {what} — use the columns "
                                        f"{', '.join(MANIFEST_COLUMNS)} (image and one of audio/text required)")
        raw_rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in rec.items() if k is not None}
                    for rec in reader]
    except csv.Error as err:
        raise InvalidParameterError(f"manifest {path!r}, line {reader.line_num}: {err} — save it again as CSV "
                                    f"(cells of at most {MAX_CELL_CHARS} characters)") from None
    finally:
        csv.field_size_limit(previous_limit)
    rows = []
    for i, rec in enumerate(raw_rows):
        def resolve(p):
            return os.path.normpath(os.path.join(base, os.path.expanduser(p))) if p else None
        image, audio, text = resolve(rec.get("image")), resolve(rec.get("audio")), rec.get("text") or None
        name = f"{i:05d}_{_stem(image, 'image')}_{_stem(audio, 'text' if text else 'speech')}.mp4"
        row = BatchRow(index=i, output=name, image=image or "", audio=audio, text=text)
        problems = [f"column {column}: the cell is {len(value)} characters long, more than {MAX_CELL_CHARS} — "
                    "shorten it" for column, value in rec.items() if len(value) > MAX_CELL_CHARS]
        problems += [f"column {column}: the cell holds a NUL character — remove it (the file may be binary, not "
                     "CSV)" for column, value in rec.items() if "\x00" in value]
        if not image:
            problems.append("the image cell is empty")
        try:
            check_speech_source(audio, text, none_message="give exactly one of audio or text",
                                both_message="give exactly one of audio or text")
        except InvalidParameterError as err:
            problems.append(str(err))
        try:
            row.seed = int(rec["seed"]) if rec.get("seed") else OPTIONS["seed"].default
            if not SEED_RANGE[0] <= row.seed <= SEED_RANGE[1]:
                raise ValueError(f"seed {row.seed} is out of range {SEED_RANGE[0]} .. 2**63-1")
        except ValueError as err:
            problems.append(f"seed: {err}")
        for column, (keyword, parse) in _CONTROLS.items():
            if rec.get(column):
                try:
                    row.controls[keyword] = parse(rec[column])
                except ValueError as err:
                    problems.append(f"{column}: {err}")
        row.problem = "; ".join(problems) or None
        if row.problem and len(row.problem) > 2000:
            row.problem = row.problem[:1999] + "…"
        rows.append(row)
    return rows


def _manifest_text(path: str) -> str:
    """The manifest as text: UTF-8 (with or without a BOM) or UTF-16 with a BOM (what spreadsheets
    write as "Unicode Text"). Anything else is refused with one line saying where it broke."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise InvalidParameterError(f"manifest {path!r} is not {encoding.replace('-sig', '')} text (line {line}, byte "
                                    f"{err.start}) — save it as 'CSV UTF-8' (or UTF-16 'Unicode Text')") from None


def _read_done(out_dir: str) -> Dict[str, str]:
    """output name -> key of the last finished run of that output."""
    done: Dict[str, str] = {}
    path = os.path.join(out_dir, DONE_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    done[rec["output"]] = rec["key"]
                except (ValueError, KeyError, TypeError):
                    continue   # a torn line from a killed run: that row is simply redone
    return done


def _append_line(path: str, record: dict) -> None:
    """Append one JSON line with a single write (O_APPEND), safe with several processes."""
    data = (json.dumps(record, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def run_batch(manifest: str | os.PathLike, out_dir: str | os.PathLike, model: Optional[str] = None,
              pipe=None, log: Callable[[str], None] = None) -> BatchSummary:
    """Generate one MP4 per manifest row into ``out_dir`` (see the module docstring).

    Args:
        manifest: the CSV file.
        out_dir: output folder (created).
        model (str, optional): pipeline folder or Hub id (default: the CLI's default model).
        pipe ([`ModaPipeline`], optional): an already loaded pipeline (then ``model`` only names it
            in the resume key).
        log (callable, optional): where progress lines go (default: print to stdout).

    Under ``accelerate launch`` every process runs this; the rows still to do are split between
    processes with ``PartialState().split_between_processes``.

    Returns:
        [`BatchSummary`] counted over all processes.

    Raises:
        InvalidParameterError: the manifest itself is unusable (nothing was generated).
        ModaError: after all other rows are done, when some rows failed (see ``errors.jsonl``);
            raised by the main process only (the others return the summary).
    """
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    prefix = f"[{rank}/{world}] " if world > 1 else ""
    emit = log or (lambda line: print(line, flush=True))

    def say(line):
        emit(prefix + line)

    out_dir = check_output_dir(out_dir)     # an existing file, an uncreatable folder: one line, before work
    rows = read_manifest(manifest)          # every process parses; a bad manifest stops all alike
    model = str(DEFAULT_MODEL if model is None else model)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create the output folder {out_dir!r} ({err.strerror}) — choose a folder "
                              "you can write to") from None

    # 1. what is left: decided by every process before any of them writes (barrier below)
    done = _read_done(out_dir)
    keys = {row.index: row.key(model) for row in rows}
    pending, skipped = [], 0
    for row in rows:
        if os.path.isfile(os.path.join(out_dir, row.output)) and done.get(row.output) == keys[row.index]:
            skipped += 1
        else:
            pending.append(row)
    rank_errors = os.path.join(out_dir, f".errors.rank{rank}.jsonl")
    if os.path.exists(rank_errors):
        os.remove(rank_errors)
    state.wait_for_everyone()
    if state.is_main_process and skipped:
        say(f"skipping {skipped} of {len(rows)} rows finished before (outputs and {DONE_FILE} agree)")

    # 2. this process's share
    generated, failed = 0, 0
    with state.split_between_processes(pending) as mine:
        if mine and pipe is None:
            pipe = ModaPipeline.from_pretrained(model)
            if state.device.type != "cpu":
                pipe = pipe.to(state.device)
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
        for k, row in enumerate(mine):
            target = os.path.join(out_dir, row.output)
            t0 = time.perf_counter()
            try:
                if row.problem:
                    raise InvalidParameterError(f"row {row.index}: {row.problem}")
                pipe(image=row.image, audio=row.audio, text=row.text,
                     generator=torch.Generator().manual_seed(row.seed), output_type="mp4",
                     output_path=target, **row.controls)
            except Exception as err:               # one bad row never stops the batch
                failed += 1
                message = str(err) or repr(err)
                _append_line(rank_errors, {"row": row.index, "output": row.output, "image": row.image,
                                           "audio": row.audio, "text": row.text,
                                           "error": type(err).__name__, "message": message})
                say(f"row {row.index} failed ({k + 1}/{len(mine)}): {type(err).__name__}: {message}")
                continue
            seconds = time.perf_counter() - t0
            _append_line(os.path.join(out_dir, DONE_FILE),
                         {"row": row.index, "output": row.output, "key": keys[row.index],
                          "seconds": round(seconds, 2), "rank": rank,
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            generated += 1
            say(f"row {row.index} -> {target} ({seconds:.1f} s, {k + 1}/{len(mine)})")

    # 3. one report for the run: merge the processes' error lines
    counts = gather_object([{"generated": generated, "failed": failed}])
    state.wait_for_everyone()
    errors_path = os.path.join(out_dir, ERRORS_FILE)
    if state.is_main_process:
        records = []
        for r in range(world):
            part = os.path.join(out_dir, f".errors.rank{r}.jsonl")
            if os.path.exists(part):
                with open(part, encoding="utf-8") as f:
                    records += [json.loads(line) for line in f if line.strip()]
                os.remove(part)
        records.sort(key=lambda rec: rec["row"])
        tmp = errors_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, default=str) + "\n")
        os.replace(tmp, errors_path)
    summary = BatchSummary(rows=len(rows), generated=sum(c["generated"] for c in counts), skipped=skipped,
                           failed=sum(c["failed"] for c in counts), out_dir=out_dir, errors_path=errors_path)
    if state.is_main_process:
        say(f"batch: {summary.rows} rows — {summary.generated} generated, {summary.skipped} skipped "
            f"(finished before), {summary.failed} failed")
    state.wait_for_everyone()
    if summary.failed and state.is_main_process:       # one error line, from the main process
        raise ModaError(f"{summary.failed} of {summary.rows} rows failed — see {errors_path}; fix them and "
                        "run the same command again (finished rows are skipped)")
    return summary


__all__ = ["BatchRow", "BatchSummary", "MANIFEST_COLUMNS", "read_manifest", "run_batch"]
