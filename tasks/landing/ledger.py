"""Ledger: every file that lands, identified by its content (sha256), processed exactly once.

The ledger is a folder or an `s3://bucket/prefix` on the store (tasks/common/store.py), beside
the outputs, so that checks and training runs on different machines share it with nothing
else. Every object in it is written once, by a conditional create (If-None-Match: of several
writers exactly one wins), and never changed:

    files/<sha256[:16]>_<name>       the checked bytes of an accepted file (content-addressed)
    entries/<sha256>.json            the verdict on a content: accepted or failed, under the
                                     name it first landed as, with its row counts or reason
    duplicates/<sha256>/<name>.json  the same content landed again under another name
    claims/<sha256>/<n>.json         a check at work on a content (see claim_check)
    trained/<sha256>.json            the training run that first used an accepted file

Statuses: `accepted` (checked, waiting for or used by training), `failed` (rejected, with the
reason), `duplicate` (same content as a file already recorded: not trained again). A content
has one verdict, so a file is accepted (and trained) at most once, whichever check wins.

The dataset is the base file plus, for each name, its latest accepted version: a file landed
again under the same name with new content replaces the earlier version, whose entry and
stored copy stay for audit; a rejected re-send leaves the earlier version in. Versions of a
name are ordered by `recorded_at`, the time a check took the version up. How files get here:
tasks/landing/check.py.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.states import State

from schemas.params import DATASET, DATASET_BASE
from tasks.common import store
from tasks.common.paths import Root, confine, resolve_inputs
from tasks.landing.announce import sha256_of  # noqa: F401 (read from here too)

FILES, ENTRIES, DUPLICATES, CLAIMS, TRAINED = "files", "entries", "duplicates", "claims", "trained"
_CHUNK = 8 << 20


@dataclass(frozen=True)
class LandedFile:
    """A complete file at the landing location, not yet in the ledger; `etag` as listed, so
    that later checks know this object without reading it again."""

    location: str
    sha256: str
    size_bytes: int
    etag: str = ""

    @property
    def name(self) -> str:
        return store.name_of(self.location)


@dataclass(frozen=True)
class Claim:
    """A check's hold on a content: the object it created and when."""

    location: str
    claimed_at: str


def stamp(moment: datetime | None = None) -> str:
    """A ledger time: UTC ISO 8601 with microseconds (sorts as text)."""
    return (moment or datetime.now(UTC)).isoformat(timespec="microseconds")


def _entry(ledger: store.Location, sha256: str) -> str:
    return store.join(ledger, ENTRIES, f"{sha256}.json")


def _duplicate(ledger: store.Location, sha256: str, name: str) -> str:
    return store.join(ledger, DUPLICATES, sha256, f"{name}.json")


def _read_json(location: str) -> dict | None:
    try:
        return json.loads(store.read(location))
    except FileNotFoundError:
        return None


def _create_json(location: str, record: dict) -> bool:
    return store.create(location, json.dumps(record, indent=1).encode())


def _record(landed: LandedFile, status: str, recorded_at: str, **fields: Any) -> dict:
    """One (name, content) as the ledger keeps it."""
    keys = ("reason", "rows", "accepted", "quarantined", "stored")
    return {
        "name": landed.name,
        "sha256": landed.sha256,
        "size_bytes": landed.size_bytes,
        "etag": landed.etag,
        "status": status,
        **{key: fields.get(key) for key in keys},
        "recorded_at": recorded_at,
    }


def claim_check(
    ledger: store.Location,
    landed: LandedFile,
    token: str,
    expire_seconds: float,
    now: datetime | None = None,
) -> tuple[str, str | Claim | None]:
    """Decide what this check does with `landed` -> (outcome, detail): `recorded` (its name
    and content are in the ledger already), `duplicate` (an earlier file had this content:
    recorded here; detail the reason), `in_progress` (another check claimed this content less
    than `expire_seconds` ago) or `claimed` (detail the Claim: check the file, then
    record_verdict, or release_claim if it records nothing). Claims are numbered objects made
    by create, so of two checks only one takes a content, or takes over an expired claim."""
    now = now or datetime.now(UTC)
    verdict = _read_json(_entry(ledger, landed.sha256))
    if verdict is not None:
        if verdict["name"] == landed.name or store.exists(
            _duplicate(ledger, landed.sha256, landed.name)
        ):
            return "recorded", None
        reason = f"same content as {verdict['name']}"
        record = _record(landed, "duplicate", stamp(now), reason=reason)
        if _create_json(_duplicate(ledger, landed.sha256, landed.name), record):
            return "duplicate", reason
        return "recorded", None
    held = store.list_files(store.join(ledger, CLAIMS, landed.sha256))
    number = 0
    if held:
        latest = max(held, key=lambda entry: int(store.name_of(entry.location).split(".")[0]))
        number = int(store.name_of(latest.location).split(".")[0]) + 1
        claimed = _read_json(latest.location)
        if claimed and claimed["claimed_at"] > stamp(now - timedelta(seconds=expire_seconds)):
            return "in_progress", None
    claim = Claim(store.join(ledger, CLAIMS, landed.sha256, f"{number}.json"), stamp(now))
    mine = {"sha256": landed.sha256, "name": landed.name, "token": token}
    if not _create_json(claim.location, {**mine, "claimed_at": claim.claimed_at}):
        return "in_progress", None
    return "claimed", claim


def record_verdict(
    ledger: store.Location, landed: LandedFile, claim: Claim, status: str, **fields: Any
) -> bool:
    """Record the outcome of a claimed check (accepted or failed; see _record), dated by the
    claim; False, recording nothing, when another check recorded this content first (one
    that took over this check's expired claim)."""
    return _create_json(
        _entry(ledger, landed.sha256), _record(landed, status, claim.claimed_at, **fields)
    )


def release_claim(claim: Claim) -> None:
    """Take back this check's own claim when it records nothing (the file changed, the check
    broke), so that the next check need not wait for it to expire."""
    store.delete(claim.location)


def store_file(ledger: store.Location, landed: LandedFile, checked: Path) -> str:
    """Put the checked local copy of an accepted file into the content-addressed store;
    returns where, relative to the ledger. Its key names its bytes, so a second writer
    would write the same bytes: a plain streamed upload is safe and keeps memory bounded."""
    relative = f"{FILES}/{landed.sha256[:16]}_{landed.name}"
    target = store.join(ledger, relative)
    if not store.exists(target):
        with checked.open("rb") as source, store.open_output(target) as sink:
            while chunk := source.read(_CHUNK):
                sink.write(chunk)
    return relative


@dataclass(frozen=True)
class Ledger:
    """What the ledger holds at one moment: every (name, content) recorded, and which
    training run used which content."""

    records: list[dict]
    trained: dict[str, dict]

    def is_recorded(self, name: str, sha256: str) -> bool:
        return any(r["name"] == name and r["sha256"] == sha256 for r in self.records)

    def seen(self, name: str, size_bytes: int, etag: str = "") -> bool:
        """Whether an object of this name and size (and ETag, if given) was recorded."""
        return any(
            r["name"] == name and r["size_bytes"] == size_bytes and (not etag or r["etag"] == etag)
            for r in self.records
        )

    def dataset(self) -> list[dict]:
        """For each name its latest accepted version, oldest first."""
        latest: dict[str, dict] = {}
        for record in sorted(self.records, key=lambda r: (r["recorded_at"], r["sha256"])):
            if record["status"] == "accepted":
                latest[record["name"]] = record
        return sorted(latest.values(), key=lambda r: r["recorded_at"])

    def current_version(self, name: str) -> str | None:
        """sha256 of the version of `name` in the dataset, if any."""
        return next((r["sha256"] for r in self.dataset() if r["name"] == name), None)


def read_ledger(ledger: store.Location) -> Ledger:
    """The ledger as it is now (empty while there is none: nothing is created)."""
    found = [
        entry.location
        for folder in (ENTRIES, DUPLICATES, TRAINED)
        for entry in store.list_files(store.join(ledger, folder))
        if entry.location.endswith(".json")
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:  # one GET each: in parallel on a bucket
        read = [r for r in pool.map(_read_json, found) if r is not None]
    trained = {r["sha256"]: r for r in read if "run_id" in r}
    # Stored copies are kept relative to the ledger, which may be reached by another path.
    records = [
        {**r, "stored_path": r["stored"] and store.join(ledger, r["stored"])}
        for r in read
        if "status" in r
    ]
    return Ledger(records, trained)


def current_version(ledger: store.Location, name: str) -> str | None:
    """sha256 of the version of `name` in the dataset, if any."""
    return read_ledger(ledger).current_version(name)


def untrained_files(ledger: store.Location) -> list[str]:
    """Stored copies of the dataset's landed files that no training run has used yet (a
    version replaced before any run read it is never used)."""
    now = read_ledger(ledger)
    return [r["stored_path"] for r in now.dataset() if r["sha256"] not in now.trained]


def landed_files(ledger: store.Location) -> list[str]:
    """The dataset's landed files (stored copies: the latest accepted version of each name),
    oldest first; none while there is no ledger."""
    return [r["stored_path"] for r in read_ledger(ledger).dataset()]


def training_inputs(data: str | list[str], ledger: str, roots: list[Root]) -> list[Path | str]:
    """The files a training run reads: for `data="dataset"`, the dataset (DATASET_BASE plus
    the latest accepted version of each file landed in `ledger`, oldest first); otherwise
    the files `data` names (see resolve_inputs). Every location confined to `roots`."""
    if data != DATASET:
        return resolve_inputs(data, roots)
    where = confine(ledger, roots, "ledger")
    landed = [confine(stored, roots, "ledger") for stored in landed_files(where)]
    return resolve_inputs([DATASET_BASE], roots) + landed


def mark_trained(ledger: store.Location, stored: list[str], run_id: str, status: str) -> None:
    """Record which training run used these stored files and how it ended (the first run
    to use a file is the one recorded)."""
    # By the stored copy's name (it holds the content's hash), however the ledger was reached.
    by_name = {r["stored"]: r["sha256"] for r in read_ledger(ledger).records if r["stored"]}
    for location in stored:
        sha256 = by_name.get(f"{FILES}/{store.name_of(location)}")
        if sha256 is None:  # not a file of this ledger
            continue
        record = {"sha256": sha256, "run_id": run_id}
        _create_json(
            store.join(ledger, TRAINED, f"{sha256}.json"),
            {**record, "run_status": status, "recorded_at": stamp()},
        )


def ledger_rows(ledger: store.Location) -> list[dict]:
    """Every (name, content) recorded, as a dict, oldest first, with the training run that
    used it (`run_id`, `run_status`) and `in_dataset`: whether training reads it."""
    now = read_ledger(ledger)
    in_dataset = {(r["name"], r["sha256"]) for r in now.dataset()}
    rows = []
    for record in sorted(now.records, key=lambda r: (r["recorded_at"], r["sha256"])):
        used = now.trained.get(record["sha256"]) if record["status"] == "accepted" else None
        rows.append(
            {
                **record,
                "run_id": used and used["run_id"],
                "run_status": used and used["run_status"],
                "in_dataset": (record["name"], record["sha256"]) in in_dataset,
            }
        )
    return rows


@task(cache_policy=NONE, task_run_name="untrained-files")
def files_to_train(ledger: str) -> list[str]:
    """Accepted files that no training run has used yet."""
    return untrained_files(ledger)


@task(cache_policy=NONE, task_run_name="record-training")
def record_training(ledger: str, used: list[str], state: State) -> dict[str, Any]:
    """Mark the files a training run used; fail if the training run failed. Pass the training
    flow run's final state wrapped in `quote()`, so that Prefect hands it over as it is."""
    if state.is_completed():
        manifest = state.result()
        run_id, status = manifest["run_id"], "completed"
    else:
        run_id, status = f"flow-run:{state.state_details.flow_run_id}", "failed"
    mark_trained(ledger, used, run_id, status)
    return state.result()
