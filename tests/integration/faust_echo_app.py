"""A minimal faust-streaming app for the compatibility test: decode a request, echo its prompt.

Run as ``python faust_echo_app.py worker``; topics and broker come from the environment.
"""

from __future__ import annotations

import os

import faust

from services.common import contracts

app = faust.App(
    os.environ["ECHO_APP_ID"],
    broker=f"kafka://{os.environ['ECHO_BOOTSTRAP']}",
    store="memory://",
    web_enabled=False,
    datadir=os.environ["ECHO_DATADIR"],
    topic_replication_factor=1,
    topic_allow_declare=False,  # the topics exist already; we created them with our settings
)
source = app.topic(os.environ["ECHO_SOURCE"], value_serializer="raw")
sink = app.topic(os.environ["ECHO_SINK"], value_serializer="raw")


@app.agent(source)
async def echo(stream):
    async for value in stream:
        request = contracts.decode(contracts.GenerationRequested, value)
        await sink.send(key=request.job_id.encode(), value=request.spec.prompt.encode())


if __name__ == "__main__":
    app.main()
