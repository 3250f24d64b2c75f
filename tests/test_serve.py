"""`lantern serve` driven by the official openai client over HTTP on 127.0.0.1.

Oracles: the library's single-sequence Model (greedy text, log-probabilities and token counts:
SmolLM2's Q4_1 / Q8_0 matrices have batch-invariant kernels, so a row computed in a batch of
many sequences is bit-identical to the same row computed alone), the same request sent alone,
and OpenAI's documented shapes and status codes.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest

from lanternlm import Model
from lanternlm.serve import create_app
from serve_fixtures import LiveServer

MODEL = "smollm2-135m-instruct"
KEY = "sk-test-key"


@pytest.fixture(scope="module")
def live(smollm2_path):
    app = create_app(smollm2_path, name=MODEL, n_ctx=512, kv_memory="40MB", parallel=8, batch_tokens=64,
                     queue_size=64, threads=2, api_key=KEY, sampling={"temperature": 0.8})
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oracle(smollm2_path):
    return Model(smollm2_path, n_ctx=512, n_threads=2)


def engine(live):
    return live.app.state.engine


def wait_idle(live, seconds: float = 20.0) -> None:
    eng = engine(live)
    deadline = time.monotonic() + seconds
    while eng.running or eng.queue_length:
        assert time.monotonic() < deadline, "the engine did not go idle"
        time.sleep(0.05)


MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


# ---- basics -----------------------------------------------------------------------------------

def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]


def test_chat_completion_equals_the_model_greedy(client, oracle):
    got = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    want = oracle.create_chat_completion(MESSAGES, max_tokens=24, temperature=0)
    assert got.choices[0].message.content == want["choices"][0]["message"]["content"]
    assert got.choices[0].finish_reason == want["choices"][0]["finish_reason"]
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert got.usage.completion_tokens == want["usage"]["completion_tokens"]
    assert got.object == "chat.completion" and got.choices[0].message.role == "assistant"


def test_streaming_chat_and_completion_equal_the_whole_response(client):
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    prompt = "The three primary colours are"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks)       # no usage chunk unless asked


def test_completion_logprobs_equal_the_models(client, oracle):
    prompt = "Water boils at"
    got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, logprobs=3)
    want = oracle.create_completion(prompt, max_tokens=6, temperature=0, logprobs=3)
    g, w = got.choices[0].logprobs, want["choices"][0]["logprobs"]
    assert g.tokens == w["tokens"] and g.text_offset == w["text_offset"]
    np.testing.assert_allclose(g.token_logprobs, w["token_logprobs"], rtol=0, atol=1e-5)
    for gt, wt in zip(g.top_logprobs, w["top_logprobs"]):
        assert gt.keys() == wt.keys() and 3 <= len(gt) <= 4
        np.testing.assert_allclose([gt[k] for k in wt], list(wt.values()), rtol=0, atol=1e-5)


def test_chat_logprobs_stream_with_each_token(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=2, stream=True))
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == 8
    for e in entries:
        assert len(e.top_logprobs) == 2 and e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob
        assert e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-6)     # greedy: the top token


def test_stop_strings_cut_the_text(client, oracle):
    prompt = "Count: 1, 2, 3,"
    full = oracle.generate(prompt, max_tokens=16, temperature=0)
    assert " 6," in full
    got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=[" 6,", "zzz"])
    assert got.choices[0].text == full[:full.index(" 6,")]
    assert got.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stop=" 6,",
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[:full.index(" 6,")]


def test_seed_reproduces_a_sampled_reply_and_n_gives_choices(client, oracle):
    def ask(seed, n=1):
        # a broad distribution: two seeds give two replies (with top-p and a low temperature
        # a small model could say the same thing twice)
        return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=1.5,
                                              top_p=1.0, seed=seed, n=n)
    first, again, other = ask(7), ask(7), ask(8)
    assert first.choices[0].message.content == again.choices[0].message.content
    assert other.choices[0].message.content != first.choices[0].message.content
    two = ask(7, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content == first.choices[0].message.content   # choice 0 uses the seed
    assert two.choices[1].message.content != two.choices[0].message.content     # choice 1 the next one
    greedy = client.completions.create(model=MODEL, prompt="Hello,", max_tokens=8, temperature=0, n=2)
    assert greedy.choices[0].text == greedy.choices[1].text
    assert greedy.usage.completion_tokens == 16                       # both choices
    assert greedy.usage.prompt_tokens == len(oracle.tokenize("Hello,"))    # the prompt once


def test_tokenize_and_detokenize(live, oracle):
    headers = {"Authorization": f"Bearer {KEY}"}
    text = "Héllo wörld <|im_start|> 123"
    ids = httpx.post(live.url + "/tokenize", json={"content": text}, headers=headers).json()["tokens"]
    assert ids == oracle.tokenize(text)
    back = httpx.post(live.url + "/detokenize", json={"tokens": ids}, headers=headers).json()["content"]
    assert back == oracle.detokenize(ids)


# ---- errors -----------------------------------------------------------------------------------

def error_of(excinfo) -> dict:
    return excinfo.value.response.json()["error"]


def test_bad_parameters_unknown_model_and_long_prompts_are_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
    assert error_of(e)["param"] == "temperature" and error_of(e)["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert error_of(e)["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * 600, max_tokens=4)
    assert "context" in error_of(e)["message"]          # never silently truncated
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="hi", logit_bias={"999999": 5})
    assert error_of(e)["param"] == "logit_bias"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"content": "no role"}])
    bad_json = httpx.post(str(client.base_url) + "chat/completions", content=b"{not json",
                          headers={"Authorization": f"Bearer {KEY}"})
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]


def test_a_missing_or_wrong_api_key_is_401(live):
    c = openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        c.models.list()
    assert e.value.status_code == 401 and error_of(e)["code"] == "invalid_api_key"
    missing = httpx.post(live.url + "/v1/completions", json={"prompt": "hi"})     # no Authorization header
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(live.url + "/health").json() == {"status": "ok"}      # health needs no key


def test_logit_bias_and_penalties_reach_the_sampler(client, oracle):
    plain = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=1, temperature=0)
    banned = oracle.tokenize(plain.choices[0].text, add_special=False)[0]
    biased = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=1, temperature=0,
                                       logit_bias={str(banned): -100})
    assert biased.choices[0].text != plain.choices[0].text
    want = oracle.generate("The sky is", max_tokens=12, temperature=0, presence_penalty=1.5, frequency_penalty=1.0)
    got = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=12, temperature=0,
                                    presence_penalty=1.5, frequency_penalty=1.0)
    assert got.choices[0].text == want


# ---- the engine under the HTTP layer ----------------------------------------------------------

def test_a_client_disconnecting_mid_stream_frees_its_sequence(live):
    eng = engine(live)
    wait_idle(live)
    body = {"model": MODEL, "prompt": "Once upon a time, a dragon", "max_tokens": 400, "stream": True,
            "temperature": 0, "logit_bias": {str(t): -100 for t in eng.tokenizer.eot_ids}}   # no early end
    with httpx.stream("POST", live.url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as response:
        lines = response.iter_lines()
        data = [line for line, _ in zip(lines, range(12)) if line.startswith("data:")]
        assert len(data) >= 3 and eng.running == 1
    deadline = time.monotonic() + 10
    while eng.running or eng.pool.in_use:
        assert time.monotonic() < deadline, "the disconnected stream still holds its sequence"
        time.sleep(0.02)
    assert eng.steps < 10_000   # it did not run to its 400 tokens after the disconnect
    metrics = httpx.get(live.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'lantern_sequences_finished_total{reason="cancelled"}' in metrics


def test_metrics_count_requests_tokens_and_prefix_cache_hits(live, client):
    headers = {"Authorization": f"Bearer {KEY}"}
    system = "You are a helpful assistant who answers in one short sentence. " * 6
    history = [{"role": "system", "content": system}, {"role": "user", "content": "Hi there!"}]
    before = httpx.get(live.url + "/metrics", headers=headers).text
    first = client.chat.completions.create(model=MODEL, messages=history, max_tokens=8, temperature=0)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "And again?"}]
    client.chat.completions.create(model=MODEL, messages=history, max_tokens=8, temperature=0)
    after = httpx.get(live.url + "/metrics", headers=headers).text

    def value(text, name):
        line = next(l for l in text.splitlines() if l.startswith(name + " ") or l.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])
    # the second turn's prompt starts with the whole first turn: at least the system prompt is reused
    assert value(after, "lantern_prefix_cache_tokens_total") - value(before, "lantern_prefix_cache_tokens_total") >= 64
    assert value(after, "lantern_generation_tokens_total") - value(before, "lantern_generation_tokens_total") >= 2
    for name in ("lantern_queue_length", "lantern_kv_blocks_in_use", "lantern_prefix_cache_hit_rate",
                 "lantern_time_to_first_token_seconds_bucket", "lantern_inter_token_latency_seconds_bucket"):
        assert name in after
    assert 'lantern_requests_total{endpoint="chat",status="200"}' in after


def test_a_full_queue_answers_503(smollm2_path):
    app = create_app(smollm2_path, name=MODEL, n_ctx=256, kv_memory="8MB", parallel=1, batch_tokens=16,
                     queue_size=1, threads=2)
    with LiveServer(app) as live:
        eng = app.state.engine
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=60)
        body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 200, "temperature": 0, "stream": True}
        with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=60) as running:
            next(running.iter_lines())                 # the first stream runs
            waiting = threading.Thread(target=lambda: client.completions.create(
                model=MODEL, prompt="Hello", max_tokens=2))
            waiting.start()
            deadline = time.monotonic() + 10
            while eng.queue_length < 1:                # the second waits in the queue of one
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(openai.InternalServerError) as e:
                client.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
            assert e.value.status_code == 503 and error_of(e)["code"] == "queue_full"
        waiting.join(30)


def test_32_concurrent_streams_match_their_solo_runs(live, client):
    """Mixed prompt lengths, greedy: no failure, and each output is what the request gives alone."""
    words = "the quick brown fox jumps over the lazy dog and keeps running far away".split()
    prompts = [" ".join(words[:3 + (7 * i) % 14] * (1 + i % 4)) for i in range(32)]
    solo = [client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0).choices[0].text
            for p in prompts]

    async def together():
        async_client = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=300)

        async def one(p):
            stream = await async_client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0,
                                                           stream=True)
            return "".join([c.choices[0].text async for c in stream])
        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await async_client.close()
    assert asyncio.run(together()) == solo
    wait_idle(live)
    assert engine(live).pool.in_use == 0


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_resident_memory_stops_growing_over_hundreds_of_requests(live):
    """300 short requests, 16 at a time, after a warm-up of 100: RSS settles."""
    async def run(n):
        async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {KEY}"},
                                     timeout=120) as http:
            sem = asyncio.Semaphore(16)

            async def one(i):
                async with sem:
                    body = {"model": MODEL, "prompt": f"Item {i}: a note about number {i * 7919 % 1000}",
                            "max_tokens": 4, "temperature": 0.7, "seed": i, "stream": i % 2 == 0}
                    r = await http.post("/v1/completions", json=body)
                    assert r.status_code == 200
            await asyncio.gather(*(one(i) for i in range(n)))
    asyncio.run(run(100))
    warm = resident_mib()
    samples = []
    for _ in range(2):
        asyncio.run(run(100))
        samples.append(resident_mib())
    print(f"RSS after warm-up {warm:.1f} MiB, then {samples}")
    assert samples[-1] - warm < 16, f"RSS grew from {warm:.1f} to {samples} MiB"
    assert samples[-1] - samples[0] < 8         # measured: +1.6 then +0.7 MiB


def test_serve_command_checks_its_flags_before_loading(capsys):
    from lanternlm import cli

    assert cli.main(["serve", "--parallel", "0"]) == 1
    assert "--parallel must be at least 1" in capsys.readouterr().err
    assert cli.main(["serve", "--kv-memory", "40%"]) == 1
    assert "not a percentage" in capsys.readouterr().err
    assert cli.main(["serve", "no-such-model-anywhere"]) == 1
    assert "no-such-model-anywhere" in capsys.readouterr().err


def test_response_format_makes_the_reply_json(client):
    """Chat's response_format runs the grammar per sequence inside the batch (constraints.py)."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Name a city."}],
                                       max_tokens=40, temperature=0,
                                       response_format={"type": "json_schema", "json_schema": {"name": "c",
                                                                                               "schema": schema}})
    reply = json.loads(r.choices[0].message.content)
    assert isinstance(reply["city"], str)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, response_format={"type": "yaml"})
    assert error_of(e)["param"] == "response_format"
