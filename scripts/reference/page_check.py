"""The drag-and-drop page of `dnd serve`, driven in headless Chromium (Playwright): a prompts file is
dropped on the drop zone, the adapter is generated, a question is sent, and answers from the base model
and from the adapter come back. Saves a screenshot and prints one JSON object; exits non-zero on failure.

    python page_check.py --url http://127.0.0.1:8000/ --key KEY --chromium /usr/bin/chromium --shot page.png
"""
import argparse
import json
import time

from playwright.sync_api import sync_playwright

PROMPTS = "\n".join([
    "Which gas do plants absorb from the air?",
    "What is the boiling point of water at sea level?",
    "Which planet is closest to the sun?",
    "What force pulls objects toward the Earth?",
    "Which organ pumps blood through the body?",
])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--shot", required=True)
    a = ap.parse_args()
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(a.url)
        page.fill("#key", a.key)
        page.dispatch_event("#key", "change")
        # A real drop event carrying a file, as a user dragging prompts.txt from their desktop makes.
        dt = page.evaluate_handle(
            "(text) => { const dt = new DataTransfer();"
            " dt.items.add(new File([text], 'prompts.txt', {type: 'text/plain'})); return dt; }", PROMPTS)
        page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
        page.wait_for_function("document.getElementById('status').textContent.includes('5 prompts')")
        out["after_drop"] = page.text_content("#status")
        t = time.time()
        page.click("#create")
        page.wait_for_function("document.getElementById('adapter').textContent.startsWith('dnd-')", timeout=60000)
        out["adapter"] = page.text_content("#adapter")
        out["adapter_seconds_in_page"] = round(time.time() - t, 2)
        page.fill("#message", "Which gas do plants absorb from the air?")
        page.click("#send")
        page.wait_for_function("document.getElementById('out-adapter').textContent.length > 0"
                               " && !document.getElementById('send').disabled", timeout=120000)
        out["base_answer"] = page.text_content("#out-base")
        out["adapter_answer"] = page.text_content("#out-adapter")
        page.screenshot(path=a.shot, full_page=True)
        browser.close()
    out["ok"] = bool(out["adapter"].startswith("dnd-") and out["base_answer"] and out["adapter_answer"]
                     and "error" not in out["adapter_answer"].lower())
    print(json.dumps(out, indent=2))
    raise SystemExit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
