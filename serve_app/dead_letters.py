"""``sightwire dead-letters list|requeue``: the jobs that used up their attempts (docs/engine.md).

Self-contained (one ``add_commands`` call wires it into the CLI): an operator lists the dead
letters of a queue, newest first, and requeues one, some, or all of them once the cause is fixed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable

from core.store import Store
from core.store.fair_queue import DeadLetter
from core.store.jobs import QueueName

Runner = Callable[[Callable[[Store], Awaitable[str]]], str]


def _line(queue: QueueName, letter: DeadLetter) -> str:
    return json.dumps({"queue": queue.value, "entry": letter.entry, "job": letter.job_id, "org": letter.org,
                       "attempts": letter.attempts, "reason": letter.reason, "payload": letter.payload})


def _queues(args: argparse.Namespace) -> list[QueueName]:
    return [QueueName(args.queue)] if args.queue else list(QueueName)


async def list_letters(store: Store, queues: list[QueueName], count: int) -> str:
    """One JSON object per dead letter, newest first per queue, then the totals."""
    lines = [_line(queue, letter) for queue in queues for letter in await store.jobs.dead[queue].list(count)]
    totals = {queue.value: await store.jobs.dead[queue].count() for queue in queues}
    return "\n".join([*lines, f"dead letters: {json.dumps(totals)}"])


async def requeue_letters(store: Store, queues: list[QueueName], entries: list[str], every: bool) -> str:
    done: list[str] = []
    for queue in queues:
        wanted = [letter.entry for letter in await store.jobs.dead[queue].list(10_000)] if every else entries
        for entry in wanted:
            job_id = await store.jobs.requeue_dead(queue, entry)
            if job_id is not None:
                done.append(f"requeued {queue.value} {entry} (job {job_id})")
    return "\n".join(done) or "nothing requeued (no such entry)"


def _command(with_store: Runner, action: Callable[[argparse.Namespace], Callable[[Store], Awaitable[str]]]
             ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(with_store(action(args)))
        return 0

    return run


def add_commands(commands: argparse._SubParsersAction, with_store: Runner) -> None:
    """The ``dead-letters`` command group; ``with_store`` runs an action against the store."""
    group = commands.add_parser("dead-letters", help="jobs that used up their attempts").add_subparsers(
        dest="action", required=True
    )
    listing = group.add_parser("list", help="print dead letters (JSON lines, newest first) and their count")
    listing.add_argument("--queue", choices=[q.value for q in QueueName], help="default: every queue")
    listing.add_argument("--count", type=int, default=50, help="at most this many per queue")
    listing.set_defaults(func=_command(with_store, lambda args: lambda store: list_letters(
        store, _queues(args), args.count)))

    requeue = group.add_parser("requeue", help="queue dead letters again, with fresh attempts")
    requeue.add_argument("entries", nargs="*", help="entry ids from `list`")
    requeue.add_argument("--all", action="store_true", dest="every", help="every dead letter")
    requeue.add_argument("--queue", choices=[q.value for q in QueueName], help="default: every queue")
    requeue.set_defaults(func=_command(with_store, lambda args: lambda store: requeue_letters(
        store, _queues(args), args.entries, args.every)))
