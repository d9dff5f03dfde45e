"""The README's "Reliability" section, produced from the test suite's own counts.

Run ``python -m tests.reliability_report`` (``--slow`` also runs the slow SIGKILL tests, ``--no-run`` only counts,
``--write-readme`` replaces the README's section once the run passed). It counts the parametrised cases with
``pytest --collect-only -q`` and prints a markdown section with the number of bad inputs tried and faults injected.
The section holds counts only (no timings or pass counts that go stale); ``tests/test_reliability.py`` checks that the
README's copy matches.

Also holds :data:`REGISTRY`, filled by ``tests/test_reliability.py`` while it runs (case ids per category).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REGISTRY: dict[str, list[str]] = {"bad_input": [], "fault": []}
README = Path(__file__).resolve().parents[1] / "README.md"

FILES = [
    "tests/test_reliability.py",
    "tests/test_weights.py",
    "tests/test_training_core.py",
    "tests/test_readme_training.py",
]
SLOW_FILES = ["tests/test_training_ddp.py"]

# Test-name patterns (matched against node ids) -> category. Faults are injected errors (corrupt or foreign files,
# NaN losses, unreadable data, kills); bad inputs are refused or converted user arguments.
FAULT_PATTERNS = {
    "weight files (truncated, garbage, foreign kind / base family, NaN tensors, int32 / bool tensors, pickle, key / "
    "shape mismatches)": (
        r"test_reliability\.py::test_weight_fault|test_weights\.py::.*(truncat|garbage|missing_file|pickle"
        r"|validate_lists|family_and_kind)"
    ),
    "crash during save (atomic file / directory writes)": r"test_weights\.py::.*(failed_save|atomic)",
    "NaN loss mid-run": r"test_training_core\.py::.*nan_loss",
    "missing / unreadable dataset files": r"test_training_core\.py::.*(missing|unreadable)",
    "SIGKILL mid-step and mid-checkpoint, then resume (slow)": r"test_training_ddp\.py::.*kill",
}
BAD_INPUT_PATTERN = r"test_reliability\.py::test_bad_input"
# Not faults: float16 / bfloat16 weight files must load (cast); the shared checks' messages are checked directly.
HALF_PRECISION_PATTERN = r"test_reliability\.py::test_weight_half_precision_loads"
MESSAGE_PATTERN = r"test_reliability\.py::test_check_messages"


def record(kind: str, case_id: str) -> None:
    """Called by the reliability tests for every case they run."""
    REGISTRY.setdefault(kind, []).append(case_id)


def collect(files: list[str], marker: str | None) -> list[str]:
    """Node ids pytest collects for ``files`` (with ``-m marker``)."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files]
    if marker:
        cmd += ["-m", marker]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    return [line.strip() for line in out.splitlines() if "::" in line]


def run(files: list[str], marker: str | None) -> tuple[int, str]:
    """Run the tests; returns (exit code, pytest's summary line)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    if marker:
        cmd += ["-m", marker]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, (lines[-1].strip("= ") if lines else "no output")


def categorise(node_ids: list[str]) -> tuple[int, Counter]:
    bad_inputs = sum(1 for n in node_ids if re.search(BAD_INPUT_PATTERN, n))
    faults: Counter = Counter()
    for n in node_ids:
        for label, pattern in FAULT_PATTERNS.items():
            if re.search(pattern, n, flags=re.IGNORECASE):
                faults[label] += 1
                break
    return bad_inputs, faults


#: Bad-input tests by entry-point kind (the test name after ``test_bad_input``).
PIPELINE_TESTS = ("test_bad_input[", "test_bad_input_number[", "test_bad_input_zero_size_not_replaced[")
SCALE_TEST = "test_bad_input_scale["
CLI_TESTS = ("test_bad_input_cli[",)
TRAINING_TESTS = (
    "test_bad_input_training_option[",
    "test_bad_input_training_flag[",
    "test_bad_input_training_path_choice_or_config[",
)


def bad_input_breakdown(node_ids: list[str], tests: tuple[str, ...] = PIPELINE_TESTS) -> Counter:
    """Cases per pipeline (or CLI subcommand, training script), from ids like ``test_bad_input[mv-num_views_zero]``."""
    per: Counter = Counter()
    for n in node_ids:
        for test in tests:
            if test in n:
                m = re.search(r"\[([a-z0-9_]+?)-", n[n.index(test) :])
                if m:
                    per[m.group(1)] += 1
    return per


def known_gaps() -> list[str]:
    """The cases the sweep marks as known gaps (``XFAIL`` / ``FAULT_XFAIL`` in ``tests/test_reliability.py``)."""
    from tests import test_reliability

    gaps = [f"{name}-{case}" for case, names in test_reliability.XFAIL.items() for name in names]
    return gaps + [f"{kind}-{fault}" for kind, fault in sorted(test_reliability.FAULT_XFAIL)]


def _listing(per: Counter, names: dict[str, str] | None = None) -> str:
    return ", ".join(f"{(names or {}).get(k, k)} {v}" for k, v in sorted(per.items()))


def section(node_ids: list[str], gaps: list[str]) -> str:
    """The README's "Reliability" section from the collected node ids (counts only; nothing that goes stale without
    a test noticing: ``test_readme_reliability_section_is_current`` compares it with the README)."""
    bad_inputs, faults = categorise(node_ids)
    per = bad_input_breakdown(node_ids)
    cli = bad_input_breakdown(node_ids, CLI_TESTS)
    train_per = bad_input_breakdown(node_ids, TRAINING_TESTS)
    scales = sum(1 for n in node_ids if SCALE_TEST in n)
    names = {"res": "ResAdapter", "mv": "MV-Adapter", "mvxl": "MV-Adapter SDXL", "i2v": "I2V-Adapter", "hipa": "HiPA"}
    half = sum(1 for n in node_ids if re.search(HALF_PRECISION_PATTERN, n))
    messages = sum(1 for n in node_ids if re.search(MESSAGE_PATTERN, n))
    lines = [
        "## Reliability",
        "",
        "Counted from the test suite itself (`python -m tests.reliability_report`; "
        "`test_readme_reliability_section_is_current` fails when these counts go stale). Every case below but the "
        "SIGKILL one (slow tier) runs in the default test tier and must pass.",
        "",
        f"- **{bad_inputs} bad inputs** tried: {sum(per.values())} against the pipelines' `__call__` "
        f"({_listing(per, names)}), {scales} against the loaders and `set_*_scale`, {sum(cli.values())} against the "
        f"command line `python -m pipelines` ({_listing(cli)}) and {sum(train_per.values())} against the training "
        f"scripts' flags and config files ({_listing(train_per)}). The cases are generated from each entry point "
        "itself: every numeric argument of a pipeline from its signature (`pipelines.checks.call_number_rules`), every "
        "flag of the command line from its argparse parser, every option of a training script from its config "
        "dataclass (as a flag and as a config-file key). Each gets every value its range refuses: NaN, +/-inf, a "
        "bool, a string, a float for an int, zero / negative / below the minimum, above the maximum, wrong-length "
        "lists (`height=0` / `width=0` are refused, never replaced by the default); path flags get missing paths and "
        "files of the wrong kind (the mesh flag: an empty file, a text file renamed `.glb`, a point cloud without "
        "faces, a mesh above the face limit); choices a value not offered; command-line flags that exclude each other are given "
        "together. Hand-written pipeline cases add wrong types, non-divisible and huge sizes (2**20 and 2**20 + 1), "
        "`num_views` / `num_frames` above their documented maxima (32 views; the motion modules' 32 frames), camera "
        "lists of disagreeing lengths, prompt / negative prompt / generator list mismatches, an `image` given as a "
        "path, L / RGBA / CMYK / 16-bit images, NaN / inf latents, condition / position / normal maps and image "
        "tensors.",
        "- Each bad input is refused with a `ValueError` / `TypeError` (or, on a command line, exit status 2 and one "
        "error line) naming the argument or flag, before any model work: the pipelines before the UNet runs once (a "
        "counter on the UNet), leaving the pipeline as it was (scheduler, adapter scales, output); the command line "
        "and the training scripts before any model loads. The command line's ranges are the task functions' own: the "
        "ends of each range are checked to pass the task's checks and reach the UNet.",
        f"- **{sum(faults.values())} faults injected**:",
    ]
    for label, count in faults.items():
        lines.append(f"  - {label}: {count}")
    if half:
        lines.append(
            f"- {half} half-precision weight files (float16 / bfloat16, every adapter kind) load, cast to the model's "
            "float32, and give the float32 file's output up to rounding."
        )
    if messages:
        lines.append(
            f"- {messages} direct checks that the shared input checks (`pipelines/checks.py`) name the argument, the "
            "value and what is allowed."
        )
    lines.append(
        "- Nothing is lost on a fault: a failed weight load leaves the pipeline's output bit-identical, a crash during "
        "a save keeps the previous file, a NaN loss keeps the last good checkpoint, a killed run resumes to the "
        "uninterrupted run's adapter (1e-6; the slow tier)."
    )
    if gaps:
        lines.append(f"- Known gaps ({len(gaps)}, expected to fail until fixed): " + ", ".join(f"`{g}`" for g in gaps))
    else:
        lines.append("- Known gaps: none (`XFAIL` and `FAULT_XFAIL` in `tests/test_reliability.py` are empty).")
    return "\n".join(lines) + "\n"


def readme_section(readme: Path = README) -> str:
    """The README's current "## Reliability" section (up to the next "## " heading)."""
    text = readme.read_text(encoding="utf-8")
    body = text.split("\n## Reliability\n", 1)[1].split("\n## ", 1)[0]
    return "## Reliability\n" + body.rstrip("\n") + "\n"


def write_readme(text: str, readme: Path = README) -> None:
    """Replace the README's "## Reliability" section with ``text``."""
    old = readme_section(readme)
    content = readme.read_text(encoding="utf-8")
    readme.write_text(content.replace(old, text, 1), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", action="store_true", help="also run the slow tests (SIGKILL mid-step)")
    parser.add_argument("--no-run", action="store_true", help="only count (collect), do not run the tests")
    parser.add_argument(
        "--write-readme", action="store_true", help="replace the README's section (unless the run failed)"
    )
    args = parser.parse_args(argv)
    node_ids = collect(FILES + SLOW_FILES, "slow or not slow")  # count everything, run per --slow
    text = section(node_ids, known_gaps())
    sys.stdout.write(text)
    code = 0
    if not args.no_run:
        code, summary = run(FILES + (SLOW_FILES if args.slow else []), "slow or not slow" if args.slow else "not slow")
        sys.stderr.write(f"pytest: {summary} (exit code {code})\n")
    if args.write_readme and code == 0:
        write_readme(text)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
