"""The server as users run it (`python -m mcp_server --bundled-plugins`) and the `mcp` CLI."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    address = f"127.0.0.1:{free_port()}"
    db = tmp_path_factory.mktemp("store") / "mcp.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "mcp_server", "--bundled-plugins", "--listen", address, "--store", f"sqlite:///{db}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    for line in process.stdout:
        if "listening on" in line or time.monotonic() > deadline:
            break
    yield address, process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=15)


def mcp(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_server.cli.main", "--server", address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_the_cli_shows_the_calls_waiting_in_line_for_a_key(server_process, tmp_path):
    address, _ = server_process
    assert mcp(address, "ratelimit", "put", "line:cli", "--limit", "1", "--period", "10s").returncode == 0
    spec = tmp_path / "in-line.yaml"
    spec.write_text(
        "workflow_id: in-line\nroot:\n  id: s\n  step:\n    protocol: summarize\n"
        "    input: \"{'text': 'One. Two.'}\"\n    rate_limits: [{key: 'line:cli'}]\n"
    )
    assert mcp(address, "workflow", "apply", str(spec)).returncode == 0
    submitted = [json.loads(mcp(address, "--json", "task", "submit", "in-line").stdout)["task"] for _ in range(2)]
    got = mcp(address, "ratelimit", "get", "line:cli")  # the first took the unit; the second waits 10 s
    assert got.returncode == 0 and got.stdout.strip().endswith("1 call waiting in line"), got
    assert json.loads(mcp(address, "--json", "ratelimit", "get", "line:cli").stdout)["rate_limits"][0]["waiting"] == "1"
    assert mcp(address, "task", "cancel", submitted[1]["task_id"]).returncode == 0
    assert mcp(address, "ratelimit", "delete", "line:cli").returncode == 0


def test_cli_applies_every_example_and_runs_the_showcase(server_process):
    address, _ = server_process
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        if example.name.startswith("llm_"):
            continue  # needs the llm plugin and a model server: tests/integration/test_llm_plugin.py runs it
        applied = mcp(address, "workflow", "apply", str(example))
        assert applied.returncode == 0, applied.stderr
        assert "version" in applied.stdout
    text = "Dr. Ada Lovelace works at Acme Corp in London. I am really happy with the results. The team was delighted."
    watched = mcp(address, "task", "submit", "showcase", "--input", json.dumps({"text": text}), "--watch")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "TRANSITION_TAKEN" in watched.stdout and "SUPERVISOR_DECISION" in watched.stdout
    assert "COMPLETED" in watched.stdout
    as_json = mcp(address, "--json", "task", "list", "--status", "completed")
    tasks = json.loads(as_json.stdout)["tasks"]
    assert tasks and tasks[0]["workflow_id"] == "showcase"
    shown = json.loads(mcp(address, "--json", "task", "get", tasks[0]["task_id"]).stdout)
    assert shown["status"] == "TASK_STATUS_COMPLETED" and len(shown["result"]) == 3  # one per entity found


def test_cli_draws_workflows_and_task_runs_as_graphs(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "showcase.yaml")).returncode == 0
    mermaid = mcp(address, "workflow", "graph", "showcase").stdout
    assert (
        mermaid.startswith("flowchart TD") and "subgraph" in mermaid and "output.score #gt;= 0.8" in mermaid
    )  # Mermaid's entity for >
    assert '-.->|"retry"|' in mermaid  # the supervisor's retry edge
    dot = mcp(address, "workflow", "graph", "showcase", "--format", "dot").stdout
    assert dot.startswith("digraph workflow") and "cluster_" in dot
    text = json.dumps({"text": "Grace Hopper works at Remington Rand. She was very happy."})
    submitted = mcp(address, "--json", "task", "submit", "showcase", "--input", text)
    task_id = json.loads(submitted.stdout)["task"]["task_id"]
    assert mcp(address, "task", "watch", task_id, "--plain").returncode == 0
    run_graph = mcp(address, "task", "graph", task_id).stdout
    assert "classDef completed" in run_graph and "root_drafting_reply" in run_graph


def test_cli_reports_field_violations_and_exits_non_zero(server_process, tmp_path):
    address, _ = server_process
    bad = tmp_path / "bad.yaml"
    bad.write_text("workflow_id: bad\nroot:\n  id: r\n  sequence: {}\n")
    out = mcp(address, "workflow", "apply", str(bad))
    assert out.returncode == 1
    assert "INVALID_ARGUMENT" in out.stderr and "workflow.root.sequence.children" in out.stderr
    missing = mcp(address, "task", "get", "no-such-task")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


EXAMPLE_INPUTS = {
    "sequence.yaml": (
        "text-pipeline",
        {"text": "The launch went well. Customers were delighted. Support had a calm week. Sales grew."},
    ),
    "parallel.yaml": ("analyse-all", {"text": "Grace Hopper works at Remington Rand. She was very happy."}),
    "map.yaml": ("review-moods", {"reviews": ["I love it", "Terrible and broken", "It is fine"]}),
    "supervise.yaml": ("supervised-draft", {"topic": "tea", "points": ["green tea is mild", "black tea is strong"]}),
    "write_loop.yaml": ("write-loop", {"topic": "tea", "points": ["it is really very good", "it is is cheap"]}),
    "adaptive.yaml": ("triage", {"text": "I am furious, the product is broken and awful."}),
    "subworkflow.yaml": ("digest", {"text": "The launch went well. Sales grew.", "reviews": ["I love it", "Awful"]}),
}
# the workflows an example runs as subworkflows, applied before it
REQUIRES = {"subworkflow.yaml": ("sequence.yaml", "map.yaml")}


@pytest.mark.parametrize("example", sorted(EXAMPLE_INPUTS))
def test_every_example_runs_to_completion(server_process, example):
    address, _ = server_process
    workflow_id, data = EXAMPLE_INPUTS[example]
    for needed in (*REQUIRES.get(example, ()), example):
        assert mcp(address, "workflow", "apply", str(ROOT / "examples" / needed)).returncode == 0
    out = mcp(address, "--json", "task", "submit", workflow_id, "--input", json.dumps(data), "--watch")
    assert out.returncode == 0, (workflow_id, out.stdout[-2000:], out.stderr)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[-1]["type"] == "TASK_EVENT_TYPE_COMPLETED", (workflow_id, events[-1])


def test_the_cli_answers_a_waiting_task_and_lists_the_ones_that_wait(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "approval.yaml")).returncode == 0
    rejected = mcp(address, "task", "submit", "approval", "--input", '{"topic": 3, "points": []}')
    assert rejected.returncode == 1 and "INPUT_REJECTED" in rejected.stderr, rejected.stderr
    assert "input_data.topic" in rejected.stderr and "input_data.points" in rejected.stderr
    data = json.dumps({"topic": "tea", "points": ["green tea is mild"]})
    task_id = json.loads(mcp(address, "--json", "task", "submit", "approval", "--input", data).stdout)["task"][
        "task_id"
    ]
    deadline = time.monotonic() + 20
    while task_id not in mcp(address, "--json", "task", "list", "--status", "waiting").stdout:
        assert time.monotonic() < deadline, "the task never waited"
        time.sleep(0.1)
    refused = mcp(address, "task", "signal", task_id, "approval", "--data", '{"approved": "yes"}')
    assert refused.returncode == 1 and "payload.approved" in refused.stderr
    kept = mcp(address, "task", "delete", task_id)
    assert kept.returncode == 1 and "TASK_NOT_FINISHED" in kept.stderr and "cancel it first" in kept.stderr
    sent = mcp(address, "task", "signal", task_id, "approval", "--data", '{"approved": true, "note": "fine"}')
    assert sent.returncode == 0 and "taken by approval/approve" in sent.stdout, sent.stdout + sent.stderr
    assert mcp(address, "task", "watch", task_id, "--plain").returncode == 0
    result = json.loads(mcp(address, "--json", "task", "get", task_id).stdout)["result"]
    assert result == {"published": True, "text": "This note is about tea. Green tea is mild.", "note": "fine"}
    deleted = mcp(address, "task", "delete", task_id)
    assert deleted.returncode == 0 and f"task {task_id} deleted" in deleted.stdout
    again = mcp(address, "task", "delete", task_id)
    assert again.returncode == 1 and "NOT_FOUND" in again.stderr
    assert json.loads(mcp(address, "--json", "task", "delete", task_id, "--allow-missing").stdout) == {
        "deleted": [],
        "missing": [task_id],
        "refused": [],
    }


def test_the_cli_deletes_every_finished_task_a_status_selects(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "sequence.yaml")).returncode == 0
    made = [
        json.loads(
            mcp(
                address, "--json", "task", "submit", "text-pipeline", "--input", '{"text": "A short text. It is fine."}'
            ).stdout
        )["task"]
        for _ in range(3)
    ]
    for task in made:
        assert mcp(address, "task", "watch", task["task_id"], "--plain").returncode == 0
    others = {
        t["task_id"]
        for t in json.loads(mcp(address, "--json", "task", "list", "--status", "completed").stdout)["tasks"]
    }
    assert {t["task_id"] for t in made} <= others
    wrong = mcp(address, "task", "delete", "--status", "running")
    assert wrong.returncode != 0 and "invalid choice" in wrong.stderr
    both = mcp(address, "task", "delete", made[0]["task_id"], "--status", "completed")
    assert both.returncode != 0 and "give task ids, or --status" in both.stderr
    gone = json.loads(
        mcp(address, "--json", "task", "delete", "--status", "completed", "--workflow", "text-pipeline").stdout
    )
    assert {t["task_id"] for t in made} <= set(gone["deleted"]) and gone["refused"] == []
    left = json.loads(
        mcp(address, "--json", "task", "list", "--status", "completed", "--workflow", "text-pipeline").stdout
    )
    assert left.get("tasks", []) == []


def test_the_cli_puts_lists_and_deletes_rate_limits(server_process):
    address, _ = server_process
    put = mcp(address, "ratelimit", "put", "protocol:summarize", "--limit", "2", "--period", "500ms", "--burst", "1")
    assert put.returncode == 0 and "protocol:summarize" in put.stdout and "2 per 0.500s + burst 1" in put.stdout, put
    listed = json.loads(mcp(address, "--json", "ratelimit", "list").stdout)["rate_limits"]
    assert listed[0]["key"] == "protocol:summarize" and listed[0]["limit"] == 2 and listed[0]["available"] == 3
    bad = mcp(address, "ratelimit", "put", "k", "--limit", "0")
    assert bad.returncode == 1 and "rate_limit.limit" in bad.stderr
    template = mcp(address, "ratelimit", "put", "tenant:*", "--limit", "5", "--period", "1m")
    assert template.returncode == 0, template
    got = mcp(address, "ratelimit", "get", "tenant:acme")
    assert got.returncode == 0 and "tenant:acme" in got.stdout and "(under tenant:*)" in got.stdout, got
    assert "5 available now" in got.stdout and "the next unit" not in got.stdout
    assert (
        json.loads(mcp(address, "--json", "ratelimit", "get", "tenant:acme").stdout)["rate_limits"][0]["template"]
        == "tenant:*"
    )
    assert mcp(address, "ratelimit", "put", "submit:", "--limit", "1", "--period", "1m").returncode == 0
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "sequence.yaml")).returncode == 0
    assert mcp(address, "task", "submit", "text-pipeline", "--input", '{"text": "One."}').returncode == 0
    spent = mcp(address, "ratelimit", "get", "submit:")  # the one submission a minute is taken
    assert re.search(r"0 available now, the next unit in (5\d|60)\.\ds$", spent.stdout.strip()), spent
    assert mcp(address, "ratelimit", "delete", "submit:").returncode == 0
    none = mcp(address, "ratelimit", "get", "user:ann")
    assert none.returncode == 1 and "NOT_FOUND" in none.stderr and "user:ann" in none.stderr
    assert mcp(address, "ratelimit", "delete", "tenant:*").returncode == 0
    assert mcp(address, "ratelimit", "delete", "protocol:summarize").returncode == 0
    assert json.loads(mcp(address, "--json", "ratelimit", "list").stdout)["rate_limits"] == []
    again = mcp(address, "ratelimit", "delete", "protocol:summarize")
    assert again.returncode == 1 and "NOT_FOUND" in again.stderr


def test_the_cli_reruns_a_task_from_a_step_with_an_edited_input(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "sequence.yaml")).returncode == 0
    text = "The launch went well. Customers were delighted. Support had a calm week."
    first = mcp(address, "--json", "task", "submit", "text-pipeline", "--input", json.dumps({"text": text}))
    task_id = json.loads(first.stdout)["task"]["task_id"]
    assert mcp(address, "task", "watch", task_id, "--plain").returncode == 0
    original = json.loads(mcp(address, "--json", "task", "get", task_id).stdout)

    edited = json.dumps({"text": "I am furious, this is broken and awful."})
    again = mcp(address, "task", "rerun", task_id, "--from", "root/feeling", "--input", edited, "--watch", "--plain")
    assert again.returncode == 0, again.stdout + again.stderr
    said = " ".join(again.stdout.split())  # the terminal's width may wrap it anywhere
    assert f"a rerun of {task_id} from root/feeling" in said and "(reused)" in said
    rerun_id = said.split()[1].rstrip(":")
    rerun = json.loads(mcp(address, "--json", "task", "get", rerun_id).stdout)
    assert rerun["rerun_of"] == task_id and rerun["result"] != original["result"]
    steps = {step["path"]: step for step in rerun["steps"]}
    assert steps["root/summary"]["reused"] is True and "reused" not in steps["root/feeling"]
    refused = mcp(address, "task", "rerun", task_id, "--from", "root/nowhere")
    assert refused.returncode == 1 and "from_step_path" in refused.stderr


def test_the_cli_reruns_every_failed_task_a_filter_selects_once(server_process, tmp_path):
    address, _ = server_process
    broken = """
workflow_id: cli-bulk
root:
  id: root
  sequence:
    children:
      - { id: a, step: { protocol: echo, input: "{'t': input.text}" } }
      - { id: b, step: { protocol: echo, input: "{'n': input.count + 1}" } }
"""
    (tmp_path / "v1.yaml").write_text(broken)
    (tmp_path / "v2.yaml").write_text(broken.replace("input.count + 1", "has(input.count) ? input.count + 1 : 0"))
    assert mcp(address, "workflow", "apply", str(tmp_path / "v1.yaml")).returncode == 0
    made = [
        json.loads(
            mcp(
                address, "--json", "task", "submit", "cli-bulk", "--label", "batch=cli", "--input", '{"text": "x"}'
            ).stdout
        )["task"]["task_id"]
        for _ in range(4)
    ]
    for task_id in made:
        assert mcp(address, "task", "watch", task_id, "--plain").returncode == 2  # failed: no input.count
    dry = json.loads(
        mcp(address, "--json", "task", "rerun", "--status", "failed", "--label", "batch=cli", "--dry-run").stdout
    )
    assert sorted(dry["selected"]) == sorted(made)
    assert mcp(address, "workflow", "apply", str(tmp_path / "v2.yaml")).returncode == 0
    select = ("--status", "failed", "--label", "batch=cli", "--version", "2")

    first = mcp(address, "task", "rerun", *select, "--limit", "3")
    second = json.loads(mcp(address, "--json", "task", "rerun", *select).stdout)

    assert first.returncode == 0 and "3 task(s) rerun, 0 rerun already, 0 refused" in first.stdout, first
    assert len(second["rerun"]) == 1 and len(second["already"]) == 3 and second["refused"] == []
    reruns = {pair["task_id"]: pair["rerun_id"] for pair in second["rerun"] + second["already"]}
    assert sorted(reruns) == sorted(made)
    for task_id, rerun_id in reruns.items():
        assert mcp(address, "task", "watch", rerun_id, "--plain").returncode == 0
        rerun = json.loads(mcp(address, "--json", "task", "get", rerun_id).stdout)
        assert rerun["status"] == "TASK_STATUS_COMPLETED" and rerun["rerun_of"] == task_id
        assert rerun["rerun_from_step_path"] == "root/b" and rerun["workflow_version"] == "2"
    nowhere = mcp(address, "task", "rerun", "--status", "failed", "--label", "batch=cli", "--from", "root/z")
    assert nowhere.returncode == 1 and "4 refused" in nowhere.stdout and "STEP_NOT_FOUND" in nowhere.stderr, nowhere
    both = mcp(address, "task", "rerun", made[0], "--status", "failed")
    assert both.returncode != 0 and "give a task id, or --status" in both.stderr
    watching = mcp(address, "task", "rerun", "--status", "failed", "--watch")
    assert watching.returncode != 0 and "no --watch" in watching.stderr


def test_the_cli_cancels_every_unfinished_task_a_filter_selects(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "approval.yaml")).returncode == 0
    draft = json.dumps({"topic": "tea", "points": ["mild"]})
    made = [
        json.loads(
            mcp(address, "--json", "task", "submit", "approval", "--label", "run=away", "--input", draft).stdout
        )["task"]["task_id"]
        for _ in range(4)
    ]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        waiting = json.loads(
            mcp(address, "--json", "task", "list", "--status", "waiting", "--label", "run=away").stdout
        )
        if len(waiting.get("tasks", [])) == 4:
            break
        time.sleep(0.2)
    dry = json.loads(
        mcp(address, "--json", "task", "cancel", "--status", "waiting", "--label", "run=away", "--dry-run").stdout
    )
    assert sorted(dry["selected"]) == sorted(made)

    first = mcp(address, "task", "cancel", "--status", "waiting", "--label", "run=away", "--limit", "1")
    rest = json.loads(
        mcp(
            address, "--json", "task", "cancel", "--status", "waiting", "--status", "pending", "--label", "run=away"
        ).stdout
    )

    assert first.returncode == 0 and "1 task(s) cancelled, 0 had finished, 0 refused" in first.stdout, first
    assert len(rest["cancelled"]) == 3 and rest["finished"] == [] and rest["refused"] == []
    for task_id in made:
        task = json.loads(mcp(address, "--json", "task", "get", task_id).stdout)
        assert task["status"] == "TASK_STATUS_CANCELLED"
        assert "cancelled with mcp task cancel --status" in task["error"]["message"]
    finished = mcp(address, "task", "cancel", "--status", "completed")
    assert finished.returncode != 0 and "invalid choice" in finished.stderr
    both = mcp(address, "task", "cancel", made[0], "--status", "waiting")
    assert both.returncode != 0 and "give a task id, or --status" in both.stderr


def test_an_address_in_use_is_one_clear_line_not_a_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        refused = subprocess.run(
            [sys.executable, "-m", "mcp_server", "--listen", address, "--store", f"sqlite:///{tmp_path}/s.db"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert refused.returncode == 1
    assert f"mcp-server: cannot start: cannot listen on {address}: the address is in use" in refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr


def test_the_cli_upgrades_the_workflows_that_run_an_older_subworkflow(server_process, tmp_path):
    address, _ = server_process

    def apply(text: str) -> None:
        path = tmp_path / "w.yaml"
        path.write_text(text)
        applied = mcp(address, "workflow", "apply", str(path))
        assert applied.returncode == 0, applied.stderr

    apply("workflow_id: cli-part\nroot: {id: p, step: {protocol: echo, input: \"{'v': 1}\"}}\n")
    apply("workflow_id: cli-whole\nroot: {id: w, subworkflow: {workflow_id: cli-part}}\n")
    apply("workflow_id: cli-part\nroot: {id: p, step: {protocol: echo, input: \"{'v': 2}\"}}\n")

    preview = mcp(address, "workflow", "upgrade", "cli-whole", "--dry-run")
    assert preview.returncode == 0 and preview.stdout == "cli-whole v1: would run cli-part v1 -> v2\n", preview
    done = mcp(address, "--json", "workflow", "upgrade", "--runs", "cli-part")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["upgrades"] == [
        {
            "workflow_id": "cli-whole",
            "from_version": 1,
            "to_version": 2,
            "moves": [{"path": "workflow.root", "workflow_id": "cli-part", "from_version": 1, "to_version": 2}],
            "error": None,
        }
    ]
    again = mcp(address, "workflow", "upgrade", "cli-whole")
    assert again.stdout == "every subworkflow runs the latest version already\n"
    ran = mcp(address, "--json", "task", "submit", "cli-whole", "--watch")
    task_id = json.loads(ran.stdout.splitlines()[0])["task_id"]
    assert json.loads(mcp(address, "--json", "task", "get", task_id).stdout)["result"] == {"v": 2}


TEST_DOUBLES = {"fail", "flaky", "silent_supervisor", "stats", "whoami", "nest", "sleep", "chaos", "chaos_stats"}


def test_the_cli_creates_pauses_triggers_backfills_and_deletes_a_schedule(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "sequence.yaml")).returncode == 0
    workflow_id = yaml.safe_load((ROOT / "examples" / "sequence.yaml").read_text())["workflow_id"]
    text = '{"text": "Tea is good. Coffee is fine."}'
    made = mcp(
        address, "schedule", "create", "nightly", "--workflow", workflow_id, "--input", text,
        "--cron", "0 3 * * *", "--tz", "Europe/London", "--overlap", "skip",
    )  # fmt: skip
    assert made.returncode == 0 and "schedule nightly: active" in made.stdout and "next:" in made.stdout, made
    listed = mcp(address, "schedule", "list")
    assert "nightly" in listed.stdout and "0 3 * * * (Europe/London)" in listed.stdout
    paused = mcp(address, "schedule", "pause", "nightly", "--note", "holiday")
    assert paused.returncode == 0 and "paused (holiday)" in paused.stdout
    task_id = mcp(address, "schedule", "trigger", "nightly").stdout.strip()
    assert mcp(address, "task", "watch", task_id, "--plain").returncode == 0
    labels = json.loads(mcp(address, "--json", "task", "get", task_id).stdout)["labels"]
    assert labels["mcp/schedule"] == "nightly"
    backfilled = mcp(
        address, "schedule", "backfill", "nightly", "--start", "2026-01-01T00:00:00Z", "--end", "2026-01-03T12:00:00Z"
    )
    assert backfilled.returncode == 0 and "3 tasks started" in backfilled.stdout, backfilled
    got = json.loads(mcp(address, "--json", "schedule", "get", "nightly").stdout)
    assert got["paused"] and got["info"]["runs"] == "4"
    assert mcp(address, "task", "delete", task_id).returncode == 0  # a run the schedule lists, gone
    assert f"{task_id}  gone (deleted or purged)" in mcp(address, "schedule", "get", "nightly").stdout
    bad = mcp(address, "schedule", "create", "bad", "--workflow", workflow_id, "--cron", "99 * * * *")
    assert bad.returncode == 1 and "schedule.spec.cron[0]" in bad.stderr
    for wrong, why in (('{"a": NaN}', "NaN is not JSON"), ("[1]", "must be a JSON object")):  # as task submit says
        refused = mcp(
            address, "schedule", "create", "odd", "--workflow", workflow_id, "--input", wrong, "--every", "60"
        )
        assert refused.returncode == 1 and why in refused.stderr, refused
    assert mcp(address, "schedule", "delete", "nightly").returncode == 0
    assert mcp(address, "schedule", "get", "nightly").returncode == 1


def test_the_bundled_plugins_are_the_real_protocols_only(server_process):
    address, _ = server_process
    listed = json.loads(mcp(address, "--json", "protocol", "list").stdout)["protocols"]
    names = {p["manifest"]["name"] for p in listed}
    assert {
        "echo",
        "emotion",
        "summarize",
        "entities",
        "reason",
        "draft",
        "critique",
        "revise",
        "rule_route",
        "quality_supervisor",
    } <= names
    assert not names & TEST_DOUBLES


def test_the_cli_prints_whole_numbers_as_integers(server_process, tmp_path):
    address, _ = server_process
    definition = tmp_path / "numbers.yaml"
    definition.write_text(
        "workflow_id: numbers\nroot:\n  id: shape\n  step:\n    protocol: echo\n"
        "    input: \"{'index': 0, 'sentences': 3, 'ratio': 0.5, 'nested': [{'n': 7}]}\"\n"
    )
    assert mcp(address, "workflow", "apply", str(definition)).returncode == 0
    submitted = json.loads(mcp(address, "--json", "task", "submit", "numbers", "--input", "{}").stdout)
    task_id = submitted["task"]["task_id"]
    assert mcp(address, "task", "watch", task_id, "--plain").returncode == 0
    result = json.loads(mcp(address, "--json", "task", "get", task_id).stdout)["result"]
    assert result == {"index": 0, "sentences": 3, "ratio": 0.5, "nested": [{"n": 7}]}
    assert [type(v) for v in (result["index"], result["sentences"], result["nested"][0]["n"], result["ratio"])] == [
        int,
        int,
        int,
        float,
    ]
    human = mcp(address, "task", "get", task_id).stdout
    assert '"index": 0' in human and "0.0" not in human and "3.0" not in human


def read_until(process: subprocess.Popen[str], marker: str, seconds: float = 30) -> str:
    """The first line of the process's output containing `marker`."""
    assert process.stdout is not None
    deadline = time.monotonic() + seconds
    for line in process.stdout:
        if marker in line:
            return line.strip()
        assert time.monotonic() < deadline, f"no {marker!r} in time"
    raise AssertionError(f"the process ended without printing {marker!r}")


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_console_is_served_by_the_server_and_by_mcp_console_apart(server_process, tmp_path):
    address, _ = server_process
    served = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mcp_server",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--store",
            f"sqlite:///{tmp_path}/c.db",
            "--console-listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    apart = subprocess.Popen(
        [sys.executable, "-m", "mcp_server.cli.main", "--server", address, "console", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        inside = read_until(served, "mCP console on").split()[-1]
        outside = read_until(apart, "mCP console on").split()[3]
        status, page = fetch(f"{inside}/tasks")
        assert status == 200 and "<h1>Tasks</h1>" in page
        status, page = fetch(f"{outside}/protocols")
        assert status == 200 and "echo" in page  # the bundled plugins of the server it is a client of
        assert fetch(f"{outside}/tasks/nope")[0] == 404
    finally:
        for process in (served, apart):
            process.send_signal(signal.SIGTERM)
        assert apart.wait(timeout=20) == 0
        assert served.wait(timeout=20) == 0


def test_the_cli_submits_with_labels_and_lists_by_them(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "sequence.yaml")).returncode == 0
    text = json.dumps({"text": "One. Two."})
    made = []
    for order in ("B-7", "B-8"):
        submitted = mcp(
            address, "--json", "task", "submit", "text-pipeline", "--input", text, "--label", f"order={order}"
        )
        assert submitted.returncode == 0, submitted.stderr
        made.append(json.loads(submitted.stdout)["task"])
    assert made[0]["labels"] == {"order": "B-7"}
    found = json.loads(mcp(address, "--json", "task", "list", "--label", "order=B-7").stdout)
    assert [t["task_id"] for t in found["tasks"]] == [made[0]["task_id"]] and found["total_size"] == "1"
    shown = mcp(address, "task", "list", "--label", "order=B-8")
    assert (
        shown.returncode == 0 and made[1]["task_id"][:8] in shown.stdout and made[0]["task_id"][:8] not in shown.stdout
    )
    bad = mcp(address, "task", "list", "--label", "order")
    assert bad.returncode == 2 and "a label is KEY=VALUE" in bad.stderr
    refused = mcp(address, "task", "list", "--label", "a key=v")
    assert refused.returncode == 1 and "labels" in refused.stderr, refused
    for task in made:
        assert mcp(address, "task", "watch", task["task_id"], "--plain").returncode == 0
    gone = mcp(address, "--json", "task", "delete", "--status", "completed", "--label", "order=B-7")
    assert json.loads(gone.stdout)["deleted"] == [made[0]["task_id"]], gone
    left = json.loads(mcp(address, "--json", "task", "list", "--label", "order=B-8").stdout)["tasks"]
    assert [t["task_id"] for t in left] == [made[1]["task_id"]]


def test_the_cli_submits_with_a_queue_timeout(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "sequence.yaml")).returncode == 0
    text = json.dumps({"text": "One. Two."})
    submitted = mcp(address, "--json", "task", "submit", "text-pipeline", "--input", text, "--queue-timeout", "90s")
    assert submitted.returncode == 0, submitted.stderr
    task = json.loads(submitted.stdout)["task"]
    assert "queue_deadline" in task and mcp(address, "task", "watch", task["task_id"], "--plain").returncode == 0
    bad = mcp(address, "task", "submit", "text-pipeline", "--input", text, "--queue-timeout", "30d")
    assert bad.returncode != 0 and "is not a duration" in bad.stderr
    refused = mcp(address, "task", "submit", "text-pipeline", "--input", text, "--queue-timeout=-1s")
    assert refused.returncode == 1 and "queue_timeout" in refused.stderr, refused


def test_the_cli_cancels_a_booking_and_its_clean_up_releases_the_room(server_process):
    address, _ = server_process
    assert mcp(address, "workflow", "apply", str(ROOT / "examples" / "saga.yaml")).returncode == 0
    submitted = mcp(address, "--json", "task", "submit", "booking", "--input", '{"room": "204"}')
    task_id = json.loads(submitted.stdout)["task"]["task_id"]
    deadline = time.monotonic() + 20
    while task_id not in mcp(address, "--json", "task", "list", "--status", "waiting").stdout:
        assert time.monotonic() < deadline, "the booking never waited for its confirmation"
        time.sleep(0.1)
    cancelled = mcp(address, "task", "cancel", task_id, "--reason", "the customer left")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    shown = mcp(address, "task", "get", task_id)
    assert "CANCELLED" in shown.stdout and "(the customer left): cleaned up (done)" in shown.stdout, shown.stdout
    task = json.loads(mcp(address, "--json", "task", "get", task_id).stdout)
    assert task["status"] == "TASK_STATUS_CANCELLED" and task["error"]["message"] == "the customer left"
    steps = {s["path"]: s for s in task["steps"]}
    assert steps["booking/release"]["output"] == {
        "released": "204",
        "why": "CANCELLED",
        "said": "the customer left",
        "at": "booking/book/confirm",
    }
    assert steps["booking/book/confirm"]["status"] == "STEP_STATUS_CANCELLED"
    assert "booking/book/charge" not in steps

    submitted = mcp(address, "--json", "task", "submit", "booking", "--input", '{"room": "305"}')
    other = json.loads(submitted.stdout)["task"]["task_id"]
    published = mcp(address, "event", "publish", "booking.cancelled", "--key", "305")
    assert published.returncode == 0 and f"task {other}: cancelled" in published.stdout, published.stdout
    assert mcp(address, "task", "watch", other, "--plain").returncode == 2  # it ended, not COMPLETED
    task = json.loads(mcp(address, "--json", "task", "get", other).stdout)
    assert task["status"] == "TASK_STATUS_CANCELLED" and task["error"]["message"].startswith("CANCEL_ON: event")
    assert {s["path"]: s for s in task["steps"]}["booking/release"]["output"]["released"] == "305"


def test_the_cli_says_how_to_run_a_failed_clean_up_again_and_that_rerun_runs_only_it(server_process, tmp_path):
    address, _ = server_process
    saga = (ROOT / "examples" / "saga.yaml").read_text().replace("workflow_id: booking", "workflow_id: stay")
    broken = tmp_path / "broken.yaml"  # its release fails: summarize wants a text
    broken.write_text(
        saga.replace('cancel_on:\n  - { event: booking.cancelled, key: "input.room" }\n', "").replace(
            "protocol: echo\n        input: \"{'released'", "protocol: summarize\n        input: \"{'released'"
        )
    )
    assert mcp(address, "workflow", "apply", str(broken)).returncode == 0
    submitted = mcp(address, "--json", "task", "submit", "stay", "--input", '{"room": "12"}')
    task_id = json.loads(submitted.stdout)["task"]["task_id"]
    deadline = time.monotonic() + 20
    while task_id not in mcp(address, "--json", "task", "list", "--status", "waiting").stdout:
        assert time.monotonic() < deadline, "the stay never waited for its confirmation"
        time.sleep(0.1)
    assert mcp(address, "task", "cancel", task_id, "--reason", "no show").returncode == 0
    shown = mcp(address, "task", "get", task_id).stdout
    assert "(no show): cleaned up (failed)" in shown, shown
    hint = f"to run the clean-up again: mcp task rerun {task_id} --from booking/release"
    assert hint in shown, shown

    mended = tmp_path / "mended.yaml"
    mended.write_text(saga.replace('cancel_on:\n  - { event: booking.cancelled, key: "input.room" }\n', ""))
    assert mcp(address, "workflow", "apply", str(mended)).returncode == 0
    rerun = mcp(address, "--json", "task", "rerun", task_id, "--from", "booking/release", "--version", "2")
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(rerun.stdout)["task"]["task_id"]
    assert mcp(address, "task", "watch", again, "--plain").returncode == 2  # it ends CANCELLED, as its original
    task = json.loads(mcp(address, "--json", "task", "get", again).stdout)
    assert task["status"] == "TASK_STATUS_CANCELLED" and task["cancel_request"]["outcome"] == "done"
    steps = {s["path"]: s for s in task["steps"]}
    assert steps["booking/release"]["output"]["released"] == "12" and steps["booking/book/hold"]["reused"]


def test_sigterm_stops_the_server_and_its_plugins_cleanly(server_process):
    _, process = server_process
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
