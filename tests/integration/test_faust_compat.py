"""faust-streaming against our broker version: an agent consumes a contract message and answers.

This is the check behind the README's choice of Kafka 4.x (older faust sends CreateTopics v1,
which 4.x brokers reject).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import contracts as c
from services.common.kafka import make_consumer, send_event
from services.common.topics import Topics

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("faust_echo_app.py")
REPO = Path(__file__).resolve().parents[2]


async def test_faust_agent_consumes_a_contract_message(connections, topics, producer, tmp_path, unique):
    names = Topics.from_settings(connections.topics)
    source, sink = names.name("generation.requested"), names.name("generation.primary")
    env = os.environ | {
        "ECHO_APP_ID": f"faust-echo-{unique}", "ECHO_BOOTSTRAP": connections.kafka.bootstrap,
        "ECHO_SOURCE": source, "ECHO_SINK": sink, "ECHO_DATADIR": str(tmp_path),
        "PYTHONPATH": str(REPO),
    }
    log = tmp_path / "faust.log"
    with log.open("wb") as out:
        worker = subprocess.Popen([sys.executable, str(APP), "worker", "-l", "warn"], env=env, cwd=tmp_path,
                                  stdout=out, stderr=subprocess.STDOUT)
    consumer = make_consumer(connections.kafka, sink, group_id=None)
    await consumer.start()
    try:
        request = c.GenerationRequested(job_id=c.new_job_id(), tenant="faust",
                                        spec=c.ImageSpec(prompt="healing potion"))
        await send_event(producer, source, request)
        try:
            record = await asyncio.wait_for(consumer.getone(), timeout=90)
        except TimeoutError:
            pytest.fail(f"the faust agent did not answer in 90 s; its log:\n{log.read_text()[-3000:]}")
    finally:
        await consumer.stop()
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()

    assert (record.key, record.value) == (request.job_id.encode(), b"healing potion")
