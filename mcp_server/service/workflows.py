"""WorkflowService's domain: compile, store, read and delete workflow versions."""

from __future__ import annotations

import asyncio
import functools
import logging

from google.protobuf.message import DecodeError

from mcp_sdk.proto import workflow_pb2
from mcp_server.engine.compiler import compile_workflow
from mcp_server.engine.plan import Plan
from mcp_server.engine.ports import WorkflowStore
from mcp_server.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from mcp_server.protocols.capacity import Resources, never_fits
from mcp_server.protocols.registry import ProtocolDirectory
from mcp_server.service.access import fitting, page_size, require
from mcp_server.service.subworkflows import pin_subworkflows
from mcp_server.settings import Settings
from mcp_server.state.common import encode_token
from mcp_server.task_views import RESPONSE_MARGIN_BYTES

log = logging.getLogger(__name__)
PURGED_AT_ONCE = 100  # deleted workflows purged per store call


class Workflows:
    """Workflow versions, each compiled against the registered protocols before it is stored."""

    def __init__(self, settings: Settings, store: WorkflowStore, directory: ProtocolDirectory) -> None:
        self.settings = settings
        self.store = store
        self.directory = directory

    async def validate_workflow(self, workflow: workflow_pb2.Workflow) -> Plan:
        """Pin its subworkflows (in place) and compile `workflow` against the registered
        protocols; raise InvalidArgument if bad."""
        await pin_subworkflows(workflow, self.store, self.settings.limits)
        room = self.settings.limits.max_message_bytes - RESPONSE_MARGIN_BYTES
        if (size := workflow.ByteSize()) > room:  # GetWorkflow could not send it back
            raise InvalidArgument(
                f"the workflow is {size} bytes; at most {room} are allowed (MCP_LIMIT_MAX_MESSAGE_BYTES, less"
                f" {RESPONSE_MARGIN_BYTES} for the response that carries it)",
                violations=[FieldViolation("workflow", f"{size} bytes exceeds the limit of {room}")],
                reason="WORKFLOW_TOO_LARGE",
            )
        _check_nesting(workflow)
        await self.directory.refresh(force=True)
        plan = await asyncio.to_thread(  # off the event loop: a large workflow (or schema) takes a while
            functools.partial(
                compile_workflow,
                workflow,
                self.settings.limits,
                known_protocols=self.directory.known_names(),
                default_step_timeout=self.settings.default_step_timeout,
                default_task_timeout=self.settings.default_task_timeout,
            )
        )
        self._check_capacity(plan)
        return plan

    def _check_capacity(self, plan: Plan) -> None:
        """Refuse a workflow with a step no registered instance could ever run: it needs more of
        a resource than any instance of its protocol offers."""
        problems = []
        for path, name in plan.protocol_uses:
            instances = self.directory.instances(name)
            sized = [
                (i, Resources.needs_of(i.manifest.resources), Resources.of_capacity(i.capacity)) for i in instances
            ]
            if sized and all(never_fits(capacity, needs) for _, needs, capacity in sized):
                offers = "; ".join(f"{i.address} offers {capacity.describe()}" for i, _, capacity in sized)
                problems.append(
                    FieldViolation(
                        path,
                        f"protocol {name} needs {sized[0][1].describe()} per call, more than any "
                        f"registered instance offers ({offers})",
                    )
                )
        if problems:
            raise FailedPrecondition(
                f"workflow {plan.workflow_id!r} can never run: {problems[0].field}: {problems[0].description}",
                violations=problems,
                reason="INSUFFICIENT_CAPACITY",
            )

    async def create_workflow(self, workflow: workflow_pb2.Workflow) -> workflow_pb2.Workflow:
        await self.validate_workflow(workflow)
        await self._check_subscribers(workflow)
        return await self.store.create_workflow(workflow)

    async def _check_subscribers(self, workflow: workflow_pb2.Workflow) -> None:
        """Refuse a trigger on an event name that already starts the most workflows one may."""
        most = self.settings.limits.max_workflows_per_event
        for i, trigger in enumerate(workflow.triggers):
            others = [w for w, _ in await self.store.subscribers(trigger.event) if w != workflow.workflow_id]
            if len(others) >= most:
                problem = (
                    f"{len(others)} workflows already start on event {trigger.event!r}, the most one event may"
                    " start (MCP_LIMIT_MAX_WORKFLOWS_PER_EVENT)"
                )
                raise FailedPrecondition(
                    problem,
                    violations=[FieldViolation(f"workflow.triggers[{i}].event", problem)],
                    reason="EVENT_SUBSCRIBERS_FULL",
                )

    async def get_workflow(self, workflow_id: str, version: int) -> workflow_pb2.Workflow:
        require("workflow_id", workflow_id)
        if version < 0:
            raise InvalidArgument(
                "version must not be negative",
                violations=[FieldViolation("version", "must be 0 (latest) or a version number")],
            )
        # a version asked for by number is answered deleted too: what the tasks that ran it ran
        workflow = await self.store.get_workflow(workflow_id, version, deleted_too=bool(version))
        if workflow is None:
            which = f"version {version}" if version else "any version"
            raise NotFound(
                f"workflow {workflow_id!r} ({which}) not found",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_id": workflow_id},
            )
        return workflow

    async def list_workflows(self, size: int, page_token: str) -> tuple[list[workflow_pb2.Workflow], str]:
        """The latest version of each workflow, by workflow_id (fewer than asked when they are large)."""
        workflows, token = await self.store.list_workflows(page_size(size, self.settings.limits), page_token)
        shown = fitting(workflows, self.settings.limits)
        return shown, encode_token(shown[-1].workflow_id) if len(shown) < len(workflows) else token

    async def delete_workflow(self, workflow_id: str) -> int:
        require("workflow_id", workflow_id)
        deleted = await self.store.delete_workflow(workflow_id)
        if not deleted:
            raise NotFound(
                f"workflow {workflow_id!r} not found",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"workflow_id": workflow_id},
            )
        return deleted

    async def purge_deleted_forever(self, every: float) -> None:
        """Every `every` seconds, remove for good the deleted versions of workflows deleted longer
        ago than the retention of which no task remains (run as a background task; any replica)."""
        while True:
            await asyncio.sleep(every)
            try:
                while purged := await self.store.purge_deleted(PURGED_AT_ONCE):
                    log.info("purged the deleted versions of %d workflows: %s", len(purged), ", ".join(purged))
                    if len(purged) < PURGED_AT_ONCE:
                        break
            except Unavailable:
                pass  # the store is away: the next round purges them
            except Exception:  # a bug must not stop the purge for good
                log.exception("purging deleted workflows failed unexpectedly; trying again")


def _check_nesting(workflow: workflow_pb2.Workflow) -> None:
    """Refuse a workflow nested too deep for protobuf to read back (it stops at 100 levels of
    messages, in every language): each level of nodes is two, a pinned subworkflow three."""
    try:
        workflow_pb2.GetWorkflowResponse.FromString(
            workflow_pb2.GetWorkflowResponse(workflow=workflow).SerializeToString()
        )
    except DecodeError:
        raise InvalidArgument(
            "the workflow, its subworkflows included, nests messages too deep for protobuf to read back"
            " (at most 100 levels)",
            violations=[FieldViolation("workflow.root", "nested too deep to be read back; nest fewer nodes")],
            reason="WORKFLOW_TOO_DEEP",
        ) from None
