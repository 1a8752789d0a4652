"""The chaos suite's own logic, on made-up inputs: fault schedules, recovery times, the paid-twice audit."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from services.devstack.chaos.audit import KafkaRecord, Terminal, orphans, paid
from services.devstack.chaos.faults import FAULT_NAMES, default_faults, schedule, short_error
from services.devstack.chaos.load import Load, Submission, index_of, prompt_for, request_body
from services.devstack.chaos.report import build_report, render
from services.devstack.chaos.run import ChaosConfig, private_stack
from services.devstack.chaos.watch import Sample, first_after, moved_again, records_done


def test_a_schedule_is_seeded_within_the_window_and_names_every_fault_once() -> None:
    plan = schedule(list(FAULT_NAMES), 100.0, seed=3)
    assert [f.at_s for f in plan] == sorted(f.at_s for f in plan)
    assert sorted(f.name for f in plan) == sorted(FAULT_NAMES)
    assert all(10.0 <= f.at_s <= 80.0 for f in plan)
    assert [(f.name, f.at_s) for f in schedule(list(FAULT_NAMES), 100.0, seed=3)] == [(f.name, f.at_s) for f in plan]
    assert [f.at_s for f in schedule(list(FAULT_NAMES), 100.0, seed=4)] != [f.at_s for f in plan]
    with pytest.raises(ValueError, match="unknown fault.*kill:webhooks"):
        schedule(["kill:webhooks"], 10.0, seed=1)


def test_a_stage_recovers_at_its_first_record_after_the_repair() -> None:
    same_process = [Sample(1.0, 7, 10), Sample(2.0, 7, 10), Sample(3.0, 7, 10), Sample(4.5, 7, 12)]
    assert moved_again(same_process, since=2.0) == 2.5
    restarted = [Sample(1.0, 7, 10), Sample(2.0, None, None), Sample(3.0, 8, 0), Sample(3.5, 8, 1)]
    assert moved_again(restarted, since=2.5) == 1.0  # a new process counts from zero
    assert moved_again(same_process[:3], since=1.5) is None
    assert first_after([1.0, 4.0, 9.0], 3.0) == 1.0 and first_after([1.0], 3.0) is None


def test_records_done_sums_the_ok_outcomes_only() -> None:
    text = ('# TYPE forgeline_records_total counter\n'
            'forgeline_records_total{group="g",outcome="ok"} 5.0\n'
            'forgeline_records_total{group="h",outcome="ok"} 2.0\n'
            'forgeline_records_total{group="g",outcome="dead_lettered"} 9.0\n')
    assert records_done(text) == 7.0


def test_prompts_lead_back_to_their_request() -> None:
    assert index_of("ab12", prompt_for("ab12", 41) + ", highly detailed") == 41
    assert index_of("ab12", prompt_for("cd34", 41)) is None
    assert "reference_image" in request_body("ab12", 9) and "reference_image" not in request_body("ab12", 8)


def _record(requested: dict[int, set[str]], completed: dict[str, str]) -> KafkaRecord:
    terminal = {job: Terminal(["p.generation.completed"], [f'{{"provider": "{provider}"}}'.encode()])
                for job, provider in completed.items()}
    return KafkaRecord(terminal=terminal, requested=requested, dlq={})


def test_paid_twice_is_two_charges_for_one_request_whoever_settled_them() -> None:
    record = _record({0: {"j0"}, 1: {"j1"}, 2: {"j2"}}, {"j0": "replicate", "j1": "replicate", "j2": "hf-space-a"})
    audit = paid({0: ["replicate"], 1: ["replicate", "replicate"]}, Counter({"j0": 1, "j1": 1}), record)
    assert (audit.charged, audit.settled, audit.paid_completions) == (3, 2, 2)
    assert audit.jobs_paid_twice == [1]
    assert (audit.charged_not_settled, audit.settled_not_charged) == (1, 0)


def test_an_orphan_is_a_request_with_two_jobs_on_kafka_or_in_its_answers() -> None:
    record = _record({0: {"a"}, 1: {"b", "c"}}, {})
    answered = [Submission(0, "k0", {"a"}), Submission(1, "k1", {"b"}), Submission(2, "k2", {"d", "e"})]
    assert orphans(record, answered) == [1, 2]


def test_short_error_keeps_the_reason_and_the_last_log_line() -> None:
    error = RuntimeError("router exited. Last lines of its log:\n    │ frame │\n    KafkaConnectionError: no bootstrap")
    assert short_error(error) == "RuntimeError: router exited. Last lines of its log: … KafkaConnectionError: no bootstrap"


def test_a_cluster_run_also_restarts_every_broker_and_its_ports_come_in_pairs(tmp_path) -> None:
    assert default_faults(1) == list(FAULT_NAMES)
    assert default_faults(3) == [*FAULT_NAMES, "brokers:restart"]
    assert {f.name for f in schedule(default_faults(3), 60, seed=3)} == set(FAULT_NAMES) | {"brokers:restart"}
    cluster = private_stack(tmp_path, brokers=3)
    assert (cluster.kafka_brokers, cluster.kafka_controller_port) == (3, cluster.kafka_port + 1)
    with pytest.raises(ValueError, match="unknown fault"):
        schedule(["brokers:explode"], 60, seed=3)


def test_the_report_says_why_the_failed_jobs_failed() -> None:
    load = Load("http://127.0.0.1:1", "r1", 3, 10, seed=1)
    for index, job in enumerate(["j0", "j1", "j2"]):
        load.submissions[index].job_ids.add(job)
        load.submissions[index].final = "accepted"
    topic = "chaos.generation."
    record = KafkaRecord(terminal={
        "j0": Terminal([topic + "completed"], [b'{"job_id": "j0"}']),
        "j1": Terminal([topic + "failed"], [json.dumps({"error": {"code": "no_provider_available"}}).encode()]),
        "j2": Terminal([topic + "failed"], [json.dumps({"error": {"code": "no_provider_available"}}).encode()]),
    }, requested={0: {"j0"}, 1: {"j1"}, 2: {"j2"}}, dlq={})
    report = build_report(config=ChaosConfig(n=3, faults=[]), run_id="r1", elapsed_s=1.0, load=load, record=record,
                          disagreements=[], stuck=Counter(), paid=paid({}, Counter(), record), faults=[],
                          log_bytes={}, crashes={})

    assert (report.completed, report.failed, report.failed_codes) == (1, 2, {"no_provider_available": 2})
    assert "(1 completed, 2 failed: {'no_provider_available': 2})" in render(report)
