"""The request id each task's rerun gets in a bulk pass (`Client.rerun_tasks`): the same task and
request give the same id, anything else another."""

from __future__ import annotations

from mcp_sdk.bulk import bulk_request_id
from mcp_sdk.task_methods import UNSET


def test_a_bulk_request_id_names_the_task_and_the_request():
    task_id = "t" * 64
    same = bulk_request_id(task_id, "root/s2", {"a": [1, 2]}, 3)
    assert same == bulk_request_id(task_id, "root/s2", {"a": [1, 2]}, 3) and len(same) <= 128
    others = {
        bulk_request_id(task_id, "root/s3", {"a": [1, 2]}, 3),
        bulk_request_id(task_id, "root/s2", {"a": [2, 1]}, 3),
        bulk_request_id(task_id, "root/s2", {"a": [1, 2]}, 0),
        bulk_request_id(task_id, "root/s2", UNSET, 3),
        bulk_request_id(task_id, "root/s2", None, 3),  # JSON null is an input, unlike none given
        bulk_request_id("u" * 64, "root/s2", {"a": [1, 2]}, 3),
    }
    assert same not in others and len(others) == 6
