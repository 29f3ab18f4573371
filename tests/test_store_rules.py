"""The annotation store's rules, one test each, on `store.decide`: one id's answers in an
import against the answers the store holds for it, as plain values (no files, no frames).
The end-to-end imports that go through these rules are in test_annotation.py."""
from __future__ import annotations

from taskdiv.annotate.answers import Answer
from taskdiv.annotate.store import Decision, Stored, decide

T1, T2, T3 = "2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z", "2026-01-03T10:00:00Z"


def submitted(response: str, at: str | None = None, *, by: str | None = None, where: str = "") -> Answer:
    return Answer(response, "submitted", annotator=by, submitted_at=at, where=where)


# ----------------------------------------------------------------------------- nothing accepted


def test_skipped_answers_are_not_imported():
    decision = decide([Answer("", "skipped")])
    assert decision == Decision("skipped") and not decision.appends and decision.response is None


def test_empty_answers_are_not_imported():
    assert decide([Answer("", "empty"), Answer("", "empty")]) == Decision("empty")


def test_skipped_and_empty_answers_together_count_as_skipped():
    assert decide([Answer("", "empty"), Answer("", "skipped")]).outcome == "skipped"


def test_an_item_without_answers_is_not_annotated():
    assert decide([]) == Decision("not_annotated")


def test_nothing_accepted_leaves_a_stored_answer_alone():
    assert decide([Answer("", "skipped")], [Stored("stored", T1)]) == Decision("skipped")


def test_skipped_and_empty_answers_beside_a_submitted_one_are_ignored():
    win = submitted("yes", T1)
    decision = decide([Answer("", "skipped", submitted_at=T3), win, Answer("", "empty", submitted_at=T3)])
    assert decision == Decision("imported", win, ())


# ----------------------------------------------------------------------------- several answers in one import


def test_the_latest_submitted_answer_wins():
    # Another annotator's answer, submitted later, wins whatever the file order.
    late, early = submitted("b", T2, by="bob", where="task 1, annotation 1"), submitted("a", T1, by="ann")
    decision = decide([late, early])
    assert decision.answer is late and decision.dropped == (early,) and decision.outcome == "imported"


def test_the_dropped_answers_are_listed_oldest_first():
    a1, a3, a2 = submitted("1", T1), submitted("3", T3), submitted("2", T2)
    assert decide([a3, a1, a2]).dropped == (a1, a2)


def test_without_times_the_last_in_file_order_wins():
    first, last = submitted("a"), submitted("b")
    decision = decide([first, last])
    assert decision.answer is last and decision.dropped == (first,)


def test_equal_times_go_to_the_last_in_file_order():
    first, last = submitted("a", T1), submitted("b", T1)
    assert decide([first, last]).answer is last


def test_a_timed_answer_beats_an_untimed_one_in_the_same_import():
    untimed, timed = submitted("a"), submitted("b", T1)
    assert decide([timed, untimed]).answer is timed


def test_times_in_other_zones_are_compared_as_instants():
    # 11:00+02:00 is 09:00 UTC, before 10:00 UTC; a time without a zone is UTC.
    east, utc = submitted("a", "2026-01-01T11:00:00+02:00"), submitted("b", "2026-01-01T10:00:00")
    assert decide([utc, east]).answer is utc


# ----------------------------------------------------------------------------- a new id, and the same id again


def test_an_id_not_in_the_store_is_imported():
    decision = decide([submitted("  yes \n", T1)])
    assert decision.outcome == "imported" and decision.appends and decision.response == "yes"


def test_an_answer_identical_to_the_stored_one_is_unchanged():
    # Compared after stripping, and whatever the times (even submitted before the stored one).
    assert decide([submitted(" yes ", T1)], [Stored("yes", T2)]).outcome == "unchanged"
    assert decide([submitted("yes")], [Stored("yes", T2)]).outcome == "unchanged"


def test_identical_means_identical_to_the_latest_stored_answer():
    # "a" was stored, then replaced by "b": "a" again is no longer unchanged (it is an earlier answer).
    assert decide([submitted("a")], [Stored("a"), Stored("b")]).outcome == "earlier_answer"


def test_a_later_answer_replaces_the_stored_one():
    decision = decide([submitted("new", T2, by="bob")], [Stored("old", T1)])
    assert decision.outcome == "replaced" and decision.appends


def test_an_answer_submitted_at_the_stored_time_replaces_it():
    assert decide([submitted("new", T1)], [Stored("old", T1)]).outcome == "replaced"


def test_an_answer_submitted_before_the_stored_one_keeps_the_stored():
    decision = decide([submitted("new", T1)], [Stored("old", T2)])
    assert decision.outcome == "kept_stored" and not decision.appends


def test_the_stored_time_is_the_latest_rows():
    # Submitted after an earlier round's answer but before the latest stored one: kept.
    assert decide([submitted("new", T2)], [Stored("older", T1), Stored("old", T3)]).outcome == "kept_stored"


def test_an_untimed_answer_counts_as_the_newest():
    # JSONL, Argilla's records file, oracle: importing it is the latest thing the user did.
    assert decide([submitted("new")], [Stored("old", T3)]).outcome == "replaced"


def test_a_timed_answer_replaces_an_untimed_stored_one():
    assert decide([submitted("new", T1)], [Stored("old")]).outcome == "replaced"


def test_neither_timed_the_new_answer_replaces():
    assert decide([submitted("new")], [Stored("old")]).outcome == "replaced"


# ----------------------------------------------------------------------------- an old export imported again


def test_an_earlier_rounds_answer_without_a_time_keeps_the_later_one():
    decision = decide([submitted("round 1")], [Stored("round 1", T1), Stored("round 2", T2)])
    assert decision.outcome == "earlier_answer" and not decision.appends


def test_an_earlier_rounds_answer_not_submitted_after_every_stored_time_keeps_the_later_one():
    # The latest stored answer has no time, so the times cannot be compared pairwise; the
    # re-imported answer is no later than round 1's time: an old export.
    stored = [Stored("round 1", T2), Stored("round 2")]
    assert decide([submitted("round 1", T2)], stored).outcome == "earlier_answer"
    assert decide([submitted("round 1", T1)], stored).outcome == "earlier_answer"


def test_an_earlier_rounds_answer_submitted_after_every_stored_time_replaces():
    # Submitted again after all that is stored: the annotator went back to it on purpose.
    assert decide([submitted("round 1", T3)], [Stored("round 1", T1), Stored("round 2")]).outcome == "replaced"


def test_an_earlier_rounds_answer_with_both_times_follows_the_times():
    # Both timed: the pairwise time rule decides, not the earlier-answer rule.
    stored = [Stored("round 1", T1), Stored("round 2", T2)]
    assert decide([submitted("round 1", T3)], stored).outcome == "replaced"
    assert decide([submitted("round 1", T1)], stored).outcome == "kept_stored"
