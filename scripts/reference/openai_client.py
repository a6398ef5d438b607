"""The official `openai` Python client against a running `dnd serve`: models, completions, chat,
streaming, an adapter created from prompts then used by name, and the client's own exceptions for a
wrong key and an unknown model. Prints one JSON object; exits non-zero on a failed check.

    python openai_client.py --base-url http://127.0.0.1:8000/v1 --key KEY --admin-key ADMIN
"""
import argparse
import json
import time

import urllib.request
import openai
from openai import OpenAI


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--admin-key", required=True)
    a = ap.parse_args()
    client = OpenAI(base_url=a.base_url, api_key=a.key, max_retries=0, timeout=120)
    out = {"openai_version": openai.__version__, "checks": {}}

    def check(name, ok, **detail):
        out["checks"][name] = {"ok": bool(ok), **detail}

    models = [m.id for m in client.models.list().data]
    base = models[0]
    check("models.list", base, models=models)

    c = client.completions.create(model=base, prompt="The capital of France is", max_tokens=8, temperature=0)
    check("completions.create", c.choices[0].text and c.usage.completion_tokens > 0,
          text=c.choices[0].text, finish_reason=c.choices[0].finish_reason, usage=c.usage.model_dump())

    question = [{"role": "user", "content": "Which gas do plants absorb from the air?"}]
    r = client.chat.completions.create(model=base, messages=question, max_tokens=24)
    answer = r.choices[0].message.content
    check("chat.completions.create", answer, text=answer, finish_reason=r.choices[0].finish_reason)

    t = time.time()
    chunks = [ch.choices[0].delta.content or "" for ch in
              client.chat.completions.create(model=base, messages=question, max_tokens=24, stream=True)]
    streamed = "".join(chunks)
    check("chat streaming", streamed == answer and len(chunks) > 2, chunks=len(chunks), text=streamed,
          seconds=round(time.time() - t, 3))

    prompts = ["Which gas do plants absorb from the air?", "What is the boiling point of water at sea level?",
               "Which planet is closest to the sun?", "What force pulls objects toward the Earth?"]
    t = time.time()
    # dnd's own route, outside the OpenAI API: a plain HTTP POST with the admin key.
    req = urllib.request.Request(a.base_url + "/adapters", data=json.dumps({"prompts": prompts}).encode(),
                                 headers={"Authorization": f"Bearer {a.admin_key}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        status, meta = resp.status, json.load(resp)
    check("POST /v1/adapters", status == 201 and meta["id"].startswith("dnd-"), status=status,
          adapter=meta, seconds=round(time.time() - t, 3))
    listed = [m.id for m in client.models.list().data]
    check("adapter listed as a model", meta["id"] in listed)
    r = client.chat.completions.create(model=meta["id"], messages=question, max_tokens=24)
    check("chat with the adapter by name", r.choices[0].message.content, text=r.choices[0].message.content)

    try:
        OpenAI(base_url=a.base_url, api_key="wrong", max_retries=0).models.list()
        check("wrong key raises AuthenticationError", False)
    except openai.AuthenticationError as e:
        check("wrong key raises AuthenticationError", True, message=e.message)
    try:
        client.chat.completions.create(model="no-such-model", messages=question, max_tokens=4)
        check("unknown model raises NotFoundError", False)
    except openai.NotFoundError as e:
        check("unknown model raises NotFoundError", "unknown model" in e.message, message=e.message)

    out["all_ok"] = all(c["ok"] for c in out["checks"].values())
    print(json.dumps(out, indent=2))
    raise SystemExit(0 if out["all_ok"] else 1)


if __name__ == "__main__":
    main()
