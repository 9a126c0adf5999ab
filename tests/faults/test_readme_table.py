"""The README's fault tables are generated from this suite and checked against it, so they cannot drift:
the data faults from ``test_bad_input.FAULTS``, the run faults from ``RUN_FAULTS`` below, and the faults
on what mmfuse writes and reads back from the lists of the suites that inject them (``test_outputs``,
``test_csv_rows``, ``test_corrupt_runs``, ``test_report_faults``, ``test_long_text_and_labels``), each
naming the test that injects it (which must exist)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import test_corrupt_runs
import test_csv_rows
import test_long_text_and_labels
import test_outputs
import test_report_faults
from test_bad_input import FAULTS, NOTES, OUTCOMES

TESTS = Path(__file__).parents[1]
RUN_FAULTS = [  # (fault, what mmfuse does, the test that injects it)
    ("extraction killed with SIGKILL, 12 times in a row (half-written chunks, outside kills, while the complete "
     "flag is written)", "the file opens after every kill, no finished row is lost, each rerun resumes, and the "
     "final cache equals a clean run's row for row (see \"A kill at any moment leaves a valid file\")",
     "faults/test_killed_extraction.py::test_extraction_killed_at_a_dozen_points_resumes_to_a_clean_runs_cache"),
    ("writes after the cache is created", "change no byte of HDF5 metadata (HDF5's default allocation does)",
     "faults/test_killed_extraction.py::test_after_creation_the_writer_changes_no_metadata_so_a_kill_cannot_corrupt_it"),
    ("two extractions into one cache", "the second stops with a one-line error naming the first one's pid; a killed "
     "writer's lock is released by the kernel",
     "test_cache.py::test_a_cache_being_written_is_locked_named_and_readable_for_progress"),
    ("a grid killed with SIGKILL midway", "the rerun says how many configurations and fits were done and computes "
     "only the missing splits; `results.csv` has each configuration once",
     "faults/test_interrupted_grid.py::test_a_killed_grid_resumes_without_redoing_or_duplicating_a_configuration"),
    ("a torn last line in `results.csv`", "dropped on the next run (which says so); that configuration is listed "
     "again from its finished splits (`splits/`), with no fit, and scores as before",
     "faults/test_interrupted_grid.py::test_a_torn_last_line_is_dropped_and_that_configuration_is_listed_again"),
    ("two grids into one folder", "the second stops with a one-line error naming the first one's pid "
     "(`GRID/grid.lock`)",
     "faults/test_interrupted_grid.py::test_a_second_grid_into_the_same_folder_is_refused_naming_the_first"),
    ("a fine-tune killed with SIGKILL right after a checkpoint, or while writing the next one",
     "`mmfuse finetune ... --resume` continues from the last whole checkpoint (written to "
     "`checkpoint.pt.partial`, then renamed) to weights equal, tensor for tensor, to a run never interrupted",
     "faults/test_killed_finetune.py::test_a_killed_fine_tune_resumes_to_the_uninterrupted_weights"),
    ("the output disk fills up during extraction (a write raising ENOSPC)", "one-line error `cannot write PATH: no "
     "space left on the device. The rows written before are kept; ...`; the same command then resumes",
     "faults/test_full_disk.py::test_a_full_disk_during_extraction_is_one_line_keeps_the_written_rows_and_resumes"),
    ("the output disk fills up during a grid", "one-line error; the configurations listed in `results.csv` and every "
     "finished split are kept, and the rerun computes only the rest",
     "faults/test_full_disk.py::test_a_full_disk_during_a_grid_keeps_the_finished_rows_and_resumes"),
    ("a batch too large for the device's memory (simulated: the models raise torch's `OutOfMemoryError` above 2 "
     "rows)", "extraction runs that batch in halves, logs `text model: out of memory; batches of N rows from now "
     "on`, keeps that size, and the features equal a run that never ran out; one row too large is a one-line error",
     "faults/test_out_of_memory.py::test_an_out_of_memory_batch_is_run_in_halves_with_the_same_features"),
    ("a run folder from someone else with a planted pickle in `model.pt`", "refused in one line (`refusing to load "
     "...`); the pickle's code never runs: tensors load with `torch.load(weights_only=True)`, arrays with "
     "`allow_pickle=False`, configs are JSON, and no run folder holds a pickle",
     "faults/test_provenance_and_trust.py::test_a_planted_pickle_in_a_run_folder_is_refused_and_never_runs"),
    ("a cache whose data set changed after extraction", "`mmfuse info` warns (`the data set at ... changed since "
     "this cache was extracted`), from the data fingerprint",
     "faults/test_provenance_and_trust.py::test_info_warns_when_the_data_changed_since_extraction"),
    ("`predict` / `evaluate` with a cache from another model, other dimensions or another label set",
     "refused in one line naming the field", "test_heads.py::test_refuses_a_cache_from_other_backbones"),
]


# the faults on outputs and on files read back, by suite: (fault, what mmfuse does, test)
WRITE_FAULTS = [(f, o, f"faults/{m.__name__}.py::{t}") for m, table in (
    (test_outputs, test_outputs.OUTPUT_FAULTS), (test_corrupt_runs, test_corrupt_runs.FAULTS_TABLE),
    (test_report_faults, test_report_faults.REPORT_FAULTS), (test_csv_rows, test_csv_rows.CSV_FAULTS),
    (test_long_text_and_labels, test_long_text_and_labels.FAULTS_TABLE)) for f, o, t in table]


def data_table() -> str:
    lines = ["| fault | what mmfuse does |", "|---|---|"]
    for name, (_, outcome) in FAULTS.items():
        note = NOTES.get(name)
        lines.append(f"| {name} | {OUTCOMES[outcome]}{f'; {note}' if note else ''} |")
    return "\n".join(lines)


def run_table(faults=None) -> str:
    lines = ["| fault | what mmfuse does | test |", "|---|---|---|"]
    for fault, outcome, test in RUN_FAULTS if faults is None else faults:
        lines.append(f"| {fault} | {outcome} | `{test.split('::')[0]}` |")
    return "\n".join(lines)


def test_every_run_fault_names_a_test_that_exists():
    for _, _, test in RUN_FAULTS + WRITE_FAULTS:
        path, name = test.split("::")
        spec = importlib.util.spec_from_file_location(Path(path).stem, TESTS / path)
        source = (TESTS / path).read_text()
        assert spec is not None and f"def {name}(" in source, test


def test_the_readme_tables_are_these_tables():
    readme = (TESTS.parent / "docs" / "robustness.md").read_text()
    assert data_table() in readme, "docs/robustness.md's data fault table differs: paste test_readme_table.data_table()"
    assert run_table() in readme, "docs/robustness.md's run fault table differs: paste test_readme_table.run_table()"
    assert run_table(WRITE_FAULTS) in readme, ("docs/robustness.md's table of output faults differs: paste "
                                               "test_readme_table.run_table(test_readme_table.WRITE_FAULTS)")
