"""``codergen`` and ``shell``: the handlers of Attractor's pipelines (``--dialect attractor``).

``codergen`` is Attractor's LLM task (a ``box`` node): it sends the node's ``prompt``
(``$goal`` already expanded at load; the ``label`` when there is no prompt) to the
configured model, asking for the node's ``llm_model`` (set on the node or by the
graph's ``model_stylesheet``).  ``shell`` runs a node's ``tool_command`` with
``/bin/sh``; it is off unless the registry was built with ``allow_shell=True``
(``--allow-shell`` or ``TURNGRAPH_ALLOW_SHELL=1`` on the command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, Process

from engine.errors import ShellDisabled
from engine.events import current_emitter
from engine.graph import Node
from engine.messages import Usage
from engine.outcome import Outcome, Status
from handlers._common import attr_str
from handlers.adapters.llm import LLM, ChatRequest
from handlers.llm import add_usage

__all__ = ["DEFAULT_SHELL_TIMEOUT", "MAX_OUTPUT", "Codergen", "Shell", "reported"]

DEFAULT_SHELL_TIMEOUT = 300.0
"""Seconds a ``tool_command`` may run when its node sets no ``timeout``."""
MAX_OUTPUT = 1024 * 1024
"""Bytes of stdout and of stderr kept from one command (the rest is read and dropped)."""
_DRAIN_GRACE = 1.0  # seconds a finished command's pipes are still read
_SHORT = 200  # the spec's ``last_response`` is the reply cut to this many characters


class Codergen:
    """An LLM task: the node's ``prompt`` (else its ``label``) as one user message.

    ``llm_model`` reaches adapters that take a whole request (``respond``); others
    answer with their own model.  Sets ``last_stage`` and ``last_response`` (the
    reply's first 200 characters, as the spec does), ``llm.text``, ``llm.model``,
    ``llm.usage``, ``llm.calls`` and ``reply`` (so the last task's answer is a turn's
    reply).  Adapter errors propagate (transient ones are retried).

    **Status.** The spec lets a stage report its outcome in a ``status.json`` (its
    appendix C); here the reply carries it: when the reply ends with a JSON object
    holding ``outcome`` or ``preferred_label`` (bare or in a fenced block), its
    ``outcome`` (``success``, ``fail``, ``retry``, ``partial_success``),
    ``preferred_label``, first ``suggested_next_ids`` entry, ``context_updates`` and
    ``notes`` (the reason of a failure) make the node's outcome, and ``preferred_label``
    is also set in the context.
    """

    __slots__ = ("_respond", "llm")

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self._respond = getattr(llm, "respond", None)

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        prompt = attr_str(node, "prompt", "") or node.label
        model = attr_str(node, "llm_model", "") or None
        messages = [{"role": "user", "content": prompt}]
        emitter = current_emitter()
        if self._respond is not None:
            request = ChatRequest(messages, model=model)
            response = await self._respond(request, emitter.text if emitter else None)
        else:
            response = await self.llm.complete(messages)
        text = response.text
        updates = {
            "last_stage": node.id,
            "last_response": text[:_SHORT],
            "llm.text": text,
            "llm.model": response.model,
            "llm.usage": add_usage(context, response),
            "llm.calls": int(context.get("llm.calls") or 0) + 1,
            "reply": text,
        }
        u = response.usage
        usage = Usage(u.input_tokens, u.output_tokens, response.model or u.model)
        return reported(text, updates, usage)


_STATUSES: Mapping[str, Status] = {
    "success": "success",
    "fail": "fail",
    "retry": "retry",
    "partial_success": "partial",
    "partial": "partial",
}
_STATUS_TAIL = 4096  # a status is short: only the reply's end is searched
_TRAILING_JSON = re.compile(r"(\{.*\})\s*(?:```)?\s*\Z", re.DOTALL)


def reported(text: str, updates: dict[str, Any], usage: Usage | None = None) -> Outcome:
    """The outcome a reply reports in a trailing JSON status (see :class:`Codergen`);
    plain success when it reports none."""
    status = _status_object(text)
    if status is None:
        return Outcome("success", updates, usage=usage)
    label = status.get("preferred_label")
    label = str(label) if label else None
    extra = status.get("context_updates")
    if isinstance(extra, dict):
        updates.update({str(k): v for k, v in extra.items()})
    if label:
        updates["preferred_label"] = label
    nxt = status.get("suggested_next_ids")
    notes = status.get("notes")
    return Outcome(
        _STATUSES.get(str(status.get("outcome", "success")).lower(), "success"),
        updates,
        preferred_label=label,
        suggested_next=str(nxt[0]) if isinstance(nxt, list) and nxt else None,
        reason=str(notes) if notes else None,
        usage=usage,
    )


def _status_object(text: str) -> dict[str, Any] | None:
    """The JSON object ending ``text`` if it reads as a status, else None."""
    match = _TRAILING_JSON.search(text[-_STATUS_TAIL:])
    if match is None:
        return None
    found = match.group(1)
    # The object may start at any "{" before the end: try from the outermost.
    for start in (i for i, ch in enumerate(found) if ch == "{"):
        try:
            value = json.loads(found[start:])
        except (ValueError, RecursionError):  # a reply nesting past the recursion limit
            continue
        if isinstance(value, dict) and ("outcome" in value or "preferred_label" in value):
            return value
        return None
    return None


class Shell:
    """Runs ``tool_command`` with ``/bin/sh -c`` (Attractor's tool handler).

    Refused with :class:`~engine.errors.ShellDisabled` unless ``allowed``.  The
    command runs in ``cwd`` (default: the process's), its stdin empty, in its own
    process group, which is killed when the node's ``timeout`` (else ``timeout``
    seconds) passes and when the command ends (a background process does not outlive
    its node; one that leaves the group with ``setsid`` escapes this, and its output
    is no longer read).  Its environment is the process's without the ``TURNGRAPH_*``
    variables (the API token, the store's URL and secret).  Sets ``tool.output``
    (stdout, as the spec names it), ``tool.last_line`` (its last non-blank line, which
    many public pipelines route on), ``tool.stderr`` and ``tool.exit_code``; a nonzero
    exit or a timeout fails the node with the end of stderr as the reason.
    """

    __slots__ = ("allowed", "cwd", "timeout")

    def __init__(
        self,
        *,
        allowed: bool = False,
        timeout: float = DEFAULT_SHELL_TIMEOUT,
        cwd: str | None = None,
    ) -> None:
        self.allowed = allowed
        self.timeout = timeout
        self.cwd = cwd

    async def __call__(self, node: Node, context: Mapping[str, Any]) -> Outcome:
        command = attr_str(node, "tool_command", "")
        if not command.strip():
            return Outcome("fail", reason=f"node {node.id!r} has no tool_command")
        if not self.allowed:
            raise ShellDisabled(node.id)
        limit = node.timeout or self.timeout
        out, err = bytearray(), bytearray()
        process = await anyio.open_process(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            env=_child_env(),
            start_new_session=True,  # its own group: a timeout kills its children too
        )
        try:
            with anyio.move_on_after(limit) as scope:
                await _communicate(process, out, err)
        finally:
            if process.returncode is None:  # else _communicate killed what it left
                _kill_group(process)
            with anyio.CancelScope(shield=True):
                await process.aclose()
        stdout = _text(out)
        lines = stdout.strip().splitlines()
        updates = {
            "tool.output": stdout,
            "tool.last_line": lines[-1].strip() if lines else "",
            "tool.stderr": _text(err),
            "tool.exit_code": process.returncode,
        }
        if scope.cancelled_caught:
            return Outcome("fail", updates, reason=f"tool_command timed out after {limit:g}s")
        if process.returncode != 0:
            tail = _text(err).strip()[-_SHORT:]
            reason = f"tool_command exited with status {process.returncode}: {tail}"
            return Outcome("fail", updates, reason=reason.rstrip(": "))
        return Outcome("success", updates)


async def _communicate(process: Process, out: bytearray, err: bytearray) -> None:
    async with anyio.create_task_group() as tg:
        if process.stdout is not None:
            tg.start_soon(_drain, process.stdout, out)
        if process.stderr is not None:
            tg.start_soon(_drain, process.stderr, err)
        await process.wait()
        # The command has ended: its group goes, and what it wrote is read for a
        # moment more; a background process that escaped the group (setsid) and holds
        # the pipes open would otherwise keep the node waiting until its timeout.
        _kill_group(process)
        tg.cancel_scope.deadline = anyio.current_time() + _DRAIN_GRACE


async def _drain(stream: ByteReceiveStream, into: bytearray) -> None:
    async for chunk in stream:
        into += chunk[: max(0, MAX_OUTPUT - len(into))]


def _kill_group(process: Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended on its own meanwhile
        os.killpg(process.pid, signal.SIGKILL)


def _child_env() -> dict[str, str]:
    """The process's environment without turngraph's own settings (the API token, the
    store's URL and secret): a command has no business with them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TURNGRAPH_")}


def _text(data: bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")
