"""How a document is built and written: checked by its fields' own rules, stored in bulk.

Every builder returns the document as MongoDB stores it (`stored_form`): what
`Document(...).validate()` then `.to_mongo()` gives, without a Document object
per row, which cost the import several times its database time (see
`stored_form`). Single documents are saved through MongoEngine (`save_new`).

Raw pymongo (`_get_collection()`) is used only on hot paths, each with its
reason: the bulk writes of the intake and import (MongoEngine writes one
document per call, and its `insert` is ordered and hides which documents were
duplicates), and the listings' page read (SessionQuerySet.newest_first).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from bson import ObjectId
from mongoengine import (
    BooleanField,
    DateTimeField,
    Document,
    IntField,
    ListField,
    ObjectIdField,
    StringField,
    ValidationError,
)
from pymongo import UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError

DUPLICATE_KEY = 11000

# Reads of many documents by `$in` go in slices of this many values. SecantusDB
# checks each document an `$in` fetched against the whole list again, so one
# read of n matching values costs n * n comparisons: 3,000 stored message keys
# took 7 CPU-seconds of the database in one read, 0.4 s in slices of 100. On
# mongod a slice is one more round trip.
IN_SLICE = 100

T = TypeVar("T")


def in_slices(values: Iterable[T]) -> Iterator[list[T]]:
    """The values, without repeats, in lists of at most IN_SLICE (none for no values)."""
    unique = list(dict.fromkeys(values))
    for start in range(0, len(unique), IN_SLICE):
        yield unique[start : start + IN_SLICE]


def duplicates_only(exc: BulkWriteError) -> set[int]:
    """The indexes of the documents an unordered insert_many skipped as already stored.

    Re-raises when anything else failed: only a duplicate key is expected. A
    write concern error alone fails too: the documents are on the primary but
    not on a majority, and an election may roll them back, so whoever would
    acknowledge them (the intake, to JetStream) must not.
    """
    if exc.details.get("writeConcernErrors"):
        raise exc
    errors = exc.details["writeErrors"]
    if any(error["code"] != DUPLICATE_KEY for error in errors):
        raise exc
    return {error["index"] for error in errors}


Stored = dict[str, Any]


class IdempotencyKeyReused(ValueError):
    """A client's Idempotency-Key came back with another request than the one it first stored."""


class Contended(RuntimeError):
    """Other writers kept changing what this write depends on; the same request a moment later will likely pass."""


def stored_form(document: type[Document], **values: Any) -> Stored:
    """`document` with these field values as MongoDB stores it, checked by its fields' own rules.

    The rules are MongoEngine's: each field's default, `required`, and its
    `_validate` (type, `choices`, bounds); a breach raises the ValidationError
    `Document.validate()` would, naming every field at fault. Building a
    Document per row, validating it and calling `to_mongo()` did the same at
    several times the cost (0.5 ms against 0.1 ms a document on a busy
    machine), which the intake's and import's batches cannot afford.
    """
    unknown = values.keys() - document._fields.keys()
    if unknown:
        raise ValidationError(f"{document.__name__} has no field {', '.join(sorted(unknown))}")
    stored: Stored = {}
    errors: dict[str, ValidationError] = {}
    for name, db_field, field, converts in _plan(document):
        value = values.get(name)
        if value is None and field.default is not None:
            value = field.default() if callable(field.default) else field.default
        if value is None:
            if field.required:
                errors[name] = ValidationError("Field is required", field_name=name)
            continue
        if type(value) is ObjectId and isinstance(field, ObjectIdField):
            # What ObjectIdField's rule and conversion come to, without parsing its text again.
            stored[db_field] = value
            continue
        try:
            field._validate(value)
        except ValidationError as error:
            errors[name] = error
            continue
        stored[db_field] = field.to_mongo(value) if converts else value
    if errors:
        raise ValidationError(f"ValidationError ({document.__name__}:{values.get('id')})", errors=errors)
    return stored


# Fields whose Python value is what pymongo stores: their to_mongo() is a copy at most.
_PLAIN = (StringField, IntField, BooleanField, DateTimeField)


_Plan = tuple[tuple[str, str, Any, bool], ...]
_plans: dict[str, _Plan] = {}


def _plan(document: type[Document]) -> _Plan:
    """Each field of `document`, in order: name, stored name, field, and whether its value needs to_mongo()."""
    plan = _plans.get(document.__name__)
    if plan is None:

        def converts(field: Any) -> bool:
            if isinstance(field, ListField):
                return not isinstance(field.field, _PLAIN)
            return not isinstance(field, _PLAIN)

        fields = [(name, document._fields[name]) for name in document._fields_ordered]
        plan = _plans[document.__name__] = tuple((name, f.db_field, f, converts(f)) for name, f in fields)
    return plan


def save_new(document: type[Document], stored: Stored) -> None:
    """Insert one built document through MongoEngine (NotUniqueError when its unique key is taken)."""
    document._from_son(stored, created=True).save(force_insert=True)


def insert_unordered(document: type[Document], built: Sequence[Stored]) -> set[int]:
    """Insert built documents in one round trip; the indexes skipped as duplicates.

    Raw insert_many (unordered): one round trip per batch, every document tried,
    and the duplicates told apart, where MongoEngine's `insert` stops at the
    first duplicate and does not say which.
    """
    if not built:
        return set()
    try:
        document._get_collection().insert_many(built, ordered=False)
    except BulkWriteError as exc:
        return duplicates_only(exc)
    return set()


def update_each(document: type[Document], updates: Sequence[tuple[dict[str, Any] | ObjectId, dict[str, Any]]]) -> int:
    """Apply one update per document (an id, or a filter holding one) in one round trip; how many matched.

    Raw bulk_write: a batch's sessions are updated in one round trip, where
    MongoEngine sends one update per document.
    """
    if not updates:
        return 0
    result = document._get_collection().bulk_write(
        [UpdateOne(which if isinstance(which, dict) else {"_id": which}, update) for which, update in updates],
        ordered=False,
    )
    return result.matched_count


def update_many_each(document: type[Document], updates: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    """Apply one update to every document each filter matches, in one round trip; how many were modified."""
    if not updates:
        return 0
    result = document._get_collection().bulk_write(
        [UpdateMany(which, update) for which, update in updates], ordered=False
    )
    return result.modified_count
