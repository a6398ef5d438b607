"""Load test of a running `dnd serve` (loopback): one client alone, then N concurrent clients mixing
completions, chat and adapter creation, each for a fixed time. Reports tokens/s, request latency
percentiles, errors, and the server's peak RSS (VmHWM of --pid). Prints one JSON object.

    python load_test.py --url http://127.0.0.1:8000/v1 --key K --admin-key A --pid PID
"""
import argparse
import json
import random
import statistics
import threading
import time
import urllib.error
import urllib.request

QUESTIONS = ["Which gas do plants absorb from the air?", "What is the boiling point of water?",
             "Name a planet of the solar system.", "Why is the sky blue?", "What do bees make?",
             "How many legs does a spider have?", "What is the capital of Italy?", "What melts ice?"]


def post(url, body, key, timeout=300):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.load(r)


def client(a, rng, stop_at, results, mixed):
    while time.time() < stop_at:
        kind = rng.choices(["chat", "completion", "adapter"], [0.55, 0.4, 0.05 if mixed else 0])[0]
        q = rng.choice(QUESTIONS)
        t = time.time()
        try:
            if kind == "adapter":
                prompts = rng.sample(QUESTIONS, 4) + [f"variant {rng.randrange(10**6)}"]
                post(a.url + "/adapters", {"prompts": prompts}, a.admin_key)
                tokens = 0
            elif kind == "chat":
                _, v = post(a.url + "/chat/completions",
                            {"model": a.model, "messages": [{"role": "user", "content": q}], "max_tokens": a.max_tokens}, a.key)
                tokens = v["usage"]["completion_tokens"]
            else:
                _, v = post(a.url + "/completions", {"model": a.model, "prompt": q + "\nAnswer:", "max_tokens": a.max_tokens}, a.key)
                tokens = v["usage"]["completion_tokens"]
            results.append((kind, time.time() - t, tokens, None))
        except (urllib.error.URLError, OSError, KeyError) as e:
            results.append((kind, time.time() - t, 0, str(e)[:200]))


def phase(a, clients, seconds, mixed):
    results, stop_at = [], time.time() + seconds
    t0 = time.time()
    threads = [threading.Thread(target=client, args=(a, random.Random(i), stop_at, results, mixed))
               for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.time() - t0
    lat = sorted(r[1] for r in results if r[3] is None and r[0] != "adapter")
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None
    return {
        "clients": clients, "seconds": round(wall, 1), "requests": len(results),
        "by_kind": {k: sum(1 for r in results if r[0] == k) for k in ("chat", "completion", "adapter")},
        "errors": [r[3] for r in results if r[3]][:10], "error_count": sum(1 for r in results if r[3]),
        "tokens": sum(r[2] for r in results), "tokens_per_s": round(sum(r[2] for r in results) / wall, 2),
        "latency_p50_s": q(0.5), "latency_p95_s": q(0.95),
        "latency_mean_s": round(statistics.mean(lat), 3) if lat else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--admin-key", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--single-seconds", type=float, default=40)
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    single = phase(a, 1, a.single_seconds, mixed=False)
    many = phase(a, a.clients, a.seconds, mixed=True)
    hwm = next(int(l.split()[1]) for l in open(f"/proc/{a.pid}/status") if l.startswith("VmHWM"))
    out = {"single_client": single, "concurrent": many, "server_peak_rss_mb": round(hwm / 1024, 1),
           "throughput_ratio": round(many["tokens_per_s"] / single["tokens_per_s"], 2) if single["tokens_per_s"] else None,
           "max_tokens": a.max_tokens}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
