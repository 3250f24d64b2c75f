"""`lantern serve --ray`: a local Ray instance, two replicas of the app, driven by the openai client."""
from __future__ import annotations

import concurrent.futures
import time

import openai
import pytest

from lanternlm import Model
from serve_fixtures import free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Say hello in French."}]


@pytest.fixture(scope="module")
def ray_server(smollm2_path):
    from lanternlm.serve.ray_deploy import deployment

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {"name": MODEL, "n_ctx": 256, "kv_memory": "8MB", "parallel": 2, "threads": 1}
        serve.run(deployment(smollm2_path, options, replicas=2), name="lantern", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_the_openai_api(ray_server, smollm2_path):
    app_status = serve.status().applications["lantern"]
    replicas = app_status.deployments["lantern"].replica_states
    assert replicas.get("RUNNING") == 2

    client = openai.OpenAI(base_url=ray_server + "/v1", api_key="none", max_retries=0, timeout=120)
    want = Model(smollm2_path, n_ctx=256, n_threads=1).chat(MESSAGES, max_tokens=12, temperature=0)

    def ask(_):
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
        return r.choices[0].message.content

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(6)))
    assert answers == [want] * 6, answers
    assert time.monotonic() - start < 120
    stream = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=9)
