#!/usr/bin/env python3
"""Checks that every probermesh command line the packaging kit writes uses real flags.

    python3 scripts/check-flags.py BINARY

Reads the command lines of the systemd units and drop-in, the /etc/default files, the
supervisor program, install-agent.sh, the Dockerfile and the Kubernetes manifests, and parses
each one as the binary would: the options and switches `probermesh server --help` and
`probermesh agent --help` list, an option followed by its value. Exits 1 naming every
unknown flag, missing value or stray argument. Needs PyYAML (the venv of check-packaging.sh).
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def grammar(binary, sub):
    """{flag: takes_value} from the usage line of `probermesh SUB --help`."""
    out = subprocess.run([binary, sub, "--help"], capture_output=True, text=True, check=True).stdout
    usage = out.split("\n\n", 1)[0]
    flags = {m.group(1): bool(m.group(2)) for m in re.finditer(r"\[--([a-z0-9-]+)( <[^>]+>)?\]", usage)}
    if len(flags) < 10:
        raise SystemExit(f"could not read the flags of `{binary} {sub} --help`")
    return flags


def command_lines():
    """(where, argv) of every probermesh command line in the kit."""
    found = []

    def add(where, argv):
        found.append((where, argv))

    env = {}
    for name, key in (("default-server", "PROBERMESH_SERVER_ARGS"), ("default-agent", "PROBERMESH_AGENT_ARGS")):
        for line in (ROOT / "packaging/debian" / name).read_text().splitlines():
            if line.startswith(key + "="):
                env[key] = shlex.split(line.split("=", 1)[1])[0]
    units = sorted((ROOT / "packaging/systemd").rglob("*.service")) + sorted((ROOT / "packaging/systemd").rglob("*.conf"))
    for unit in units:
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart=") and line != "ExecStart=":
                words = []
                for word in shlex.split(line.split("=", 1)[1]):
                    if word.startswith("$"):
                        words += shlex.split(env[word[1:]])
                    else:
                        words.append(word)
                add(unit.relative_to(ROOT), words)
    for line in (ROOT / "packaging/supervisor/probermesh-agent.conf").read_text().splitlines():
        if line.startswith("command="):
            add("packaging/supervisor/probermesh-agent.conf", shlex.split(line.split("=", 1)[1]))
    script = (ROOT / "scripts/install-agent.sh").read_text()
    args = re.search(r'^args="([^"]+)"', script, re.M).group(1)
    upgrade = re.search(r'^\s*upgrade_flags="([^"]+)"', script, re.M).group(1)
    add("scripts/install-agent.sh", ["probermesh", "agent"] + shlex.split(args.replace("$", "X")) + shlex.split(upgrade))
    for line in (ROOT / "packaging/docker/Dockerfile").read_text().splitlines():
        if line.startswith("CMD "):
            add("packaging/docker/Dockerfile CMD", ["probermesh"] + json.loads(line[4:]))
    for manifest in sorted((ROOT / "packaging/kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(manifest.read_text()):
            spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                if not container.get("image", "").startswith("probermesh"):
                    continue
                argv = container.get("command", []) + container.get("args", [])
                if argv[:2] == ["/bin/sh", "-c"]:
                    text = argv[2].replace("exec ", "", 1)
                    text = re.sub(r'"\$\([^)]*\)"', "SUBSTITUTED", text)
                    argv = shlex.split(text.replace("$", "X"))
                else:
                    argv = ["probermesh"] + argv
                add(f"{manifest.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}", argv)
    return found


def main():
    binary = sys.argv[1]
    grammars = {sub: grammar(binary, sub) for sub in ("server", "agent")}
    problems, checked = [], 0
    for where, argv in command_lines():
        subs = [i for i, word in enumerate(argv) if word in grammars]
        if not subs:
            problems.append(f"{where}: no server or agent subcommand in {argv}")
            continue
        sub = argv[subs[0]]
        flags = grammars[sub]
        words = argv[subs[0] + 1 :]
        i = 0
        while i < len(words):
            word = words[i]
            if not word.startswith("--"):
                problems.append(f"{where}: stray argument {word!r}")
            elif word[2:] not in flags:
                problems.append(f"{where}: {word} is not a flag of `probermesh {sub}`")
            elif flags[word[2:]]:
                if i + 1 >= len(words) or words[i + 1].startswith("--"):
                    problems.append(f"{where}: {word} needs a value")
                i += 1
            i += 1
        checked += 1
    if checked < 8:
        problems.append(f"only {checked} command lines found")
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"flags: {checked} command lines use only flags of `probermesh server/agent --help`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
