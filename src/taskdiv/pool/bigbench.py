"""BIG-bench as a pool source: the task.json files of the `bigbench==1.0.0` sdist.

The sdist is downloaded once from the package index pip is set up to use and checked
against its sha256 (`taskdiv.common.pip_index`; pip is never asked to build or install it: its
dependencies are heavy and one is a direct URL current pip refuses), and its task.json
files are extracted into the cache (`taskdiv.common.paths.cache_dir`). Set TASKDIV_BIGBENCH
to an extracted `benchmark_tasks` directory or to the sdist tarball to use a local copy.

Each example becomes one prompt formatted the way BIG-bench formats it (the task's
own `task_prefix`, `example_input_prefix`, `choice_prefix`, `example_output_prefix`,
choices appended in a seeded order), with:
    task      the task name, `task/subtask` for subtasks
    response  the target; for multiple choice the highest-scoring choice
    choices   the options (multiple-choice tasks only)
    targets   the accepted answers (every top-scoring choice, or every target)

Each task is split into a held-out test part and a pool part by the rule every built-in
source shares (`taskdiv.pool.splits`: keyed on the formatted prompt and the response; appended
choices are ordered by a hash of the example's content, so identical examples are
formatted alike). Examples with no question (an empty input whose choices are not shown)
or no non-empty target are skipped; a task whose examples have scored choices and no
free-text target is multiple choice whatever its metric. Spec options
(`bigbench:TASKS?key=value&...`): split, test, pool_frac, max_pool, seed (see splits.py).

The public package index stopped serving bigbench 1.0.0 in December 2026 (it lists 0.0.1
only, without the task files): nothing of taskdiv's own needs it any more (its presets,
demo and tests read the local collections of `taskdiv.pool.benchmarks`); this source is kept for
users whose index or disk still has the sdist (TASKDIV_BIGBENCH).

    python -m taskdiv.pool.bigbench            # lists the tasks with their sizes
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..common import pip_index
from ..common.atomic import atomic_dir
from ..common.errors import TaskdivError, unknown_name
from ..common.inputs import file_sha256
from ..common.locks import locked, remove_stale
from ..common.paths import cache_dir
from .splits import SplitOptions, hash_int, split_key, split_tasks

log = logging.getLogger(__name__)

VERSION = "1.0.0"

# The demo preset: 30 tasks whose prompts are short (the longest median is about 350
# characters, under 100 tokens; none near 512 tokens), chosen to vary along the axes the
# method cares about:
#   kind        13 yes/no, 11 multiple choice with 3 to 10 options, 6 short generative
#               answers (arithmetic, counting, unscrambling, facts);
#   skill       logic, arithmetic, commonsense, language, world knowledge, social;
#   difficulty  from easy for a small model (sports_understanding, arithmetic) to near
#               chance (logical_fallacy_detection, ruin_names), so confidence varies;
#   size        46 to 50,000 examples, the natural skew of real task-labelled pools.
PRESETS: dict[str, list[str]] = {
    "demo": [
        # yes/no
        "sports_understanding", "navigate", "hyperbaton", "strategyqa", "implicatures",
        "metaphor_boolean", "logical_fallacy_detection", "anachronisms", "snarks",
        "fact_checker/fever", "winowhy", "known_unknowns", "irony_identification",
        # multiple choice
        "date_understanding", "ruin_names", "movie_recommendation", "intent_recognition",
        "social_iqa", "disambiguation_qa", "emoji_movie", "elementary_math_qa/question_only",
        "reasoning_about_colored_objects", "physical_intuition", "general_knowledge", "color/rgb",
        # generative
        "arithmetic/2_digit_addition", "arithmetic/3_digit_subtraction", "object_counting",
        "word_unscrambling", "qa_wikidata",
    ],
    # The skewed study (configs/cpu-skewed.yaml): 107 tasks of 42 to 57,000 examples, the
    # paper's regime of many tasks of very different sizes. Drawn from the 1,000 tasks by
    # rule: at least 40 examples, median prompt at most 300 characters (90th percentile 600),
    # median answer at most 30; at most a few tasks of one family (multiemo has 70 language
    # and domain variants, arithmetic 20), and no task with 40 or more choices per item
    # (dyck_languages, intersect_geometry: their evaluation costs a forward pass a choice).
    "skewed": [
        # yes/no (two choices): 25
        "anachronisms", "analytic_entailment", "cause_and_effect/two_sentences", "cryobiology_spanish",
        "cs_algorithms/valid_parentheses", "dark_humor_detection", "entailed_polarity",
        "entailed_polarity_hindi", "fact_checker/fever", "fact_checker/politifact", "hinglish_toxicity",
        "hyperbaton", "implicatures", "irony_identification", "known_unknowns", "logical_fallacy_detection",
        "mathematical_induction", "metaphor_boolean", "misconceptions", "navigate", "sentence_ambiguity",
        "snarks", "sports_understanding", "strategyqa", "winowhy",
        # multiple choice (3 to 18 choices): 40
        "bbq_lite_json/age_ambig", "bbq_lite_json/disability_status_ambig", "bbq_lite_json/religion_ambig",
        "color/hcl", "color/rgb", "common_morpheme", "cs_algorithms/lcs", "date_understanding",
        "elementary_math_qa/language_hint_only", "elementary_math_qa/mathematical_hint_only",
        "emoji_movie", "emojis_emotion_prediction", "figure_of_speech_detection", "general_knowledge",
        "goal_step_wikihow/goal_inference", "hindu_knowledge", "human_organs_senses", "intent_recognition",
        "kannada", "movie_recommendation", "multiemo/medicine_sentence_pl",
        "multiemo/products_sentence_pt", "multiemo/products_sentence_ru", "multiemo/reviews_sentence_fr",
        "nonsense_words_grammar", "odd_one_out", "parsinlu_qa", "persian_idioms", "phrase_relatedness",
        "physical_intuition", "reasoning_about_colored_objects", "riddle_sense", "ruin_names",
        "similarities_abstraction", "social_iqa", "swedish_to_german_proverbs",
        "unit_conversion/chained_conversion", "unit_conversion/different_systems",
        "unit_conversion/si_conversion", "unit_conversion/unit_identification",
        # generative (short answers, exact match): 42
        "arithmetic/1_digit_addition", "arithmetic/1_digit_multiplication",
        "arithmetic/2_digit_multiplication", "arithmetic/2_digit_subtraction", "arithmetic/3_digit_addition",
        "arithmetic/3_digit_division", "arithmetic/4_digit_addition", "arithmetic/5_digit_division",
        "auto_categorization", "chess_state_tracking/real_short", "chess_state_tracking/synthetic_short",
        "chinese_remainder_theorem", "codenames", "cryptonite", "kanji_ascii/kanji_ascii_pronunciation",
        "linguistic_mappings/de_past_tense_irregular_json", "linguistic_mappings/past_tense_irregular_json",
        "linguistic_mappings/past_tense_regular_json", "linguistic_mappings/plural_json",
        "linguistic_mappings/plural_regular_json", "linguistic_mappings/question_formation_json",
        "list_functions/00_shot_baseline", "list_functions/01_shot_baseline", "matrixshapes",
        "modified_arithmetic/three_digit_addition_control",
        "modified_arithmetic/three_digit_subtraction_control",
        "modified_arithmetic/two_digit_multiplication_control",
        "modified_arithmetic/two_digit_multiplication_plus_one", "object_counting", "operators",
        "periodic_elements/subtask_0", "periodic_elements/subtask_1", "physics_questions", "qa_wikidata",
        "simp_turing_concept/additional_set_1", "simp_turing_concept/witness_set",
        "unit_conversion/unit_addition_same", "unnatural_in_context_learning/dates",
        "unnatural_in_context_learning/dates_unnatural_content_and_form",
        "unnatural_in_context_learning/identity", "unnatural_in_context_learning/reverse_natural_content",
        "word_unscrambling",
    ],
    # The twelve tasks of ../shared/EXPERIMENT-NOTES.md (all multiple choice).
    "notes12": [
        "sports_understanding", "navigate", "hyperbaton", "logical_fallacy_detection",
        "strategyqa", "intent_recognition", "implicatures", "movie_recommendation",
        "date_understanding", "ruin_names", "metaphor_boolean", "social_iqa",
    ],
}


# The sdist as PyPI publishes it (files there never change). The index's own sha256 must
# agree, and a find-links copy, which comes without one, is checked against this.
SDIST = f"bigbench-{VERSION}.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
SDIST_SIZE = 358_249_635
LOCAL_HINT = ("To use a local copy instead, download bigbench-1.0.0.tar.gz (for instance from "
              "https://pypi.org/project/bigbench/1.0.0/#files) and set TASKDIV_BIGBENCH to the tarball "
              "or to its extracted benchmark_tasks directory.")


def tasks_dir() -> Path:
    """The extracted `benchmark_tasks` directory, fetching the sdist on first use."""
    env = os.environ.get("TASKDIV_BIGBENCH")
    if env:
        path = Path(env)
        if path.is_dir():
            # The tasks directory itself, or a directory above it (the unpacked sdist's root).
            for tasks in (path / "benchmark_tasks", path / "bigbench" / "benchmark_tasks", path):
                if next(tasks.glob("*/task.json"), None) or next(tasks.glob("*/*/task.json"), None):
                    return tasks
            raise TaskdivError(f"TASKDIV_BIGBENCH={env}: no TASK/task.json under it, nor under its "
                               f"benchmark_tasks or bigbench/benchmark_tasks")
        if path.is_file():
            digest = file_sha256(str(path))
            if digest != SDIST_SHA256:  # the cache slot holds the 1.0.0 sdist's tasks, nothing else
                raise TaskdivError(f"TASKDIV_BIGBENCH={env}: not {SDIST} (its sha256 is {digest}, not "
                                   f"{SDIST_SHA256}); for another copy of the tasks, extract it and point "
                                   f"TASKDIV_BIGBENCH at its benchmark_tasks directory")
            return _extract(path)
        raise TaskdivError(f"TASKDIV_BIGBENCH={env}: no such file or directory")
    return fetch()


def _target() -> Path:
    return cache_dir() / f"bigbench-{VERSION}" / "benchmark_tasks"  # created only when complete


def fetch(sha256: str = SDIST_SHA256, size: int | None = SDIST_SIZE) -> Path:
    """Download the sdist from the package index pip is set up to use, check its sha256 and
    extract its task files into the cache; returns the extracted directory.

    The download streams into a uniquely named `.part` file in the cache and the tasks
    are extracted into a staging directory renamed into place, all under a lock on the
    cache directory: a second process waits and then finds the work done; the leftovers
    of a killed fetch are removed by the next one. Nothing in the cache counts as
    fetched before `benchmark_tasks/.done` exists. (`sha256` and `size` are parameters
    so that tests can serve a small crafted archive.)
    """
    target = _target()
    if (target / ".done").exists():
        return target
    root = cache_dir()
    with locked(root, f"fetching {SDIST}"):
        if (target / ".done").exists():
            return target
        remove_stale(root, f".{SDIST}.*.part")
        fd, tmp = tempfile.mkstemp(prefix=f".{SDIST}.", suffix=".part", dir=root)
        os.close(fd)
        archive = Path(tmp)
        try:
            log.warning("fetching %s from the package index (%d MB, once) into %s", SDIST,
                        round((size or 0) / 1e6), target.parent)
            try:
                url = pip_index.fetch("bigbench", SDIST, archive, sha256=sha256, size=size)
            except TaskdivError as e:
                raise TaskdivError(f"{str(e).rstrip('.')}. {LOCAL_HINT}") from e
            return _extract(archive, lock=False, label=url)
        finally:
            archive.unlink(missing_ok=True)


def _extract(archive: Path, *, lock: bool = True, label: str | None = None) -> Path:
    """Extract the task.json files of the sdist into the cache (atomically). `label`: how
    errors name the archive (its URL; the downloaded temporary file is gone by then)."""
    target = _target()
    if (target / ".done").exists():
        return target
    if lock:
        with locked(cache_dir(), f"extracting {archive.name}"):
            return _extract(archive, lock=False, label=label)
    label = label or str(archive)
    made_parent = not target.parent.exists()
    count = 0
    try:
        # under the cache's lock: a killed extraction's staging directory goes (locked=True)
        with atomic_dir(target, locked=True) as staging, tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or not name.endswith("/task.json") or "/benchmark_tasks/" not in name:
                    continue
                rel = Path(name.split("/benchmark_tasks/", 1)[1])
                if rel.is_absolute() or ".." in rel.parts:
                    continue  # never write outside the staging directory
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                count += 1
            if not count:
                raise TaskdivError(f"{label}: no benchmark_tasks/*/task.json inside; not the bigbench sdist")
            (staging / ".done").write_text(VERSION)
    except BaseException as e:
        if made_parent:  # leave the cache as it was
            with contextlib.suppress(OSError):
                target.parent.rmdir()
        if isinstance(e, (tarfile.TarError, EOFError, zlib.error)):
            raise TaskdivError(f"{label}: not a readable .tar.gz ({e})") from e
        raise
    log.info("extracted %d task.json files into %s", count, target)
    return target


@lru_cache(maxsize=4)
def _task_files(root: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(root.glob("*/task.json")) + sorted(root.glob("*/*/task.json")):
        files[path.parent.relative_to(root).as_posix()] = path
    # A task with subtasks holds no examples itself: keep the subtasks only.
    return {name: p for name, p in files.items()
            if not any(other.startswith(name + "/") for other in files)}


def available_tasks() -> dict[str, Path]:
    """Task name (or task/subtask) -> task.json path, for tasks with examples."""
    return dict(_task_files(tasks_dir()))


def resolve_tasks(names: list[str]) -> list[str]:
    """Expand presets and parent tasks into task/subtask names; fail on unknown names."""
    files = available_tasks()
    out: list[str] = []
    for name in names:
        if name in PRESETS:
            out.extend(resolve_tasks(PRESETS[name]))
        elif name in files:
            out.append(name)
        elif any(t.startswith(name + "/") for t in files):
            out.extend(t for t in files if t.startswith(name + "/"))
        else:
            raise unknown_name("BIG-bench task or preset", name, list(files) + list(PRESETS))
    return list(dict.fromkeys(out))


def read_task(name: str) -> pd.DataFrame:
    """All examples of one task as pool rows (without the split)."""
    path = available_tasks()[name]
    spec = json.loads(path.read_text(encoding="utf-8"))
    examples = spec.get("examples") or []
    # Multiple choice as BIG-bench itself reads it: scored choices and no free-text target
    # (whatever the task's metric), or a task scored by multiple_choice_grade.
    multiple_choice = spec.get("preferred_score") == "multiple_choice_grade" or (
        "multiple_choice_grade" in spec.get("metrics", []) and not any("target" in e for e in examples[:20]))
    task_prefix = str(spec.get("task_prefix", ""))
    input_prefix = spec.get("example_input_prefix", "\nQ: ")
    output_prefix = spec.get("example_output_prefix", "\nA: ")
    choice_prefix = spec.get("choice_prefix", "\n  choice: ")
    append_choices = spec.get("append_choices_to_input", True)
    rows = []
    for index, ex in enumerate(examples):
        text = str(ex.get("input", ""))
        scores = ex.get("target_scores")
        choices = targets = None
        if scores and (multiple_choice or "target" not in ex):
            best = max(scores.values())
            choices = list(scores)
            targets = [c for c, s in scores.items() if s == best]
            response = str(ex["target"]) if isinstance(ex.get("target"), str) and ex["target"] in targets \
                else targets[0]
            if append_choices:
                # Seeded by the content, so that identical examples are formatted alike.
                rng = np.random.default_rng(hash_int("choices:" + text + "\x1f" + "\x1f".join(sorted(choices))))
                order = rng.permutation(sorted(choices))
                text = text + choice_prefix + choice_prefix.join(order)
            elif not text.strip():
                continue  # the model would see no question at all (the content is in the choices)
        elif "target" in ex:
            target = ex["target"]
            targets = [str(t) for t in (target if isinstance(target, list) else [target]) if str(t).strip()]
            if not targets or not text.strip():
                continue  # nothing to answer, or no question
            response = targets[0]
        else:
            continue  # neither a target nor scores: nothing to learn or evaluate
        prompt = (task_prefix + input_prefix + text + output_prefix).lstrip().rstrip(" ")
        # The split key is what the model sees and the answer it is taught: an item that
        # differs only in its wrong choices, or sits in two tasks, is still the same item.
        rows.append({"id": f"{name}:{index:05d}", "prompt": prompt, "task": name, "response": response,
                     "choices": choices, "targets": targets, "_key": split_key(prompt, response)})
    return pd.DataFrame(rows, columns=["id", "prompt", "task", "response", "choices", "targets", "_key"])


def load(tasks: list[str], *, split: str = "pool", test: float = 0.2, max_pool: int | None = None,
         pool_frac: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Pool rows of the given tasks/presets, for one split ('pool', 'test' or 'all')."""
    try:
        options = SplitOptions(split=split, test=test, max_pool=max_pool, pool_frac=pool_frac, seed=seed)
    except TaskdivError as e:
        raise TaskdivError(f"bigbench: {e}") from e
    frames = {}
    for name in resolve_tasks(tasks):
        frame = read_task(name)
        if len(frame) == 0:
            log.warning("bigbench task %s has no usable examples; skipped", name)
            continue
        frames[name] = frame
    if not frames:
        raise TaskdivError(f"bigbench: no examples in {tasks}")
    return split_tasks(frames, options, where=f"bigbench: {tasks}")


def load_spec(name: str, opts: dict[str, str]) -> pd.DataFrame:
    """Load `bigbench:NAME?opts` (NAME: a preset or comma-separated tasks)."""
    tasks = [t for t in name.split(",") if t] or ["demo"]
    o = SplitOptions.from_spec(f"bigbench:{name}", opts)
    return load(tasks, split=o.split, test=o.test, max_pool=o.max_pool, pool_frac=o.pool_frac, seed=o.seed)


def main() -> None:  # pragma: no cover - listing helper
    for name, path in available_tasks().items():
        print(name, path)


if __name__ == "__main__":  # pragma: no cover
    main()
