"""The log writer thread: every line, in order, in fewer writes than lines, none held back, none lost at stop."""

from __future__ import annotations

import logging
import queue
import time
from logging.handlers import QueueHandler

from services.common.worker import BatchingListener, LineBatch, configure_logging


class _Stream:
    """A stderr that records each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[str]:
        return "".join(self.writes).splitlines()


def _logger(records: queue.SimpleQueue, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers[:] = [QueueHandler(records)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def _writer(stream: _Stream) -> LineBatch:
    writer = LineBatch(stream)
    writer.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    return writer


def test_a_burst_is_written_whole_and_in_order_in_fewer_writes_than_lines():
    stream, records = _Stream(), queue.SimpleQueue()
    logger = _logger(records, "test.burst")
    for i in range(500):
        logger.info("request %d", i)
    listener = BatchingListener(records, _writer(stream))
    listener.start()
    listener.stop()

    assert stream.lines == [f"INFO request {i}" for i in range(500)]
    assert len(stream.writes) < 50, f"{len(stream.writes)} writes for 500 lines queued at once"


def test_a_line_logged_alone_is_written_without_waiting_for_more():
    stream, records = _Stream(), queue.SimpleQueue()
    logger = _logger(records, "test.alone")
    listener = BatchingListener(records, _writer(stream))
    listener.start()
    try:
        logger.warning("broker not ready, retrying")
        deadline = time.monotonic() + 5
        while not stream.writes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stream.lines == ["WARNING broker not ready, retrying"]
    finally:
        listener.stop()


def test_a_traceback_is_kept_and_a_record_that_cannot_be_formatted_loses_only_itself(capsys):
    stream, records = _Stream(), queue.SimpleQueue()
    logger = _logger(records, "test.errors")
    try:
        raise RuntimeError("S3 slow")
    except RuntimeError:
        logger.exception("upload failed")
    writer = _writer(stream)
    listener = BatchingListener(records, writer)
    listener.start()
    listener.stop()
    bad = logging.LogRecord("test.errors", logging.INFO, __file__, 1, "%d items", ("many",), None)
    writer.handle(bad)  # formatting fails: logging's handleError reports it on stderr
    writer.handle(logging.LogRecord("test.errors", logging.INFO, __file__, 1, "after", None, None))
    writer.flush()

    text = "".join(stream.writes)
    assert text.startswith("ERROR upload failed\nTraceback") and "RuntimeError: S3 slow" in text
    assert stream.lines[-1] == "INFO after"
    assert "many" not in text and "Logging error" in capsys.readouterr().err


def test_a_service_line_names_its_level_and_logger_once_and_keeps_its_traceback():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # configure_logging replaces the root's; put them back
    stream = _Stream()
    try:
        listener = configure_logging("INFO", "router", stream)
        logging.getLogger("services.router.app").info("routing %d requests", 3)
        try:
            raise ValueError("bad depth")
        except ValueError:
            logging.getLogger("services.router.app").exception("cannot start")
        listener.stop()
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)

    first, second = stream.lines[0], stream.lines[1]
    assert first.endswith(" INFO router services.router.app: routing 3 requests"), first
    assert second.endswith(" ERROR router services.router.app: cannot start"), second
    assert "ValueError: bad depth" in "".join(stream.writes)


def test_stop_writes_the_lines_queued_just_before_it_while_the_writer_sleeps():
    stream, records = _Stream(), queue.SimpleQueue()
    logger = _logger(records, "test.stop")
    listener = BatchingListener(records, _writer(stream), interval_s=60)  # no round would come in time
    listener.start()
    for i in range(3):
        logger.info("last words %d", i)
    listener.stop()

    assert stream.lines == [f"INFO last words {i}" for i in range(3)]


def test_a_handler_gets_only_records_at_or_above_its_level():
    stream, records = _Stream(), queue.SimpleQueue()
    logger = _logger(records, "test.level")
    writer = _writer(stream)
    writer.setLevel(logging.WARNING)
    logger.info("chatter")
    logger.warning("worth reading")
    listener = BatchingListener(records, writer)
    listener.start()
    listener.stop()

    assert stream.lines == ["WARNING worth reading"]
