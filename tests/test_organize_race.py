"""Lists, subtasks and the manual order under concurrent writers (API.md, "Organizing"):
two gunicorn instances on one PostgreSQL, threads writing one user's data through both.

- Manual order. Threads move, create and delete the top-level tasks of one list for 20 s.
  A trigger the test installs in the scratch database (never in the app) logs every row
  the writes insert, update or delete, numbered in the order they ran. Each
  acknowledged request is found in that log by its task id and the version it answered,
  and replayed, in the log's order, on a plain Python list: after every write the list
  must equal the order of the positions the database wrote, and at the end the order a
  client reads. So each move was applied at the moment it ran ("after X" right after X
  as the order was then), concurrent writes never shared a key or lost a move, and the
  order is one total order. Some keys start at 64 characters, so that the race must
  respace its group: the respacing rewrites keys without changing the order, and every
  task it re-keys gets a new version.
- One level of subtasks. Threads try at once to nest A under B and B under A, to add
  subtasks to both and to move tasks between levels and lists: no task's parent ever has a
  parent, every subtask is in its parent's list, and each refusal is a 422.
- Limits. Eight threads create past a limit at once: exactly the free places are
  taken, and every other create is a 409 that names the limit.

`pytest -s` prints what each race did.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import psycopg
import pytest
from sqlalchemy.engine import URL

from tests.support import token_for

MAX_KEY = 64  # API.md: a position is at most 64 characters


class Reply(NamedTuple):
    status: int
    body: Any
    content_type: str
    link: str | None


class Api:
    """One keep-alive connection to one instance, as one user."""

    def __init__(self, port: int, user: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {
            "Authorization": f"Bearer {token_for(user, lifetime=600)}",
            "Content-Type": "application/json",
        }
        self.base = f"/api/{user}"

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        """`path` is below /api/{user}; a path that starts with /api is taken as it is."""
        payload = None if body is None else json.dumps(body)
        target = path if path.startswith("/api/") else self.base + path
        self.connection.request(method, target, body=payload, headers=self.headers)
        response = self.connection.getresponse()
        data = response.read()
        return Reply(
            response.status,
            json.loads(data) if data else None,
            response.getheader("Content-Type", ""),
            response.getheader("Link"),
        )

    def pages(self, path: str) -> list[dict[str, Any]]:
        """Every item of a paged listing, following its `Link: rel="next"`."""
        items: list[dict[str, Any]] = []
        while True:
            reply = self.call("GET", path)
            assert reply.status == 200, reply
            items += reply.body
            if reply.link is None:
                return items
            url = urlsplit(reply.link.split(";", 1)[0].strip("<> "))
            path = f"{url.path}?{url.query}"

    def create(self, path: str, body: dict[str, Any]) -> str:
        reply = self.call("POST", path, body)
        assert reply.status == 201, reply
        return str(reply.body["id"])

    def close(self) -> None:
        self.connection.close()


@contextmanager
def database(url: URL) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url.render_as_string(False), autocommit=True) as conn:
        conn.execute("SET statement_timeout = 0")  # the app's 5 s would stop the seeding
        yield conn


def assert_problem(reply: Reply, status: int) -> dict[str, Any]:
    """An RFC 9457 problem with this status; its body."""
    assert reply.status == status, reply
    assert reply.content_type.startswith("application/problem+json"), reply
    body: dict[str, Any] = reply.body
    assert body["status"] == status and body["detail"], body
    return body


def unavailable(reply: Reply) -> bool:
    """Whether the answer is a 503: a request stuck behind the user's lock past its
    timeout, on a loaded machine. It changed nothing (were that false, the checks that
    follow the races would find a change nobody acknowledged)."""
    if reply.status != 503:
        return False
    assert_problem(reply, 503)
    return True


def run_threads(
    ports: list[int], user: str, count: int, work: Callable[[Api, random.Random, int], None]
) -> None:
    """`count` threads, alternately through each instance, each with its own connection
    and random generator; started together; the first failure is raised here."""
    failures: list[BaseException] = []
    start = threading.Barrier(count)

    def thread(n: int) -> None:
        api, rng = Api(ports[n % len(ports)], user), random.Random(n)
        try:
            start.wait()
            work(api, rng, n)
        except BaseException as error:  # reported by the main thread
            failures.append(error)
            start.abort()
        finally:
            api.close()

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


# --- 1. the manual order ---------------------------------------------------------------------

RACE_SECONDS = 20.0
ORGANIZERS = 8
GROUP = 30
# 64-character keys in one group's order that differ only in their last two digits: no
# key fits between two neighbours, so a move between them must respace the group. Each
# is the ten-digit key of the task before them, 52 fours, and one of these endings.
LONG_SUFFIXES = [f"{n}" for n in range(11, 100) if n % 10]  # no trailing zero: a key's form

# What the test installs: every row written to `tasks` logged with the number of its
# turn (a sequence: the user's writes run one at a time under the user's lock, so turns
# follow commit order) and its transaction.
RACE_LOG = """
CREATE TABLE race_log (
    seq bigserial PRIMARY KEY,
    xact text NOT NULL DEFAULT pg_current_xact_id()::text,
    op text NOT NULL,
    id uuid NOT NULL,
    old_version integer,
    new_version integer,
    old_position text,
    new_position text,
    old_change_position bigint,
    new_change_position bigint
);
CREATE FUNCTION race_logged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO race_log (op, id, new_version, new_position, new_change_position)
        VALUES ('insert', NEW.id, NEW.version, NEW.position, NEW.change_position);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO race_log (op, id, old_version, new_version, old_position, new_position,
                              old_change_position, new_change_position)
        VALUES ('update', NEW.id, OLD.version, NEW.version, OLD.position, NEW.position,
                OLD.change_position, NEW.change_position);
    ELSE
        INSERT INTO race_log (op, id, old_version, old_position, old_change_position)
        VALUES ('delete', OLD.id, OLD.version, OLD.position, OLD.change_position);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER race_logged AFTER INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION race_logged();
"""


class LogRow(NamedTuple):
    seq: int
    xact: str
    op: str
    id: str
    old_version: int | None
    new_version: int | None
    old_position: str | None
    new_position: str | None
    old_change_position: int | None
    new_change_position: int | None


@dataclass(frozen=True)
class Ack:
    """An acknowledged (2xx) write: what it asked for and the version it answered."""

    kind: str  # create, delete, after, before, first, last
    task: str
    version: int  # 0 for a delete
    mark: str | None = None  # the sibling of after/before

    @property
    def key(self) -> tuple[str, int]:
        return self.task, self.version


def replay(ack: Ack, order: list[str]) -> list[str] | None:
    """`order` with the write applied as the contract says; None if it cannot apply."""
    if ack.kind == "create":
        return None if ack.task in order else [*order, ack.task]
    if ack.task not in order:
        return None
    rest = [task for task in order if task != ack.task]
    if ack.kind == "delete":
        return rest
    if ack.kind == "first":
        return [ack.task, *rest]
    if ack.kind == "last":
        return [*rest, ack.task]
    if ack.mark not in rest:
        return None
    at = rest.index(ack.mark) + (1 if ack.kind == "after" else 0)
    return [*rest[:at], ack.task, *rest[at:]]


def in_key_order(positions: dict[str, str]) -> list[str]:
    """The tasks in the order of their keys, which must be distinct and short."""
    keys = list(positions.values())
    assert len(set(keys)) == len(keys), "two siblings share a position"
    assert all(len(key) <= MAX_KEY for key in keys), max(keys, key=len)
    return sorted(positions, key=positions.__getitem__)


@dataclass
class Turn:
    """One write as the log saw it: its rows, and the order before and after it."""

    rows: list[LogRow]
    before: list[str]
    after: list[str]
    key: tuple[str, int]  # the written task and its version (0: deleted)
    noop: bool  # a move to where the task already was
    rekeyed: int  # tasks the write respaced


def read_turns(
    rows: list[LogRow], initial: dict[str, str], tombstones: dict[str, int], counter: int
) -> list[Turn]:
    """The log as writes, each checked on its own: one transaction each, never
    interleaved; one task written (created, deleted, or moved with version + 1, or
    nothing changed), others only respaced (new key and version + 1); change positions
    unique and increasing in the log's order, from past the counter before the race."""
    grouped: list[list[LogRow]] = []
    seen: set[str] = set()
    for row in rows:
        if grouped and grouped[-1][0].xact == row.xact:
            grouped[-1].append(row)
        else:
            assert row.xact not in seen, f"writes interleaved: {row}"
            seen.add(row.xact)
            grouped.append([row])
    positions = dict(initial)
    order = in_key_order(positions)
    turns: list[Turn] = []
    last = counter
    for group in grouped:
        before = order
        for row in group:
            if row.op == "delete":
                del positions[row.id]
            else:
                assert row.new_position is not None
                positions[row.id] = row.new_position
        order = in_key_order(positions)
        noop = False
        if any(row.op == "delete" for row in group):
            # Top-level tasks without subtasks: one tombstone each.
            assert len(group) == 1, group
            main, rest = group[0], []
            key, changed = (main.id, 0), [tombstones[main.id]]
        else:
            main = next((r for r in group if r.op == "insert"), None) or min(
                group, key=lambda r: r.new_change_position or 0
            )
            rest = [row for row in group if row is not main]
            assert main.new_version is not None and main.new_change_position is not None
            key = (main.id, main.new_version)
            if main.op == "insert":
                assert main.new_version == 1, main
            elif main.new_version == main.old_version:
                noop = True
                assert not rest and before == order, group
                assert main.new_position == main.old_position, main
                assert main.new_change_position == main.old_change_position, main
            else:
                assert main.new_version == (main.old_version or 0) + 1, main
                assert before != order, f"a versioned move moved nothing: {main}"
            changed = [main.new_change_position]
        for row in rest:  # respaced
            assert row.op == "update" and row.old_version is not None, row
            assert row.new_version == row.old_version + 1, row
            assert row.new_position != row.old_position, row
            assert row.new_change_position is not None
            changed.append(row.new_change_position)
        if not noop:
            assert len(set(changed)) == len(changed), group
            assert min(changed) > last, f"change positions out of commit order: {group}"
            assert min(changed) == changed[0], group
            last = max(changed)
        turns.append(Turn(group, before, order, key, noop, len(rest)))
    return turns


def place_acks(turns: list[Turn], acks: list[Ack]) -> dict[int, Ack]:
    """Each turn's acknowledged write: one with the turn's task and version whose replay
    on the order before the turn gives the order after it, each used once.

    A move to where the task already is keeps its version, so several writes can
    answer one task and version; which of them is which turn is a matching."""
    turns_by_key: dict[tuple[str, int], list[int]] = defaultdict(list)
    for n, turn in enumerate(turns):
        turns_by_key[turn.key].append(n)
    acks_by_key: dict[tuple[str, int], list[Ack]] = defaultdict(list)
    for ack in acks:
        acks_by_key[ack.key].append(ack)
    for key in turns_by_key.keys() - acks_by_key.keys():
        raise AssertionError(f"a write nobody acknowledged: {turns[turns_by_key[key][0]].rows}")
    placed: dict[int, Ack] = {}
    for key, candidates in acks_by_key.items():
        slots = turns_by_key.get(key, [])
        assert len(slots) == len(candidates), f"{candidates} acknowledged, {len(slots)} in the log"
        placed |= _matched(turns, candidates, slots)
    return placed


def _matched(turns: list[Turn], candidates: list[Ack], slots: list[int]) -> dict[int, Ack]:
    """A perfect matching of `candidates` to the turns `slots` (augmenting paths)."""
    holder: dict[int, int] = {}  # turn -> candidate

    def augment(c: int, seen: set[int]) -> bool:
        for slot in slots:
            turn = turns[slot]
            if slot not in seen and replay(candidates[c], turn.before) == turn.after:
                seen.add(slot)
                if slot not in holder or augment(holder[slot], seen):
                    holder[slot] = c
                    return True
        return False

    for c, ack in enumerate(candidates):
        if not augment(c, set()):
            turn = turns[slots[0]]
            raise AssertionError(
                f"{ack} does not replay as the database applied it:\n"
                f"before {turn.before}\nafter  {turn.after}"
            )
    return {slot: candidates[c] for slot, c in holder.items()}


def organize(
    api: Api,
    rng: random.Random,
    list_id: str,
    alive: list[str],
    lock: threading.Lock,
    move_after: tuple[str, str] | None = None,
) -> tuple[Ack | None, str, int]:
    """One random write to the list's top-level tasks: the ack (None if refused), the
    kind of write and its status. `move_after` (task, sibling): that move instead."""
    with lock:
        ids = list(alive)
    roll = rng.random() if move_after is None else 0.3  # 0.3: a move "after"
    if roll < 0.1 or len(ids) < 20:
        reply = api.call("POST", "/tasks", {"title": f"new {rng.random()}", "list_id": list_id})
        if unavailable(reply):
            return None, "create", 503
        assert reply.status == 201, reply
        task = reply.body
        assert (task["list_id"], task["parent_id"], task["version"]) == (list_id, None, 1), task
        with lock:
            alive.append(task["id"])
        return Ack("create", task["id"], 1), "create", 201
    task_id = rng.choice(ids) if move_after is None else move_after[0]
    if roll < 0.2 and len(ids) > 20:
        reply = api.call("DELETE", f"/tasks/{task_id}")
        if reply.status in (404, 503):
            assert_problem(reply, reply.status)
            return None, "delete", reply.status
        assert reply.status == 204, reply
        with lock:
            if task_id in alive:
                alive.remove(task_id)
        return Ack("delete", task_id, 0), "delete", 204
    mark: str | None = rng.choice([other for other in ids if other != task_id])
    if move_after is not None:
        mark = move_after[1]
    body: dict[str, Any]
    if roll < 0.5:
        kind, body = "after", {"after": mark}
    elif roll < 0.75:
        kind, body = "before", {"before": mark}
    elif roll < 0.87:
        kind, body, mark = "first", {"after": None}, None
    else:
        kind, body, mark = "last", {}, None
    reply = api.call("POST", f"/tasks/{task_id}/move", body)
    if reply.status == 200:
        task = reply.body
        assert (task["id"], task["list_id"], task["parent_id"]) == (task_id, list_id, None)
        assert len(task["position"]) <= MAX_KEY, task
        return Ack(kind, task_id, task["version"], mark), kind, 200
    if reply.status in (404, 503):  # the task was deleted meanwhile, or see `unavailable`
        assert_problem(reply, reply.status)
    else:  # the sibling was deleted meanwhile
        problem = assert_problem(reply, 422)
        assert kind in ("after", "before") and list(problem["errors"]) == [kind], problem
    return None, kind, reply.status


def test_concurrent_moves_creates_and_deletes_keep_one_exact_order(
    two_instances: list[int], instances_database: URL
) -> None:
    user = f"organizer-{uuid.uuid4().hex[:8]}"
    setup = Api(two_instances[0], user)
    list_id = setup.create("/lists", {"title": "race"})
    group = [setup.create("/tasks", {"title": f"t{n}", "list_id": list_id}) for n in range(GROUP)]
    # Bystanders: other siblings' writes and respacing must leave them alone.
    inbox = [setup.create("/tasks", {"title": f"inbox {n}"}) for n in range(3)]
    ordered = f"/tasks?list={list_id}&sort=position&limit=500"
    created = {task["id"]: task["position"] for task in setup.pages(ordered)}
    assert in_key_order(created) == group
    # The second half of the group gets long keys, between the first half's last key
    # and the next integer: the order stays.
    long_key = created[group[GROUP // 2 - 1]] + "4" * 52
    with database(instances_database) as conn:
        for task_id, suffix in zip(group[GROUP // 2 :], LONG_SUFFIXES, strict=False):
            conn.execute(
                "UPDATE tasks SET position = %s WHERE user_id = %s AND id = %s",
                [long_key + suffix, user, task_id],
            )
        conn.execute(RACE_LOG)
        counter = conn.execute(
            "SELECT position FROM sync_positions WHERE user_id = %s", [user]
        ).fetchone()
    assert counter is not None
    initial = {task["id"]: task["position"] for task in setup.pages(ordered)}
    setup.close()
    assert in_key_order(initial) == group
    assert max(map(len, initial.values())) == MAX_KEY

    alive, lock = list(group), threading.Lock()
    acks: list[Ack] = []
    outcomes: Counter[tuple[str, int]] = Counter()
    end = time.monotonic() + RACE_SECONDS

    def organizer(api: Api, rng: random.Random, n: int) -> None:
        mine: Counter[tuple[str, int]] = Counter()
        # The first organizer starts with a move between the first two long keys, which
        # must respace the group unless a write got there first: random writes alone
        # made none in one run of a busy test suite.
        first = (group[0], group[GROUP // 2]) if n == 0 else None
        while time.monotonic() < end:
            ack, kind, status = organize(api, rng, list_id, alive, lock, first)
            first = None
            mine[kind, status] += 1
            if ack is not None:
                acks.append(ack)
        with lock:
            outcomes.update(mine)

    started = time.monotonic()
    run_threads(two_instances, user, ORGANIZERS, organizer)
    elapsed = time.monotonic() - started

    checker = Api(two_instances[1], user)
    final = checker.pages(ordered)
    assert checker.pages(ordered.replace("limit=500", "limit=7")) == final  # paged alike
    inbox_after = {t["id"]: t["version"] for t in checker.pages("/tasks?list=inbox&limit=500")}
    checker.close()
    with database(instances_database) as conn:
        rows = [LogRow(*row) for row in conn.execute("SELECT * FROM race_log ORDER BY seq")]
        rows = [row._replace(id=str(row.id)) for row in rows]
        tombstones = dict(
            conn.execute(
                "SELECT id::text, position FROM task_tombstones WHERE user_id = %s", [user]
            ).fetchall()
        )
    turns = read_turns(rows, initial, tombstones, counter[0])
    placed = place_acks(turns, acks)

    order = list(group)
    for n, turn in enumerate(turns):
        replayed = replay(placed[n], order)
        assert replayed == turn.after, (placed[n], order, turn.after)
        order = replayed
    final_positions = {task["id"]: task["position"] for task in final}
    assert [task["id"] for task in final] == order == in_key_order(final_positions)
    assert all(task["list_id"] == list_id and task["parent_id"] is None for task in final)
    # Every version a task has went through the log: the write's own or its respacing.
    versions = {row.id: row.new_version for row in rows if row.new_version is not None}
    assert {t["id"]: t["version"] for t in final} == {
        t["id"]: versions.get(t["id"], 1) for t in final
    }
    assert inbox_after == dict.fromkeys(inbox, 1)
    respacings = [turn for turn in turns if turn.rekeyed]
    assert respacings, "no respacing happened during the race"

    kinds = Counter(ack.kind for ack in acks)
    refused: Counter[int] = Counter()
    for (_, status), count in outcomes.items():
        refused[status] += count
    print(
        f"\norganize race: {len(acks)} acknowledged writes by {ORGANIZERS} threads through 2 "
        f"instances in {elapsed:.1f} s ({', '.join(f'{k} {kinds[k]}' for k in sorted(kinds))};"
        f" {sum(turn.noop for turn in turns)} moves to where the task was), "
        f"{refused[404]} 404, {refused[422]} 422 and {refused[503]} 503 refusals; "
        f"{len(respacings)} respacings re-keyed {sum(t.rekeyed for t in respacings)} tasks; "
        f"{len(final)} tasks at the end, replayed exactly."
    )


# --- 2. one level of subtasks ----------------------------------------------------------------

NESTERS = 6
NEST_SECONDS = 4.0  # at least; then until it has raced (`raced`), within the deadline
NEST_DEADLINE = 60.0


def nest(
    api: Api,
    rng: random.Random,
    parents: list[str],
    loners: list[str],
    lists: list[str],
    subtasks: list[str],
    lock: threading.Lock,
) -> tuple[str, int]:
    """One random write that could make a second level if the rules slipped: the kind of
    write and its status. Each change goes by PUT or by move, at random."""
    with lock:
        made = list(subtasks)
    parent = rng.choice(parents)
    roll = rng.random()
    body: dict[str, Any]
    if roll < 0.25 or (roll > 0.85 and not made):  # A under B while B goes under A
        child = rng.choice([other for other in parents if other != parent])
        kind, body = "parent under parent", {"parent_id": parent}
    elif roll < 0.35:
        kind, body = "task under parent", {"parent_id": parent}
        child = rng.choice(loners + made[-5:])
    elif roll < 0.45:
        reply = api.call("POST", "/tasks", {"title": "step", "parent_id": parent})
        if unavailable(reply):
            pass
        elif reply.status == 201:
            assert reply.body["parent_id"] == parent, reply
            with lock:
                subtasks.append(reply.body["id"])
        else:
            assert list(assert_problem(reply, 422)["errors"]) == ["parent_id"], reply
        return "create under parent", reply.status
    elif roll < 0.7:  # often a parent, so that parents can be nested again
        kind, body = "to top level", {"parent_id": None}
        child = rng.choice(parents if roll < 0.55 else loners + made)
    elif roll < 0.85:  # a parent's subtasks follow it; a subtask leaves its parent
        kind, body = "to a list", {"list_id": rng.choice(lists)}
        child = rng.choice(parents + loners + made)
    else:
        reply = api.call("DELETE", f"/tasks/{rng.choice(made)}")
        assert unavailable(reply) or reply.status in (204, 404), reply
        return "delete a subtask", reply.status
    if rng.random() < 0.5:
        reply = api.call("PUT", f"/tasks/{child}", body)
    else:
        reply = api.call("POST", f"/tasks/{child}/move", {**body, "after": None})
    if unavailable(reply):
        pass
    elif reply.status == 200:
        task = reply.body
        assert task["parent_id"] == body.get("parent_id", task["parent_id"]), (body, task)
        assert task["list_id"] == body.get("list_id", task["list_id"]), (body, task)
    elif reply.status == 404:
        assert_problem(reply, 404)
        assert child in made, reply  # only subtasks are deleted
    else:  # a parent that is a subtask, or a child that has subtasks
        assert list(assert_problem(reply, 422)["errors"]) == ["parent_id"], (body, reply)
    return kind, reply.status


def test_concurrent_requests_never_make_a_second_level(
    two_instances: list[int], instances_database: URL
) -> None:
    user = f"nester-{uuid.uuid4().hex[:8]}"
    setup = Api(two_instances[0], user)
    lists = [setup.create("/lists", {"title": f"list {n}"}) for n in range(2)]
    parents = [setup.create("/tasks", {"title": t, "list_id": lists[0]}) for t in "ABC"]
    loners = [setup.create("/tasks", {"title": t, "list_id": lists[n]}) for n, t in enumerate("DE")]
    setup.close()
    subtasks: list[str] = []
    lock = threading.Lock()
    outcomes: Counter[tuple[str, int]] = Counter()
    started = time.monotonic()

    def raced() -> bool:
        """Whether nesting a parent has both succeeded and been refused (the first is
        rare: a parent mostly has subtasks), and the rest has happened too."""
        wanted = [("parent under parent", 200), ("parent under parent", 422)]
        wanted += [("create under parent", 201), ("to a list", 200)]
        with lock:
            return all(outcomes[outcome] for outcome in wanted)

    def nester(api: Api, rng: random.Random, n: int) -> None:
        while time.monotonic() - started < NEST_SECONDS or not raced():
            assert time.monotonic() - started < NEST_DEADLINE, f"did not race: {outcomes}"
            outcome = nest(api, rng, parents, loners, lists, subtasks, lock)
            with lock:
                outcomes[outcome] += 1

    run_threads(two_instances, user, NESTERS, nester)
    elapsed = time.monotonic() - started

    with database(instances_database) as conn:
        second_level = conn.execute(
            "SELECT c.id FROM tasks c JOIN tasks p ON p.user_id = c.user_id AND p.id = c.parent_id"
            " WHERE c.user_id = %s AND p.parent_id IS NOT NULL",
            [user],
        ).fetchall()
        elsewhere = conn.execute(
            "SELECT c.id FROM tasks c JOIN tasks p ON p.user_id = c.user_id AND p.id = c.parent_id"
            " WHERE c.user_id = %s AND c.list_id IS DISTINCT FROM p.list_id",
            [user],
        ).fetchall()
        miscounted = conn.execute(
            "SELECT l.id, l.open_tasks, count(t.id) FROM lists l LEFT JOIN tasks t"
            " ON t.user_id = l.user_id AND t.list_id = l.id AND t.status <> 'done'"
            " WHERE l.user_id = %s GROUP BY l.id, l.open_tasks"
            " HAVING l.open_tasks <> count(t.id)",
            [user],
        ).fetchall()
        counted = conn.execute(
            "SELECT tasks, (SELECT count(*) FROM tasks WHERE user_id = %s)"
            " FROM sync_positions WHERE user_id = %s",
            [user, user],
        ).fetchone()
        nested = conn.execute(
            "SELECT count(*) FROM tasks WHERE user_id = %s AND parent_id IS NOT NULL", [user]
        ).fetchone()
    assert second_level == [], "a subtask's parent is a subtask"
    assert elsewhere == [], "a subtask is not in its parent's list"
    assert miscounted == []
    assert counted is not None and counted[0] == counted[1]
    print(
        f"\nnesting race: {outcomes.total()} writes by {NESTERS} threads in {elapsed:.1f} s: "
        + ", ".join(f"{kind} {status}: {n}" for (kind, status), n in sorted(outcomes.items()))
        + f"; {nested[0] if nested else 0} subtasks at the end, none with a subtask"
    )


# --- 3. limits -------------------------------------------------------------------------------

CREATORS = 8
REFUSALS_EACH = 3  # 409s each creator must have seen before it stops

# Seeded straight into the tables, as the writes would have left them (columns:
# migration 0007): rows numbered 1..n, position keys in that order, change positions
# 1..n, and the user's row with the counter past them and the counts.
SEED_TASKS = """
INSERT INTO tasks (id, user_id, title, description, completed, status, priority, due_date,
                   tags, tag_keys, list_id, parent_id, position, completed_at, created_at,
                   updated_at, version, change_position)
SELECT gen_random_uuid(), %(user)s, 'seeded ' || i, NULL, false, 'todo', 'medium', NULL,
       '{}', '{}', NULL, %(parent)s::uuid, lpad(i::text, 10, '0'), NULL, now(), now(), 1,
       %(first)s + i
FROM generate_series(1, %(n)s) AS i
"""
SEED_LISTS = """
INSERT INTO lists (id, user_id, title, position, open_tasks, created_at, updated_at, version,
                   change_position)
SELECT gen_random_uuid(), %(user)s, 'seeded ' || i, lpad(i::text, 10, '0'), 0, now(), now(),
       1, i
FROM generate_series(1, %(n)s) AS i
"""
SEED_COUNTER = (
    "INSERT INTO sync_positions (user_id, position, tasks, lists) VALUES (%s, %s, %s, %s)"
)
LIMITS = {
    # what: (seeded, free places, the limit as the 409's detail names it)
    "tasks": (99_990, 10, "100,000 tasks"),
    "lists": (995, 5, "1,000 lists"),
    "subtasks": (195, 5, "200 subtasks"),
}


def seed(conn: psycopg.Connection[Any], user: str, what: str, n: int) -> dict[str, Any]:
    """`n` tasks, lists or subtasks of one parent for `user`; the body of one more."""
    if what == "lists":
        conn.execute(SEED_LISTS, {"user": user, "n": n})
        conn.execute(SEED_COUNTER, [user, n, 0, n])
        return {"title": "one more"}
    if what == "tasks":
        conn.execute(SEED_TASKS, {"user": user, "n": n, "parent": None, "first": 0})
        conn.execute(SEED_COUNTER, [user, n, n, 0])
        return {"title": "one more"}
    parent = uuid.uuid4()
    conn.execute(
        SEED_TASKS.replace("gen_random_uuid()", "%(id)s"),
        {"user": user, "n": 1, "parent": None, "first": 0, "id": parent},
    )
    conn.execute(SEED_TASKS, {"user": user, "n": n, "parent": parent, "first": 1})
    conn.execute(SEED_COUNTER, [user, n + 1, n + 1, 0])
    return {"title": "one more", "parent_id": str(parent)}


@pytest.mark.parametrize("what", list(LIMITS))
def test_concurrent_creates_never_pass_a_limit(
    two_instances: list[int], instances_database: URL, what: str
) -> None:
    seeded, free, named = LIMITS[what]
    user = f"limited-{uuid.uuid4().hex[:8]}"
    with database(instances_database) as conn:
        body = seed(conn, user, what, seeded)
        # As autovacuum would after a bulk load. Without statistics the planner takes the
        # user's rows for one, and the step that would respace them runs its scan once
        # per row: 0.3 s a create at 1,000 lists, and the queue behind the lock times out.
        conn.execute("ANALYZE tasks, lists")
    path = "/lists" if what == "lists" else "/tasks"
    created: list[str] = []
    refusals: list[Reply] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 60

    def creator(api: Api, rng: random.Random, n: int) -> None:
        refused = 0
        while refused < REFUSALS_EACH:
            assert time.monotonic() < deadline, "the limit was never reached"
            reply = api.call("POST", path, body)
            with lock:
                if reply.status == 201:
                    created.append(reply.body["id"])
                elif not unavailable(reply):
                    refusals.append(reply)
                    refused += 1

    run_threads(two_instances, user, CREATORS, creator)

    for reply in refusals:
        problem = assert_problem(reply, 409)
        assert named in problem["detail"], problem
    with database(instances_database) as conn:
        if what == "lists":
            stored = conn.execute("SELECT count(*) FROM lists WHERE user_id = %s", [user])
            counter = conn.execute("SELECT lists FROM sync_positions WHERE user_id = %s", [user])
        elif what == "tasks":
            stored = conn.execute("SELECT count(*) FROM tasks WHERE user_id = %s", [user])
            counter = conn.execute("SELECT tasks FROM sync_positions WHERE user_id = %s", [user])
        else:
            stored = conn.execute(
                "SELECT count(*) FROM tasks WHERE user_id = %s AND parent_id = %s",
                [user, body["parent_id"]],
            )
            counter = conn.execute(
                "SELECT tasks - 1 FROM sync_positions WHERE user_id = %s", [user]
            )
        counts = (stored.fetchone(), counter.fetchone())
    assert len(created) == free, f"{len(created)} created, {free} places were free"
    assert counts == ((seeded + free,), (seeded + free,))
    print(
        f"\nlimit race ({what}): {CREATORS} threads, {len(created)} created past {seeded}, "
        f"{len(refusals)} 409s naming {named!r}"
    )
