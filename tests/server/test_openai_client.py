#!/usr/bin/env python3
"""Runs openai_client_test.mjs, the official `openai` npm client against the real server.

Installs the pinned client with `npm install --prefix NODE_DIR` (a folder in the build tree,
reused while it holds the pinned version), makes a model with a stored chat template, starts
`mixattn serve` on a free loopback port and runs the Node test. Exits 77 (CTest: skipped) only
when npm cannot reach its registry to install the client.

Usage: test_openai_client.py --mixattn PATH --workdir DIR --node-dir DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

from serverlib import Server, make_model

OPENAI_VERSION = "5.23.2"  # the official client, pinned
SKIPPED = 77
CHAT_TEMPLATE = {"system": "<|system|>{content}\n", "user": "<|user|>{content}\n",
                 "assistant": "<|assistant|>{content}\n", "generation_prompt": "<|assistant|>",
                 "stop": ["<|user|>", "\n\n"]}


def installed_version(node_dir):
    try:
        with open(os.path.join(node_dir, "node_modules", "openai", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return None


def install_client(node_dir):
    """Returns None when the pinned client is ready, else why it is not (and whether the
    registry was unreachable)."""
    if installed_version(node_dir) == OPENAI_VERSION:
        return None, False
    os.makedirs(node_dir, exist_ok=True)
    result = subprocess.run(["npm", "install", "--prefix", node_dir, "--no-audit", "--no-fund",
                             f"openai@{OPENAI_VERSION}"], capture_output=True, text=True,
                            timeout=300)
    if result.returncode == 0 and installed_version(node_dir) == OPENAI_VERSION:
        return None, False
    ping = subprocess.run(["npm", "ping"], capture_output=True, text=True, timeout=120)
    return result.stderr[-2000:], ping.returncode != 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mixattn", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--node-dir", required=True)
    args = parser.parse_args()
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            print(f"FAIL: {tool} is not installed (scripts/setup.sh installs nodejs and npm)")
            return 1
    problem, unreachable = install_client(args.node_dir)
    if problem is not None and unreachable:
        print(f"SKIPPED: npm cannot reach its registry to install openai@{OPENAI_VERSION}; "
              f"the openai-client test did not run.\n{problem}")
        return SKIPPED
    if problem is not None:
        print(f"FAIL: npm install openai@{OPENAI_VERSION} failed:\n{problem}")
        return 1

    model = make_model(args.mixattn, args.workdir, chat_template=CHAT_TEMPLATE)
    api_key = "client-test-key"
    server = Server(args.mixattn, model, api_key=api_key)
    try:
        test = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai_client_test.mjs")
        result = subprocess.run(["node", test, "--node-prefix", args.node_dir, "--base-url",
                                 server.base_url, "--api-key", api_key, "--mixattn",
                                 args.mixattn, "--model", model], timeout=300)
        code = server.terminate()
        if code != 0:
            print(f"FAIL: the server exited {code} after SIGTERM:\n{server.stderr()[-2000:]}")
            return 1
        return result.returncode
    finally:
        if server.process.poll() is None:
            server.process.kill()


if __name__ == "__main__":
    sys.exit(main())
