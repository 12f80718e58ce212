"""The HTTP API through FastAPI's TestClient: results, batching, limits and errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'seqformer[serve]'")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from seqformer.cli import main  # noqa: E402
from seqformer.config import to_dict  # noqa: E402
from seqformer.errors import ConfigError  # noqa: E402
from seqformer.serve.app import create_app  # noqa: E402
from seqformer.serve.settings import ServeConfig  # noqa: E402
from seqformer.translator import Translator  # noqa: E402

from .serve_helpers import sentences  # noqa: E402


@pytest.fixture(scope="module")
def client(translator):
    with TestClient(create_app(translator, ServeConfig(batch_window_ms=100))) as c:
        yield c


def same(api_hyps: list[dict], translations) -> bool:
    return [h["text"] for h in api_hyps] == [t.text for t in translations] and all(
        abs(h["score"] - t.score) < 1e-4 and h["tokens"] == t.tokens for h, t in zip(api_hyps, translations))


def test_health_info_and_openapi(client, translator):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queued"] == 0
    info = client.get("/info").json()
    assert (info["name"], info["src_lang"], info["tgt_lang"]) == ("seqformer", "en", "fr")
    assert info["version"] and info["model_config"]["d_model"] == translator.model.cfg.d_model
    assert info["limits"]["max_texts"] == ServeConfig().max_texts
    schema = client.get("/openapi.json").json()
    assert {"/translate", "/health", "/info"} <= set(schema["paths"])
    beam = schema["components"]["schemas"]["TranslateRequest"]["properties"]["beam_size"]
    assert beam["maximum"] == ServeConfig().max_beam_size
    assert client.get("/docs").status_code == 200


def test_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="heatmap"' in page.text and 'id="translate"' in page.text


def test_the_page_sends_what_the_service_takes(client):
    """The page's script builds its request body itself (the browser test that runs it is skipped without
    Chromium): every field it sends is one the strict request schema takes, and bodies built as it builds them
    from its default inputs, with and without sampling, are answered (an unknown field is a 422)."""
    import re

    page = client.get("/").text
    script = page[page.index("function requestBody()") :]
    script = script[: script.index("\n}\n")]
    sent = set(re.findall(r"\b([a-z_]+): (?:num\(|\$\(|true)", script))
    assert sent == {"text", "beam_size", "nbest", "length_penalty", "sampling", "split", "attention", "attention_heads",
                    "temperature", "top_k", "top_p"}  # what the script was written to send: found, not assumed
    schema = client.get("/openapi.json").json()["components"]["schemas"]["TranslateRequest"]["properties"]
    assert sent <= set(schema)
    # the two rules the bodies below copy from the script, checked in its text: with sampling no beam size
    # (the service refuses one beside it), and without it no more n-best than beams
    assert re.search(r"if \(body\.sampling\) \{[^}]*delete body\.beam_size", script)
    assert "body.nbest = Math.min(body.nbest, body.beam_size)" in script

    def number(v: str) -> float | int:  # as JavaScript's Number() and JSON.stringify write the input's value
        return int(float(v)) if float(v).is_integer() else float(v)

    inputs = {k: number(v) for k, v in re.findall(r'id="(\w+)"[^>]*value="([^"]*)"', page)}
    beam = {"text": "A dog.", "beam_size": inputs["beam_size"], "nbest": min(inputs["nbest_n"], inputs["beam_size"]),
            "length_penalty": inputs["length_penalty"], "sampling": False, "split": True, "attention": True,
            "attention_heads": True}
    sample = {**{k: v for k, v in beam.items() if k != "beam_size"}, "sampling": True, "nbest": inputs["nbest_n"],
              **{k: inputs[k] for k in ("temperature", "top_k", "top_p")}}
    for body in (beam, sample):
        reply = client.post("/translate", json=body)
        assert reply.status_code == 200, reply.text
        assert len(reply.json()["results"][0]["translations"]) == body["nbest"]


def test_single_text_matches_translator(client, translator):
    text = "The small cat sees a dog."
    body = client.post("/translate", json={"text": text, "beam_size": 4, "nbest": 2}).json()
    [result] = body["results"]
    assert result["input"] == text and len(result["translations"]) == 2
    assert same(result["translations"], translator.translate_nbest([text], beam_size=4, nbest=2)[0])
    assert result["translations"][0]["attention"] is None


def test_search_options_reach_the_search(client, translator):
    """A beam other than the default and a length penalty of 0 (scores are then the raw log-probabilities):
    the service returns what the library does for those options (a dropped option would not)."""
    text = "The small cat sees a dog."
    body = client.post("/translate", json={"text": text, "beam_size": 2, "nbest": 2, "length_penalty": 0}).json()
    hyps = body["results"][0]["translations"]
    assert same(hyps, translator.translate_nbest([text], beam_size=2, nbest=2, length_penalty=0.0)[0])
    assert [h["score"] for h in hyps] == pytest.approx([h["logprob"] for h in hyps], abs=1e-6)
    assert any(len(h["tokens"]) > 1 for h in hyps)  # lengths past 1: the default penalty would change the scores


def test_concurrent_requests_are_batched_and_equal_unbatched_results(client, translator):
    texts = sentences(8, seed=3)
    before = client.get("/health").json()["batches"]
    barrier = threading.Barrier(len(texts))
    replies: dict[int, dict] = {}

    def ask(i: int) -> None:
        barrier.wait()
        replies[i] = client.post("/translate", json={"text": texts[i], "nbest": 2}).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    health = client.get("/health").json()
    assert health["largest_batch"] > 1, "concurrent requests were not batched"
    assert health["batches"] - before < len(texts)
    for i, text in enumerate(texts):
        alone = translator.translate_nbest([text], nbest=2)[0]  # unbatched
        assert same(replies[i]["results"][0]["translations"], alone), text
    # distinct answers: a reply routed to the wrong request would not match
    assert len({replies[i]["results"][0]["translations"][0]["text"] for i in range(len(texts))}) >= len(texts) // 2


def test_several_texts_in_one_request(client, translator):
    texts = sentences(3, seed=4) + [""]
    results = client.post("/translate", json={"texts": texts, "beam_size": 1}).json()["results"]
    assert [r["input"] for r in results] == texts and results[-1]["translations"] == []
    for r, text in zip(results[:-1], texts):
        assert same(r["translations"], translator.translate_nbest([text], beam_size=1)[0])


def test_attention_on_request(client, translator):
    text = "A big dog eats."
    hyp = client.post("/translate", json={"text": text, "attention": True}).json()["results"][0]["translations"][0]
    rows, src = hyp["attention"], hyp["src_tokens"]
    assert len(rows) == len(hyp["tokens"]) + 1 and all(len(r) == len(src) for r in rows)
    assert all(abs(sum(r) - 1) < 1e-4 for r in rows) and src[-1] == "</s>"
    assert hyp["head_attention"] is None
    heads = client.post("/translate", json={"text": text, "attention_heads": True}).json()
    per_head = heads["results"][0]["translations"][0]["head_attention"]
    mc = translator.model.cfg
    assert (len(per_head), len(per_head[0]), len(per_head[0][0])) == (mc.n_decoder_layers, mc.n_heads, len(rows))
    # the values: the translator's, per head (rounded to 4 places by the service) and averaged
    want = translator.translate_nbest([text], need_attention=True, per_head=True)[0][0]
    assert torch.allclose(torch.tensor(per_head), torch.tensor(want.head_attention), atol=1e-4)
    assert torch.allclose(torch.tensor(rows), torch.tensor(want.attention), atol=1e-5)
    assert src == want.src_tokens
    # L x H x T x S numbers per hypothesis: one text at a time (a full batch of them could be gigabytes)
    many = client.post("/translate", json={"texts": [text, text], "attention_heads": True})
    assert many.status_code == 422 and many.json()["field"] == "attention_heads"


def test_per_head_attention_requests_run_alone(translator):
    # each passed the one-text limit, then the batcher put 32 of them in one model call (gigabytes of numbers)
    def together(c: TestClient, body: dict, n: int = 3) -> int:
        barrier = threading.Barrier(n)
        codes: list[int] = []

        def ask() -> None:
            barrier.wait()
            codes.append(c.post("/translate", json=body).status_code)

        threads = [threading.Thread(target=ask) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert codes == [200] * n
        return c.get("/health").json()["largest_batch"]

    with TestClient(create_app(translator, ServeConfig(batch_window_ms=300))) as c:
        assert together(c, {"text": "A big dog eats.", "attention_heads": True}) == 1
        assert together(c, {"text": "A big dog eats.", "attention": True}) > 1  # the averaged matrices still batch


def test_warnings_about_a_requests_text_are_logged_not_kept(client, caplog):
    """As Python warnings, each distinct text (they quote the input) stayed in a registry for the server's life."""
    import logging
    import warnings

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="seqformer.serve"):
        warnings.simplefilter("always")
        assert client.post("/translate", json={"text": "The dog 日本語 runs."}).status_code == 200
    assert "outside the model's vocabulary" in caplog.text and "日本語" in caplog.text
    assert not [w for w in caught if "vocabulary" in str(w.message)]


def test_sampling_with_seed_is_reproducible(client, translator):
    body = {"text": "The old tree.", "sampling": True, "nbest": 3, "seed": 7, "top_k": 10, "temperature": 0.8}
    first, second = (client.post("/translate", json=body).json() for _ in range(2))
    assert first == second and len(first["results"][0]["translations"]) == 3
    # The service's samples are the library's with the same options (a dropped option, e.g. a beam search
    # in place of sampling, would be just as repeatable), and another seed draws others.
    want = translator.translate_nbest(["The old tree."], sampling=True, nbest=3, seed=7, top_k=10, temperature=0.8)
    assert [h["text"] for h in first["results"][0]["translations"]] == [h.text for h in want[0]]
    others = [client.post("/translate", json={**body, "seed": s}).json() for s in (8, 9, 10)]
    assert any(o["results"] != first["results"] for o in others)
    # batched with another text, the same samples (was: one generator per call, shared row by row)
    both = client.post("/translate", json={**{k: v for k, v in body.items() if k != "text"},
                                           "texts": ["A dog runs.", "The old tree."]}).json()
    got, want = both["results"][1]["translations"], first["results"][0]["translations"]
    assert [(h["text"], h["tokens"]) for h in got] == [(h["text"], h["tokens"]) for h in want]
    assert all(abs(g["score"] - w["score"]) < 1e-4 for g, w in zip(got, want))


@pytest.mark.parametrize("body, field", [
    ({"text": "x", "beam_size": 0}, "beam_size"),
    ({"text": "x", "beam_size": 999}, "beam_size"),
    ({"text": "x", "nbest": 3, "beam_size": 2}, "nbest"),
    ({"text": "x", "length_penalty": -1}, "length_penalty"),
    ({"text": "x", "bogus": 1}, "bogus"),
    ({"text": 5}, "text"),
    ({"text": "a" * 1001}, "text"),
    ({"texts": []}, "texts"),
    ({"texts": ["a"] * 33}, "texts"),
    ({"texts": ["fine", "a" * 1001]}, "texts[1]"),
    ({}, "text"),
    ({"text": "a", "texts": ["b"]}, "text"),
    ({"text": "x", "beam_size": "4"}, "beam_size"),  # lax mode coerced these four
    ({"text": "x", "nbest": 2.0}, "nbest"),
    ({"text": "x", "sampling": "yes"}, "sampling"),
    ({"text": "x", "attention": 1}, "attention"),
    ({"text": "x", "temperature": 0.5}, "temperature"),  # these four were ignored without sampling
    ({"text": "x", "top_k": 5}, "top_k"),
    ({"text": "x", "top_p": 0.9}, "top_p"),
    ({"text": "x", "seed": 7}, "seed"),
    ({"text": "x", "sampling": True, "beam_size": 8}, "beam_size"),  # ignored by sampling, which has no beam
    ({"texts": ["a", "b", "c"], "beam_size": 3, "nbest": 3, "attention": True}, "attention"),  # 9 > max_nbest 8
])
def test_bad_fields_give_422_naming_the_field(client, body, field):
    reply = client.post("/translate", json=body)
    assert reply.status_code == 422
    error = reply.json()
    assert error["field"] == field and field in error["error"]


@pytest.mark.parametrize("field, value, says", [
    ("temperature", 0, "greater than or equal to 0.000001"),
    ("temperature", 1e-320, "greater than or equal to 0.000001"),  # 0 in float32
    ("top_p", 1.5, "less than or equal to 1"),
    ("top_k", -1, "greater than or equal to 0"),
])
def test_sampling_options_out_of_range_give_422_saying_the_range(client, field, value, says):
    # with sampling on (without it, any of them is refused as given without sampling, whatever its value)
    reply = client.post("/translate", json={"text": "x", "sampling": True, field: value})
    assert reply.status_code == 422
    error = reply.json()
    assert error["field"] == field and says in error["error"]


def test_an_integer_is_still_a_number(client, translator):
    reply = client.post("/translate", json={"text": "The dog runs.", "length_penalty": 1, "temperature": 1})
    assert reply.status_code == 200


@pytest.mark.parametrize("field", ["temperature", "top_p", "length_penalty"])
@pytest.mark.parametrize("value", [b"NaN", b"Infinity"])
def test_non_finite_numbers_give_422_not_500(client, field, value):
    """JSON has no NaN / Infinity, but Python's parser takes them: the 422 echoing them back must still encode."""
    body = b'{"text": "x", "sampling": true, "%s": %s}' % (field.encode(), value)
    reply = client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["field"] == field
    assert "finite number" in reply.json()["error"]  # NaN said "should be less than or equal to 5"


def test_a_lone_surrogate_gives_422_not_500(client):
    """'\\ud800' is valid JSON but no Unicode text: the 422 echoing it back must still encode (was a 500)."""
    reply = client.post("/translate", content=b'{"text": "caf\\ud800"}', headers={"content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["field"] == "text"
    assert reply.json()["detail"][0]["input"] == "caf\\ud800"  # the escape, as text


def test_a_deeply_nested_body_gives_422_not_500(client):
    """600 levels of [[[...]]] (1.2 KB) overflowed the stack while the 422 echoed them back: a 500."""
    body = b'{"text": ' + b"[" * 600 + b"]" * 600 + b"}"
    reply = client.post("/translate", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["field"] == "text"
    assert "..." in str(reply.json()["detail"][0]["input"])  # the echo is cut


def test_invalid_json_and_unknown_route(client):
    reply = client.post("/translate", content=b"{not json", headers={"content-type": "application/json"})
    assert reply.status_code == 422 and reply.json()["error"] and reply.json()["field"] == "body"
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "Not Found"


def test_body_over_the_limit_gives_413(translator):
    with TestClient(create_app(translator, ServeConfig(max_body_bytes=200))) as c:
        assert c.post("/translate", json={"text": "short"}).status_code == 200
        big = {"text": "x" * 300}
        reply = c.post("/translate", json=big)
        assert reply.status_code == 413 and reply.json()["field"] == "body"
        streamed = c.post("/translate", content=iter([b'{"text": "', b"y" * 300, b'"}']),
                          headers={"content-type": "application/json"})  # chunked: no content-length
        assert streamed.status_code == 413


class SlowTranslator:
    """Holds the model thread inside translate_nbest until released."""

    def __init__(self, inner) -> None:
        self.inner, self.dir, self.model = inner, inner.dir, inner.model
        self.entered, self.release = threading.Event(), threading.Event()

    def translate_nbest(self, texts, **kwargs):
        self.entered.set()
        self.release.wait(20)
        return self.inner.translate_nbest(texts, **kwargs)


def test_full_queue_gives_503_and_recovers(translator):
    slow = SlowTranslator(translator)
    cfg = ServeConfig(max_batch=1, batch_window_ms=0, max_queue=1, max_texts=1)
    with TestClient(create_app(slow, cfg)) as c:
        replies: dict[str, int] = {}

        def ask(name: str) -> None:
            replies[name] = c.post("/translate", json={"text": f"The {name} dog."}).status_code

        busy = threading.Thread(target=ask, args=("busy",))
        busy.start()
        assert slow.entered.wait(10)
        waiting = threading.Thread(target=ask, args=("waiting",))
        waiting.start()
        deadline = time.monotonic() + 10
        while c.app.state.batcher.queued < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = c.post("/translate", json={"text": "One too many."})
        assert refused.status_code == 503 and "overloaded" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        slow.release.set()
        busy.join(20)
        waiting.join(20)
        assert replies == {"busy": 200, "waiting": 200}
        assert c.get("/health").json()["queued"] == 0


def test_the_queue_counts_sentences(translator):
    slow = SlowTranslator(translator)
    cfg = ServeConfig(max_batch=1, batch_window_ms=0, max_queue=4, max_texts=1)
    with TestClient(create_app(slow, cfg)) as c:
        codes: list[int] = []
        busy = threading.Thread(target=lambda: codes.append(c.post("/translate", json={"text": "Busy."}).status_code))
        busy.start()
        assert slow.entered.wait(10)
        text = "The dog runs. The cat sleeps. The bird sings."
        waiting = threading.Thread(target=lambda: codes.append(c.post("/translate", json={"text": text}).status_code))
        waiting.start()
        deadline = time.monotonic() + 10
        while c.app.state.batcher.queued < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert c.get("/health").json()["queued"] == 3  # was 1: one text
        assert c.post("/translate", json={"text": "One. Two."}).status_code == 503
        slow.release.set()
        busy.join(20)
        waiting.join(20)
        assert codes == [200, 200]


def test_model_failure_gives_json_500(translator):
    class Broken(SlowTranslator):
        def translate_nbest(self, texts, **kwargs):
            raise RuntimeError("weights on fire")

    with TestClient(create_app(Broken(translator)), raise_server_exceptions=False) as c:
        reply = c.post("/translate", json={"text": "x"})
        assert reply.status_code == 500 and reply.json()["error"] == "internal error while translating"


def test_serve_config_limits_are_checked():
    with pytest.raises(ConfigError, match="max_queue"):
        ServeConfig(max_queue=4, max_texts=8)
    with pytest.raises(ConfigError, match="port"):
        ServeConfig(port=70000)
    assert ServeConfig().loopback and not ServeConfig(host="0.0.0.0").loopback


def test_serve_without_model_and_no_bundled_model_fails_clearly(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("seqformer.serve.server.default_model_dir", lambda: tmp_path / "missing")
    assert main(["serve", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "bundled model is not installed" in err and "--model" in err


def test_attention_of_multi_sentence_text_needs_split_off(client):
    text = "The dog sees a cat. The bird eats."
    split = client.post("/translate", json={"text": text, "attention": True}).json()["results"][0]["translations"]
    assert len(split) == 1 and split[0]["attention"] is None  # sentences joined: no single matrix
    whole = client.post("/translate", json={"text": text, "attention": True, "split": False}).json()
    hyp = whole["results"][0]["translations"][0]
    assert len(hyp["attention"]) == len(hyp["tokens"]) + 1


def test_cli_serve_answers_over_http(tiny_model_dir):
    port = _free_port()
    cmd = [sys.executable, "-m", "seqformer.cli", "serve", "--model", str(tiny_model_dir), "--port", str(port),
           "--threads", "1", "--no-access-log", "--max-texts", "4", "--max-queue", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # generous: a loaded CI machine starts Python slowly
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        reply = httpx.post(url + "/translate", json={"texts": ["A dog.", "A cat."]}, timeout=30)
        assert reply.status_code == 200
        # the model it was given (not the bundled one), with the default search
        want = Translator.load(tiny_model_dir).translate_nbest(["A dog.", "A cat."])
        got = [r["translations"] for r in reply.json()["results"]]
        assert [[h["text"] for h in hyps] for hyps in got] == [[t.text for t in hyps] for hyps in want]
        assert [h["score"] for hyps in got for h in hyps] == pytest.approx([t.score for hyps in want for t in hyps],
                                                                           abs=1e-5)
        info = httpx.get(url + "/info").json()
        assert info["model_config"] == to_dict(Translator.load(tiny_model_dir).model.cfg)
        assert info["limits"]["max_texts"] == 4 and info["limits"]["max_queue"] == 8
        too_many = httpx.post(url + "/translate", json={"texts": ["a"] * 5}, timeout=30)
        assert too_many.status_code == 422 and too_many.json()["field"] == "texts"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "Uvicorn running on http://127.0.0.1" in err


def test_serve_on_a_port_in_use_fails_at_once_in_one_line(tiny_model_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny_model_dir), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err  # was uvicorn's log line, exit 3
    assert "Traceback" not in err


def test_serve_on_a_host_that_does_not_resolve_is_one_line(tiny_model_dir, capsys, monkeypatch):
    def no_such_host(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)  # no real lookup: the test runs without a network
    assert main(["serve", "--model", str(tiny_model_dir), "--host", "no-such-host.invalid", "--port", "0"]) == 1
    assert "--host no-such-host.invalid: cannot resolve it" in capsys.readouterr().err


def test_localhost_is_served_on_every_address_it_resolves_to():
    from seqformer.serve.server import bind

    port = _free_port()
    sockets = bind(ServeConfig(host="localhost", port=port))
    try:  # one address only (often ::1 first) left 127.0.0.1 refused
        want = {family for family, *_ in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
        assert {s.family for s in sockets} == want and socket.AF_INET in want
    finally:
        for s in sockets:
            s.close()


def test_port_0_listens_on_the_first_address_that_binds(monkeypatch):
    from seqformer.serve.server import bind

    real = socket.getaddrinfo
    infos = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (host, 0)) for host in ("192.0.2.1", "127.0.0.1")]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: infos)  # 192.0.2.1: no interface has it
    sockets = bind(ServeConfig(host="localhost", port=0))  # was: only the first tried, "no usable address"
    monkeypatch.setattr(socket, "getaddrinfo", real)
    try:
        assert [s.getsockname()[0] for s in sockets] == ["127.0.0.1"]
    finally:
        for s in sockets:
            s.close()


def test_the_ipv6_wildcard_serves_ipv4_clients_too():
    from seqformer.serve.server import bind

    try:  # decided before bind(), so that bind's own failure fails the test (not skips it)
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
    except OSError:
        pytest.skip("no IPv6 here")
    sockets = bind(ServeConfig(host="::", port=_free_port()))
    try:  # IPV6_V6ONLY was set on every IPv6 socket: "::" refused IPv4 clients (uvicorn's "::" takes both)
        port = sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        for s in sockets:
            s.close()


def test_a_second_service_on_the_same_port_fails_before_loading_its_model():
    from seqformer.serve.server import bind

    cfg = ServeConfig(host="127.0.0.1", port=_free_port())
    first = bind(cfg)  # the first service, still loading its model
    try:  # SO_REUSEADDR let the second bind too: it failed only at listen(), after loading its model
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1"):
            bind(cfg)
    finally:
        for s in first:
            s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The real uvicorn server (not TestClient: only a real connection can hang up) in a thread, on a free port."""

    def __init__(self, translator, cfg: ServeConfig, drain_s: float = 60.0) -> None:
        from seqformer.serve.server import bind, make_server

        self.cfg = ServeConfig(**{**cfg.__dict__, "host": "127.0.0.1", "port": 0, "access_log": False})
        self.sockets = bind(self.cfg)
        self.url = f"http://127.0.0.1:{self.sockets[0].getsockname()[1]}"
        self.server = make_server(translator, self.cfg, drain_s=drain_s, grace_s=60.0)  # no timing races on CI
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": self.sockets}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.server.started
        return self

    def stop(self) -> None:
        self.server.should_exit = True  # what SIGINT / SIGTERM set

    def __exit__(self, *exc) -> None:
        self.stop()
        self.thread.join(30)

    def batcher(self):
        return self.server.config.app.state.batcher


class RecordingSlowTranslator(SlowTranslator):
    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.seen: list[str] = []

    def translate_nbest(self, texts, **kwargs):
        self.seen += list(texts)
        return super().translate_nbest(texts, **kwargs)


def _post_in_thread(url: str, text: str, replies: dict, timeout: float = 20) -> threading.Thread:
    def ask() -> None:
        try:
            r = httpx.post(f"{url}/translate", json={"text": text}, timeout=timeout)
            replies[text] = (r.status_code, r.headers.get("content-type"), r.headers.get("retry-after"))
        except httpx.TimeoutException:
            replies[text] = "timed out"

    t = threading.Thread(target=ask)
    t.start()
    return t


def _wait_for(cond, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_a_client_that_hangs_up_leaves_the_queue_and_is_never_translated(translator, caplog):
    """Was: neither uvicorn nor Starlette cancels a handler whose client went away, so an abandoned request
    kept its place in the queue (live clients got 503s) and was translated for nobody."""
    import logging

    slow = RecordingSlowTranslator(translator)
    with caplog.at_level(logging.INFO), LiveServer(slow, ServeConfig(max_batch=1, batch_window_ms=0)) as live:
        replies: dict = {}
        busy = _post_in_thread(live.url, "The busy dog.", replies)
        assert slow.entered.wait(10)
        body = b'{"text": "The impatient cat."}'
        host, port = live.sockets[0].getsockname()[:2]
        with socket.create_connection((host, port), timeout=10) as conn:  # a raw client, to hang up at will
            conn.sendall(b"POST /translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert _wait_for(lambda: live.batcher().queued == 1, 10)  # it waits behind the busy one
        assert _wait_for(lambda: live.batcher().queued == 0, 10), "the abandoned request still holds its place"
        slow.release.set()
        busy.join(20)
        assert replies["The busy dog."][0] == 200
        after = httpx.post(f"{live.url}/translate", json={"text": "The last bird."}, timeout=20)
        assert after.status_code == 200
    assert slow.seen == ["The busy dog.", "The last bird."]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors  # the hang-up is a quiet 499, not an "Exception in ASGI application"


def test_shutdown_serves_the_queue_then_refuses_in_json(translator):
    """At shutdown (SIGINT / SIGTERM) the queued requests are still served; a request arriving after it began
    gets a JSON 503 with Retry-After (was: uvicorn cancelled waiting requests after 5 s: plain-text 500s)."""
    slow = SlowTranslator(translator)
    with LiveServer(slow, ServeConfig(max_batch=1, batch_window_ms=0)) as live:
        replies: dict = {}
        client = httpx.Client(base_url=live.url, timeout=20)
        client.get("/health")  # a kept-alive connection, open before the shutdown
        threads = [_post_in_thread(live.url, "The busy dog.", replies)]
        assert slow.entered.wait(10)
        threads += [_post_in_thread(live.url, t, replies) for t in ("A queued cat.", "A queued bird.")]
        assert _wait_for(lambda: live.batcher().queued == 2, 5)
        live.stop()
        assert _wait_for(lambda: live.batcher().closed, 5)  # the shutdown has begun
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "draining"  # send new work elsewhere
        late = client.post("/translate", json={"text": "Too late."})
        assert late.status_code == 503 and "shutting down" in late.json()["error"]
        assert late.headers["retry-after"] == "1"
        slow.release.set()
        for t in threads:
            t.join(20)
        assert {k: v[0] for k, v in replies.items()} == {"The busy dog.": 200, "A queued cat.": 200,
                                                         "A queued bird.": 200}


def test_shutdown_answers_what_the_drain_time_leaves_queued_with_json_503(translator):
    slow = SlowTranslator(translator)
    with LiveServer(slow, ServeConfig(max_batch=1, batch_window_ms=0), drain_s=0.3) as live:
        replies: dict = {}
        threads = [_post_in_thread(live.url, "The busy dog.", replies)]
        assert slow.entered.wait(10)
        threads.append(_post_in_thread(live.url, "A queued cat.", replies))
        assert _wait_for(lambda: live.batcher().queued == 1, 5)
        live.stop()
        # uvicorn alone: after its 5 s grace, a plain-text 500 for both
        assert _wait_for(lambda: "A queued cat." in replies, 8)
        slow.release.set()  # the running batch still finishes and is answered
        for t in threads:
            t.join(20)
    assert replies["A queued cat."] == (503, "application/json", "1")
    assert replies["The busy dog."][0] == 200


class CountingTranslator:
    """Records the PyTorch thread count each model call runs with, and how many calls overlap."""

    def __init__(self, inner) -> None:
        self.inner, self.dir, self.model = inner, inner.dir, inner.model
        self.threads: list[int] = []
        self.inside, self.most_inside = 0, 0
        self._lock = threading.Lock()

    def translate_nbest(self, texts, **kwargs):
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.append(torch.get_num_threads())
        try:
            time.sleep(0.05)  # long enough for the other stream's batch to start meanwhile
            return self.inner.translate_nbest(texts, **kwargs)
        finally:
            with self._lock:
                self.inside -= 1


def test_streams_split_the_threads_and_keep_the_results(translator):
    texts = sentences(6, seed=5)
    counting = CountingTranslator(translator)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = ServeConfig(streams=2, max_batch=1, batch_window_ms=0)
        with TestClient(create_app(counting, cfg)) as c:
            replies: dict[int, dict] = {}
            barrier = threading.Barrier(len(texts))

            def ask(i: int) -> None:
                barrier.wait()
                replies[i] = c.post("/translate", json={"text": texts[i]}).json()

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(texts))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        # PyTorch's count is per thread, new threads starting from the last one set: restored for them
        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(torch.get_num_threads).result() == 2
    finally:
        torch.set_num_threads(before)
    assert counting.most_inside == 2 and set(counting.threads) == {1}  # two batches at once, 2 // 2 threads each
    for i, text in enumerate(texts):
        assert same(replies[i]["results"][0]["translations"], translator.translate_nbest([text])[0]), text


def test_streams_are_at_most_one_per_thread(translator):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        app = create_app(translator, ServeConfig(streams=4))
        assert app.state.batcher.streams == 2
        with TestClient(app) as c:
            assert c.get("/info").json()["limits"]["streams"] == 2  # what runs, not what was asked for
    finally:
        torch.set_num_threads(before)


def test_streams_below_one_are_refused():
    with pytest.raises(ConfigError, match="streams must be >= 1, found 0"):
        ServeConfig(streams=0)
